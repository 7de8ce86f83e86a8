"""Where the warehouse lives: ``loader.database`` parsed once.

Three forms, in DuckDB's own ATTACH syntax for the DuckLake ones:

- ``PATH``: one DuckDB file (the default, ``warehouse.duckdb``);
- ``ducklake:sqlite:PATH``: a DuckLake whose catalog is a SQLite file, for one
  machine where researchers query while the loader writes;
- ``ducklake:postgres:CONNINFO``: a DuckLake whose catalog is a PostgreSQL
  database (libpq key=value pairs or a ``postgresql://`` URI), for several
  machines and several loaders.

A DuckLake keeps its data as Parquet files under ``loader.data_path``.
Relative paths resolve against ``data_dir``, as every other path does. This
module only parses; connecting is the loader's (``loader.lake``).
"""

import re
from dataclasses import dataclass
from pathlib import Path

DUCKDB, SQLITE, POSTGRES = "duckdb", "sqlite", "postgres"
LAKE_PREFIX = "ducklake:"
EXPECTED = ("a DuckDB file path, ducklake:sqlite:PATH or ducklake:postgres:CONNINFO"
            " (e.g. ducklake:postgres:dbname=lake host=db1)")

_PASSWORD = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)|(://[^:/@]*:)([^@]*)(@)", re.IGNORECASE)


@dataclass(frozen=True)
class Database:
    """The warehouse's location: ``kind`` is duckdb, sqlite or postgres."""

    kind: str
    path: Path = None      # the DuckDB file, or the SQLite catalog
    conninfo: str = None   # the PostgreSQL catalog
    data_path: Path = None  # a DuckLake's data files

    @property
    def is_lake(self):
        return self.kind != DUCKDB

    @property
    def attach_target(self):
        """The string DuckDB's ATTACH takes (the file itself for a DuckDB file)."""
        if self.kind == DUCKDB:
            return str(self.path)
        return f"{LAKE_PREFIX}{self.kind}:{self.path if self.kind == SQLITE else self.conninfo}"

    def __str__(self):
        """For logs and status: the PostgreSQL password, if any, is hidden."""
        if self.kind == POSTGRES:
            return f"{LAKE_PREFIX}{POSTGRES}:" + _PASSWORD.sub(_hide, self.conninfo)
        return self.attach_target

    def __fspath__(self):
        # A DuckDB file is still a path to the code and tests that open it directly.
        if self.kind != DUCKDB:
            raise TypeError(f"{self} is a DuckLake catalog, not a file")
        return str(self.path)


def _hide(m):
    if m.group(1):
        return m.group(1) + "***"
    return m.group(3) + "***" + m.group(5)


def is_valid(value):
    """True if ``value`` names a warehouse in one of the three forms."""
    return parse(value, Path("."), "lake") is not None


def parse(value, data_dir, data_path):
    """The Database that ``value`` names, paths resolved against ``data_dir``; None if malformed."""
    value = value.strip()
    if not value:
        return None
    if not value.startswith(LAKE_PREFIX):
        return Database(DUCKDB, path=Path(data_dir) / value)
    kind, _, target = value[len(LAKE_PREFIX):].partition(":")
    target = target.strip()
    if kind not in (SQLITE, POSTGRES) or not target:
        return None
    lake_files = Path(data_dir) / data_path
    if kind == SQLITE:
        return Database(SQLITE, path=Path(data_dir) / target, data_path=lake_files)
    return Database(POSTGRES, conninfo=target, data_path=lake_files)
