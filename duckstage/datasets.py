"""Task types as declared in ``config/datasets.yaml``: columns, keys, version order.

The file is read once at start-up (through ``duckstage.config.load_config``) and
validated here; nothing else parses it. A dataset's name is its task type, its
DuckDB table and its staging sub-folder.
"""

import re
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import yaml

from .exceptions import ConfigError, ConfigProblem

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
HISTORY_SUFFIX = "_history"  # <table>_history holds every version of a dataset with history
COLUMN_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")

# Column names kept from data, in one list for both processes; DuckDB's names
# ignore case, so they are compared in lower case.
#
# The loader's MERGE names its own columns with LOADER_PREFIX, and reads files
# with read_parquet(file_row_number = true), which refuses a file that has a
# column of that name: the loader quarantines files with either. The other
# names (DuckDB's row id of every table, read_parquet's file name and index)
# a data column would shadow silently; the loader names none of them, so it
# takes such a file, but the stager stages none of RESERVED_COLUMNS (nor any
# name starting with _), so nothing it seals is a column a query mistakes.
LOADER_PREFIX = "__duckstage_"
LOADER_RESERVED = frozenset({"file_row_number"})
RESERVED_COLUMNS = LOADER_RESERVED | {"rowid", "filename", "file_index"}


def reserved_by_loader(name):
    """True if the loader cannot merge a column called ``name``: it would clash with the MERGE's own."""
    name = name.lower()
    return name.startswith(LOADER_PREFIX) or name in LOADER_RESERVED


def undeclared_name_problem(name, dataset, undeclared=()):
    """Why a column ``dataset`` does not declare cannot be staged under ``name``, or None.

    Staged, it becomes a warehouse column of that name (loader.new_columns:
    add) and may be declared later, so it must be a name ``datasets.yaml``
    accepts, not a reserved one, and not one that DuckDB would take for
    another column of the same file (its names ignore case). ``undeclared``
    are the other undeclared columns that came with it.
    """
    if name.startswith("_"):
        return "names starting with _ are duckstage's own, like " + ", ".join(c.name for c in dataset.system_columns)
    if not COLUMN_RE.match(name):
        return "a column name is letters, digits and _, starting with a letter"
    if name.lower() in RESERVED_COLUMNS:
        return f"{name.lower()} is reserved: " + ", ".join(sorted(RESERVED_COLUMNS)) + " are DuckDB's"
    for other in [c.name for c in dataset.all_columns] + [c for c in undeclared if c != name]:
        if other.lower() == name.lower():
            return f"DuckDB would take it for the column {other}: column names ignore case"
    return None


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
class History:
    """How a dataset keeps its versions: ``<table>_history``, each version dated by ``_valid_from``.

    ``valid_from`` names the columns that say when a version became public,
    tried in order; the first that is not NULL gives the date (a TIMESTAMP's
    date, UTC for _fetched_at). When all are NULL the fetch date stands in:
    the version was public at the latest when it was fetched, so a NULL never
    hides a version nor dates it before it was known. The stager and the
    loader apply this one rule, in Arrow and in SQL, through the two methods.
    """

    valid_from: tuple

    @property
    def _dates(self):
        return self.valid_from + (() if self.valid_from[-1] == FETCHED_AT else (FETCHED_AT,))

    def valid_from_sql(self, quote):
        """SQL for ``_valid_from`` over the row's columns (``quote(name)`` writes a column reference)."""
        return "coalesce(" + ", ".join(f"CAST({quote(c)} AS DATE)" for c in self._dates) + ")"

    def valid_from_arrow(self, table):
        """``_valid_from`` of each row of a staged Arrow table (a date32 array)."""
        return pc.coalesce(*[pc.cast(table.column(c), pa.date32()) for c in self._dates])


@dataclass(frozen=True)
class Dataset:
    name: str
    primary_key: tuple
    version_order: tuple
    columns: tuple  # declared columns, in file order
    anchor_param: str = None
    anchor_column: str = None
    source: str = ""
    processor: str = None  # "module:function", imported by the stager alone (stager.processors)
    history: History = None  # None: only the newest version of each key is kept

    @property
    def history_table(self):
        """The table of every version of a key (``history`` set), beside the current table."""
        return f"{self.name}{HISTORY_SUFFIX}"

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
    def arrow_schema(self):
        return pa.schema(
            [pa.field(c.name, c.arrow_type, nullable=c.nullable) for c in self.all_columns]
        )



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
    """Read and validate a datasets file; raise ConfigError naming every wrong key."""
    try:
        with open(path, encoding="utf-8") as f:
            raw = yaml.safe_load(f)
    except FileNotFoundError:
        raise ConfigError(path, "(file)", "an existing datasets file", has_got=False) from None
    except OSError as exc:
        raise ConfigError(path, "(file)", f"a readable datasets file ({exc.strerror or exc})", has_got=False) \
            from None
    except yaml.YAMLError as exc:
        raise ConfigError(path, "(file)", "valid YAML", str(exc).replace("\n", " ")) from None
    return parse_datasets(raw, path)


class _Refusal(Exception):
    """Ends the check of one part of the file; its problem is already recorded."""


def parse_datasets(raw, source="<datasets>"):
    """Validate a parsed datasets file. Every wrong key is reported at once, not only the first:
    a person fixing the file should not have to restart once per mistake."""
    problems = []

    def fail(key, expected, got):
        problems.append(ConfigProblem(source, key, expected, got))
        raise _Refusal

    def check(part, *args):
        try:
            return part(*args)
        except _Refusal:
            return None

    if not isinstance(raw, dict):
        check(fail, "(file)", "a mapping with schema_version and datasets", raw)
        raise ConfigError(problems=problems)
    for key in raw:
        if key not in ("schema_version", "datasets"):
            check(fail, key, "one of schema_version, datasets (unknown key)", raw[key])
    version = raw.get("schema_version", 1)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        check(fail, "schema_version", "a positive integer", version)
    entries = raw.get("datasets")
    datasets = []
    if not isinstance(entries, dict) or not entries:
        check(fail, "datasets", "a mapping of task type -> dataset", entries)
    else:
        datasets = [check(_parse_one, name, body, fail, check) for name, body in entries.items()]
        for d in datasets:
            if d is not None and d.history is not None and d.history_table in entries:
                check(fail, f"datasets.{d.history_table}", f"another name: datasets.{d.name}.history keeps"
                      f" its versions in the table {d.history_table}", d.history_table)
    if problems:
        raise ConfigError(problems=problems)
    return Datasets(datasets, version, str(source))


_DATASET_KEYS = {"source", "primary_key", "version_order", "anchor", "columns", "processor", "history"}
_COLUMN_KEYS = {"name", "type", "nullable", "pattern", "note", "api_default"}
# module:function, the function possibly a dotted attribute; imported by the stager alone.
PROCESSOR_RE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


def _parse_one(name, body, fail, check):
    where = f"datasets.{name}"
    if not isinstance(name, str) or not NAME_RE.match(name):
        fail(where, "a task type name of lower-case letters, digits and _", name)
    if not isinstance(body, dict):
        fail(where, "a mapping with primary_key, version_order, columns", body)
    for key in body:
        if key not in _DATASET_KEYS:
            check(fail, f"{where}.{key}", "one of " + ", ".join(sorted(_DATASET_KEYS)) + " (unknown key)", body[key])

    raw_columns = body.get("columns")
    if not isinstance(raw_columns, list) or not raw_columns:
        fail(f"{where}.columns", "a non-empty list of columns", raw_columns)
    seen = set()
    columns = [check(_parse_column, f"{where}.columns[{i}]", col, seen, fail) for i, col in enumerate(raw_columns)]
    if None in columns:
        raise _Refusal  # the keys below name columns: checking them against a broken list misleads
    columns = tuple(columns)
    by_name = {c.name: c for c in columns}

    pk = check(_primary_key, where, body.get("primary_key"), by_name, fail)
    anchor = body.get("anchor")
    anchor_param, anchor_column = check(_anchor, where, anchor, by_name, fail) or (None, None)

    version_order = body.get("version_order", [FETCHED_AT])
    allowed = set(by_name) | {FETCHED_AT} | ({ANCHOR_DATE} if anchor is not None else set())
    if not isinstance(version_order, list) or not version_order:
        check(fail, f"{where}.version_order", "a non-empty list of column names", version_order)
    else:
        for c in version_order:
            if c not in allowed:
                check(fail, f"{where}.version_order", f"declared columns or {FETCHED_AT}"
                      + (f", {ANCHOR_DATE}" if anchor is not None else "") + f" ({c} is not one)", version_order)
                break

    processor = body.get("processor")
    if processor is not None and not (isinstance(processor, str) and PROCESSOR_RE.match(processor)):
        # Only the form is checked here: the loader reads this file too, and must not
        # need the user's package. The stager imports the function at start.
        check(fail, f"{where}.processor", "module:function, e.g. mypackage.rules:check_daily", processor)
    history = check(_history, where, body.get("history"), by_name, fail)
    if pk is None:
        raise _Refusal

    source = body.get("source", "")
    return Dataset(name, tuple(pk), tuple(version_order), columns,
                   anchor_param, anchor_column, str(source), processor, history)


def _parse_column(at, col, seen, fail):
    if not isinstance(col, dict):
        fail(at, "a mapping with name and type", col)
    for key in col:
        if key not in _COLUMN_KEYS:
            fail(f"{at}.{key}", "one of " + ", ".join(sorted(_COLUMN_KEYS)) + " (unknown key)", col[key])
    cname = col.get("name")
    if not isinstance(cname, str) or not COLUMN_RE.match(cname):
        fail(f"{at}.name", "a column name of letters, digits and _ not starting with _", cname)
    if cname.lower() in seen:
        fail(f"{at}.name", "a name not used by another column (DuckDB's names ignore case)", cname)
    if cname.lower() in RESERVED_COLUMNS:
        fail(f"{at}.name", "a name other than " + ", ".join(sorted(RESERVED_COLUMNS)) + " (DuckDB's)", cname)
    seen.add(cname.lower())
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
    return Column(cname, ctype.upper(), nullable, pattern)


def _primary_key(where, pk, by_name, fail):
    if not isinstance(pk, list) or not pk or not all(isinstance(c, str) for c in pk):
        fail(f"{where}.primary_key", "a non-empty list of column names", pk)
    for c in pk:
        if c not in by_name:
            fail(f"{where}.primary_key", f"declared columns only ({c} is not one)", pk)
        if by_name[c].nullable:
            fail(f"{where}.primary_key", f"columns declared nullable: false ({c} is nullable)", pk)
    return pk


def _anchor(where, anchor, by_name, fail):
    if anchor is None:
        return None, None
    if not isinstance(anchor, dict) or set(anchor) != {"param", "column"}:
        fail(f"{where}.anchor", "{param: <request parameter>, column: <DATE column>}", anchor)
    anchor_param, anchor_column = anchor["param"], anchor["column"]
    if anchor_column not in by_name or by_name[anchor_column].type != "DATE":
        fail(f"{where}.anchor.column", "a declared DATE column", anchor_column)
    if not isinstance(anchor_param, str) or not anchor_param:
        fail(f"{where}.anchor.param", "a request parameter name", anchor_param)
    return anchor_param, anchor_column


def _history(where, history, by_name, fail):
    if history is None:
        return None
    if not isinstance(history, dict) or set(history) != {"valid_from"}:
        fail(f"{where}.history", "{valid_from: <column or list of columns>}", history)
    valid_from = history["valid_from"]
    names = [valid_from] if isinstance(valid_from, str) else valid_from
    expected = (f"a DATE or TIMESTAMP column, or a list of them tried in order, declared or {FETCHED_AT}"
                f" (e.g. [f_ann_date, ann_date])")
    if not isinstance(names, list) or not names or not all(isinstance(c, str) for c in names):
        fail(f"{where}.history.valid_from", expected, valid_from)
    for i, c in enumerate(names):
        if c == FETCHED_AT:
            if i != len(names) - 1:
                fail(f"{where}.history.valid_from", f"{FETCHED_AT} last: it is never NULL, so nothing after it"
                     " is ever used", valid_from)
        elif c not in by_name or by_name[c].type not in ("DATE", "TIMESTAMP"):
            fail(f"{where}.history.valid_from", expected + f" ({c} is not one)", valid_from)
    return History(tuple(names))
