"""Connections to the warehouse on any backend, the writer lock, and DuckLake's upkeep.

A DuckDB file is opened as it always was. A DuckLake is attached to an
in-memory DuckDB as ``lake`` and made the default catalog, so the rest of the
loader speaks the same SQL to both. Facts this is written around (DuckDB and
its extension packages 1.5.5, measured):

- The ``ducklake``, ``sqlite`` and ``postgres`` extensions come from their pip
  packages (``duckdb-extension-*``), built for exactly this DuckDB. They are
  loaded from those files; automatic install and load are off, so nothing is
  ever downloaded. A file is loaded by the name of its entry point
  (``sqlite_scanner``, ``postgres_scanner``), hence the links in
  ``extension_folder()``.
- DuckLake has no primary keys, and two transactions that insert the same
  new keys both commit. So a task type's writes (its table and its manifest
  rows) are serialised across processes and hosts by a writer lock taken
  before the transaction begins: a PostgreSQL advisory lock on the catalog's
  server, a file lock beside a SQLite catalog. Its holder dying releases it.
- A commit refused for a concurrent writer raises TransactionException, a
  catalog that cannot be reached IOException: both are retried, never blamed
  on a file.
- A SQLite catalog in rollback-journal mode lets a reader's open transaction
  block the writer's commit; in WAL mode readers never block it.
- Data inlining is off for the loader's connections: with small inserts kept
  in the catalog, ``ducklake_flush_inlined_data`` run while another loader
  commits to other tables leaves some of the flushed rows in the table twice
  (measured, and duckdb/ducklake#650). Without inlined rows there is nothing
  to flush; every commit writes Parquet files, which the upkeep merges.
"""

import contextlib
import fcntl
import importlib.util
import logging
import os
import sqlite3
import tempfile
import time
import zlib
from pathlib import Path

import duckdb

from duckstage.database import DUCKDB, POSTGRES, SQLITE

log = logging.getLogger(__name__)

ALIAS = "lake"
STORAGE_COMPATIBILITY = "v1.5.0"
# extension package -> the name its entry point is registered under
EXTENSIONS = {"ducklake": "ducklake", "sqlite": "sqlite_scanner", "postgres": "postgres_scanner"}
NEEDED = {SQLITE: ("ducklake", "sqlite"), POSTGRES: ("ducklake", "postgres")}
# An advisory lock's first key: the same for every duckstage writer, the second is the task type's.
LOCK_CLASS = 0x6475636B  # "duck"
_OFFLINE = {"autoinstall_known_extensions": False, "autoload_known_extensions": False}


class LockTimeout(Exception):
    """Another loader held a task type's writer lock for the whole wait."""


def extension_folder():
    """A folder of links to the extension packages' files, named by their entry points."""
    # One folder per installation (and user): two virtualenvs never re-point each other's links.
    installation = zlib.crc32(str(_package_file("ducklake").parent).encode())
    folder = Path(tempfile.gettempdir()) / f"duckstage-extensions-{duckdb.__version__}-{os.getuid()}-{installation:08x}"
    folder.mkdir(mode=0o700, exist_ok=True)
    for package, entry in EXTENSIONS.items():
        link = folder / f"{entry}.duckdb_extension"
        target = _package_file(package)
        if not (link.is_symlink() and os.readlink(link) == str(target)):
            tmp = folder / f".{entry}.{os.getpid()}.tmp"
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            tmp.symlink_to(target)
            tmp.replace(link)  # atomic: a concurrent process sees the old link or the new one
    return folder


def _package_file(package):
    spec = importlib.util.find_spec(f"duckdb_extension_{package}")
    if spec is None:
        raise duckdb.IOException(f"the duckdb-extension-{package} package is not installed:"
                                 " pip install the project's dependencies again")
    found = sorted(Path(spec.submodule_search_locations[0]).glob(
        f"extensions/v{duckdb.__version__}/{package}.duckdb_extension"))
    if not found:
        raise duckdb.IOException(f"duckdb-extension-{package} has no build for DuckDB {duckdb.__version__}")
    return found[0]


def load_statements(database):
    """The SQL that loads the extensions a DuckLake on ``database`` needs (none for a DuckDB file)."""
    if database.kind == DUCKDB:
        return []
    folder = extension_folder()
    return [f"LOAD '{folder / EXTENSIONS[name]}.duckdb_extension'" for name in NEEDED[database.kind]]


def attach_statement(database, read_only=False):
    options = [] if read_only else [f"DATA_PATH '{_sql_text(str(database.data_path) + os.sep)}'",
                                    "DATA_INLINING_ROW_LIMIT 0"]
    if read_only:
        options.append("READ_ONLY")
    suffix = f" ({', '.join(options)})" if options else ""
    return f"ATTACH '{_sql_text(database.attach_target)}' AS {ALIAS}{suffix}"


def _sql_text(text):
    return text.replace("'", "''")


def connect(database, read_only=False, connect=duckdb.connect):
    """A DuckDB connection on the warehouse; for a DuckLake, ``lake`` attached and in use."""
    if database.kind == DUCKDB:
        if read_only:
            return connect(str(database.path), read_only=True)
        database.path.parent.mkdir(parents=True, exist_ok=True)
        return connect(str(database.path), config={"storage_compatibility_version": STORAGE_COMPATIBILITY})
    if database.kind == SQLITE and not read_only:
        database.path.parent.mkdir(parents=True, exist_ok=True)
    if not read_only:
        database.data_path.mkdir(parents=True, exist_ok=True)
    con = connect(":memory:", config=dict(_OFFLINE))
    try:
        for statement in load_statements(database):
            con.execute(statement)
        if database.kind == SQLITE and not read_only:
            _use_wal(database.path)
        con.execute(attach_statement(database, read_only))
        con.execute(f"USE {ALIAS}")
    except BaseException:
        con.close()
        raise
    return con


def _use_wal(path):
    """Put a SQLite catalog in WAL mode (kept in the file), so readers never block the loader's commits."""
    try:
        with contextlib.closing(sqlite3.connect(path, timeout=30)) as db:
            if db.execute("pragma journal_mode").fetchone()[0].lower() != "wal":
                db.execute("pragma journal_mode=wal")
    except sqlite3.Error as exc:
        raise duckdb.IOException(f"cannot open the DuckLake catalog {path}: {exc}") from exc


def shell_command(database, duckdb_cli):
    """The ``duckdb`` CLI invocation that opens the warehouse read-only (``loader shell``)."""
    if database.kind == DUCKDB:
        return [str(duckdb_cli), "-readonly", str(database.path)]
    setup = ["SET autoinstall_known_extensions = false", "SET autoload_known_extensions = false",
             *load_statements(database), attach_statement(database, read_only=True), f"USE {ALIAS}"]
    return [str(duckdb_cli), "-cmd", "; ".join(setup) + ";"]


def current_snapshot(con):
    """The DuckLake snapshot the connection sees (None for a DuckDB file)."""
    return con.execute(f"SELECT id FROM ducklake_current_snapshot('{ALIAS}')").fetchall()[0][0]


# -- the writer lock ------------------------------------------------------------------


class WriterLock:
    """One task type at a time across every loader of a DuckLake; nothing to do for a DuckDB file."""

    def __init__(self, database, poll=0.05):
        self.database = database
        self.poll = poll
        self._pg = None  # the PostgreSQL session that holds advisory locks
        self._on_wait = None

    def acquire(self, task_type, timeout=30.0, stop=None, on_wait=None):
        """Take ``task_type``'s writer lock and return the function that releases it.

        Raises LockTimeout after ``timeout`` seconds (or at once when ``stop`` is set),
        duckdb.IOException when the lock cannot be asked for at all. ``on_wait()`` is
        called once when the lock is not free at the first try.
        """
        self._on_wait = on_wait
        if self.database.kind == DUCKDB:
            return lambda: None
        if self.database.kind == SQLITE:
            return self._file_lock(task_type, timeout, stop)
        return self._advisory_lock(task_type, timeout, stop)

    def _wait(self, try_once, task_type, timeout, stop):
        deadline = time.monotonic() + timeout
        first = True
        while not try_once():
            if first and self._on_wait is not None:
                self._on_wait()
            first = False
            if time.monotonic() >= deadline or (stop is not None and stop.is_set()):
                raise LockTimeout(f"the writer lock of {task_type} is held by another loader"
                                  f" (waited {timeout:g}s)")
            time.sleep(self.poll)

    def _file_lock(self, task_type, timeout, stop):
        folder = Path(f"{self.database.path}.locks")
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(folder / task_type, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise duckdb.IOException(f"cannot open the writer lock of {task_type} in {folder}: {exc}") from exc

        def try_once():
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                return False

        try:
            self._wait(try_once, task_type, timeout, stop)
        except BaseException:
            os.close(fd)
            raise
        return lambda: os.close(fd)  # closing the file releases the lock

    def _advisory_lock(self, task_type, timeout, stop):
        import psycopg  # only a PostgreSQL catalog needs it

        key = lock_key(task_type)
        try:
            session = self._session(psycopg)
            self._wait(lambda: session.execute("SELECT pg_try_advisory_lock(%s, %s)", (LOCK_CLASS, key))
                       .fetchone()[0], task_type, timeout, stop)
        except psycopg.Error as exc:
            self.close()
            raise duckdb.IOException(f"cannot take the writer lock of {task_type}: {exc}") from exc

        def release():
            try:
                session.execute("SELECT pg_advisory_unlock(%s, %s)", (LOCK_CLASS, key))
            except psycopg.Error as exc:  # the session is gone, and its locks with it
                log.warning("releasing the writer lock of %s: %s", task_type, exc)
                self.close()

        return release

    def _session(self, psycopg):
        if self._pg is None or self._pg.closed:
            self._pg = psycopg.connect(self.database.conninfo, autocommit=True, connect_timeout=10,
                                       application_name="duckstage loader")
        return self._pg

    def close(self):
        if self._pg is not None:
            with contextlib.suppress(Exception):
                self._pg.close()
            self._pg = None


def lock_key(task_type):
    """A task type's advisory lock key: a signed 32-bit hash of its name."""
    value = zlib.crc32(task_type.encode())
    return value - 2**32 if value >= 2**31 else value


# -- upkeep ---------------------------------------------------------------------


def compact(con, table):
    """Merge a table's inlined rows and small files, and rewrite files that are mostly deleted rows."""
    con.execute(f"CALL ducklake_flush_inlined_data('{ALIAS}', table_name => '{_sql_text(table)}')")
    con.execute(f"CALL ducklake_merge_adjacent_files('{ALIAS}', '{_sql_text(table)}')")
    con.execute(f"CALL ducklake_rewrite_data_files('{ALIAS}', '{_sql_text(table)}')")


def expire(con, keep_days, delete_after_seconds):
    """Expire snapshots older than ``keep_days``; delete the files no snapshot needs any more
    once they have been unused for ``delete_after_seconds`` (a reader may still scan them)."""
    con.execute(f"CALL ducklake_expire_snapshots('{ALIAS}', older_than => now() - to_seconds(?::DOUBLE))",
                [float(keep_days) * 86400])
    con.execute(f"CALL ducklake_cleanup_old_files('{ALIAS}', older_than => now() - to_seconds(?::DOUBLE))",
                [float(delete_after_seconds)])


def file_counts(con):
    """Per table: data files and delete files of the current snapshot."""
    counts = {}
    tables = [t for (t,) in con.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_catalog = ? AND table_schema = 'main'",
        [ALIAS]).fetchall()]
    for table in tables:
        data, deletes = con.execute(
            f"SELECT count(*), count(delete_file) FROM ducklake_list_files('{ALIAS}', '{_sql_text(table)}')"
        ).fetchall()[0]
        counts[table] = {"data_files": data, "delete_files": deletes}
    return counts
