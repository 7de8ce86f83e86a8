"""Task types as declared in ``config/datasets.yaml``: columns, keys, version order.

The file is read once at start-up (through ``stager.config.load_config``) and
validated here; nothing else parses it. A dataset's name is its task type, its
DuckDB table and its staging sub-folder.
"""

import re
from dataclasses import dataclass, field

import pyarrow as pa
import yaml

from .exceptions import ConfigError

# DuckDB type name -> Arrow type of the staged column.
TYPES = {
    "VARCHAR": pa.string(),
    "DOUBLE": pa.float64(),
    "DATE": pa.date32(),
    "BIGINT": pa.int64(),
    "INTEGER": pa.int32(),
    "BOOLEAN": pa.bool_(),
    "TIMESTAMP": pa.timestamp("us"),
}

# Columns the stager adds to every staged row (lineage and version order).
TASK_ID = "_task_id"
FETCHED_AT = "_fetched_at"
ANCHOR_DATE = "_anchor_date"

NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")
COLUMN_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    nullable: bool = True
    pattern: str = None

    @property
    def arrow_type(self):
        return TYPES[self.type]


@dataclass(frozen=True)
class Dataset:
    name: str
    primary_key: tuple
    version_order: tuple
    columns: tuple  # declared columns, in file order
    anchor_param: str = None
    anchor_column: str = None
    source: str = ""
    processor: str = None  # "module:function" (stager.processors), or None
    transform: object = field(default=None, compare=False, repr=False)  # the imported function

    @property
    def system_columns(self):
        cols = [Column(TASK_ID, "VARCHAR", False), Column(FETCHED_AT, "TIMESTAMP", False)]
        if self.anchor_param:
            cols.append(Column(ANCHOR_DATE, "DATE", True))
        return tuple(cols)

    @property
    def all_columns(self):
        """Declared columns followed by the stager's own: the staged file schema."""
        return self.columns + self.system_columns

    @property
    def column_names(self):
        return [c.name for c in self.all_columns]

    @property
    def value_columns(self):
        """Every staged column that is not part of the primary key."""
        return [c.name for c in self.all_columns if c.name not in self.primary_key]

    @property
    def arrow_schema(self):
        return pa.schema(
            [pa.field(c.name, c.arrow_type, nullable=c.nullable) for c in self.all_columns]
        )

    def column(self, name):
        for c in self.all_columns:
            if c.name == name:
                return c
        raise KeyError(name)

    def order_by_newest(self, quote=lambda n: '"%s"' % n):
        """SQL ORDER BY items that put the newest version of a key first."""
        return ", ".join(f"{quote(c)} DESC NULLS LAST" for c in self.version_order)


class Datasets:
    """All task types of one datasets file, by name."""

    def __init__(self, datasets, schema_version, source):
        self._by_name = {d.name: d for d in datasets}
        self.schema_version = schema_version
        self.source = source

    def __getitem__(self, name):
        return self._by_name[name]

    def __contains__(self, name):
        return name in self._by_name

    def __iter__(self):
        return iter(self._by_name.values())

    @property
    def names(self):
        return list(self._by_name)


def load_datasets(path):
    """Read and validate a datasets file; raise ConfigError naming the key."""
    try:
        with open(path, encoding="utf-8") as f:
            raw = yaml.safe_load(f)
    except FileNotFoundError:
        raise ConfigError(path, "datasets", "an existing datasets file", has_got=False) from None
    except yaml.YAMLError as exc:
        raise ConfigError(path, "(file)", "valid YAML", str(exc).replace("\n", " ")) from None
    return parse_datasets(raw, path)


def parse_datasets(raw, source="<datasets>"):
    def fail(key, expected, got):
        raise ConfigError(source, key, expected, got)

    if not isinstance(raw, dict):
        fail("(file)", "a mapping with schema_version and datasets", raw)
    unknown = set(raw) - {"schema_version", "datasets"}
    if unknown:
        fail(sorted(unknown)[0], "one of schema_version, datasets (unknown key)", raw[sorted(unknown)[0]])
    version = raw.get("schema_version", 1)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        fail("schema_version", "a positive integer", version)
    entries = raw.get("datasets")
    if not isinstance(entries, dict) or not entries:
        fail("datasets", "a mapping of task type -> dataset", entries)
    return Datasets([_parse_one(name, body, fail, source) for name, body in entries.items()], version, str(source))


_DATASET_KEYS = {"source", "primary_key", "version_order", "anchor", "columns", "processor"}
_COLUMN_KEYS = {"name", "type", "nullable", "pattern", "note", "api_default"}


def _parse_one(name, body, fail, origin="<datasets>"):
    where = f"datasets.{name}"
    if not isinstance(name, str) or not NAME_RE.match(name):
        fail(where, "a task type name of lower-case letters, digits and _", name)
    if not isinstance(body, dict):
        fail(where, "a mapping with primary_key, version_order, columns", body)
    for key in body:
        if key not in _DATASET_KEYS:
            fail(f"{where}.{key}", "one of " + ", ".join(sorted(_DATASET_KEYS)) + " (unknown key)", body[key])

    raw_columns = body.get("columns")
    if not isinstance(raw_columns, list) or not raw_columns:
        fail(f"{where}.columns", "a non-empty list of columns", raw_columns)
    columns, seen = [], set()
    for i, col in enumerate(raw_columns):
        at = f"{where}.columns[{i}]"
        if not isinstance(col, dict):
            fail(at, "a mapping with name and type", col)
        for key in col:
            if key not in _COLUMN_KEYS:
                fail(f"{at}.{key}", "one of " + ", ".join(sorted(_COLUMN_KEYS)) + " (unknown key)", col[key])
        cname = col.get("name")
        if not isinstance(cname, str) or not COLUMN_RE.match(cname):
            fail(f"{at}.name", "a column name of letters, digits and _ not starting with _", cname)
        if cname in seen:
            fail(f"{at}.name", "a name not used by another column", cname)
        seen.add(cname)
        ctype = col.get("type")
        if not isinstance(ctype, str) or ctype.upper() not in TYPES:
            fail(f"{at}.type", "one of " + ", ".join(TYPES), ctype)
        nullable = col.get("nullable", True)
        if not isinstance(nullable, bool):
            fail(f"{at}.nullable", "true or false", nullable)
        pattern = col.get("pattern")
        if pattern is not None:
            if ctype.upper() != "VARCHAR" or not isinstance(pattern, str):
                fail(f"{at}.pattern", "a regular expression, on a VARCHAR column", pattern)
            try:
                re.compile(pattern)
            except re.error as exc:
                fail(f"{at}.pattern", f"a valid regular expression ({exc})", pattern)
        columns.append(Column(cname, ctype.upper(), nullable, pattern))

    pk = body.get("primary_key")
    if not isinstance(pk, list) or not pk or not all(isinstance(c, str) for c in pk):
        fail(f"{where}.primary_key", "a non-empty list of column names", pk)
    by_name = {c.name: c for c in columns}
    for c in pk:
        if c not in by_name:
            fail(f"{where}.primary_key", f"declared columns only ({c} is not one)", pk)
        if by_name[c].nullable:
            fail(f"{where}.primary_key", f"columns declared nullable: false ({c} is nullable)", pk)

    anchor = body.get("anchor")
    anchor_param = anchor_column = None
    if anchor is not None:
        if not isinstance(anchor, dict) or set(anchor) != {"param", "column"}:
            fail(f"{where}.anchor", "{param: <request parameter>, column: <DATE column>}", anchor)
        anchor_param, anchor_column = anchor["param"], anchor["column"]
        if anchor_column not in by_name or by_name[anchor_column].type != "DATE":
            fail(f"{where}.anchor.column", "a declared DATE column", anchor_column)
        if not isinstance(anchor_param, str) or not anchor_param:
            fail(f"{where}.anchor.param", "a request parameter name", anchor_param)

    version_order = body.get("version_order", [FETCHED_AT])
    allowed = set(by_name) | {FETCHED_AT} | ({ANCHOR_DATE} if anchor_param else set())
    if not isinstance(version_order, list) or not version_order:
        fail(f"{where}.version_order", "a non-empty list of column names", version_order)
    for c in version_order:
        if c not in allowed:
            fail(f"{where}.version_order", f"declared columns or {FETCHED_AT}"
                 + (f", {ANCHOR_DATE}" if anchor_param else "") + f" ({c} is not one)", version_order)

    processor = body.get("processor")
    transform = None
    if processor is not None:
        # Imported now, so a typo is refused at start-up rather than at the first task.
        from .processors import load_callable

        transform = load_callable(processor, origin, f"{where}.processor")

    source = body.get("source", "")
    return Dataset(name, tuple(pk), tuple(version_order), tuple(columns),
                   anchor_param, anchor_column, str(source), processor, transform)
