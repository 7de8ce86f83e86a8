"""The loader tests' material: configurations, sealed files, rows, queries, and the loader as a subprocess.

Staged files are made the way the stager makes them (``duckstage.staging.seal``
with the dataset's Arrow schema and footer), without the stager's service.

Every loader test runs on each warehouse backend (``BACKENDS``): the autouse
``backend`` fixture of tests/loader/conftest.py makes one ``Backend`` the one
``loader_config`` and ``write_loader_config`` put in ``loader.database`` for
the length of a test, and ``query`` reads whatever that names.
"""

import contextlib
import datetime as dt
import os
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow as pa

from duckstage import staging
from duckstage.config import from_mapping
from duckstage.staging import StagedFile
from loader import lake
from loader.load import reload, resolve_paths
from loader.warehouse import Warehouse
from tests.helpers import CONFIG_DIR, REPO, Process, eventually, wait_for, write_config

BASE = dt.datetime(2025, 1, 6, 8, 0, tzinfo=dt.timezone.utc)
FAST = {"retry_delay": 0.05, "retry_max_delay": 0.2, "idle_release": 0, "rescan_interval": 0.2}
LAKE_IDLE_RELEASE = 60


def fetched(minutes):
    """A _fetched_at value: UTC naive, ``minutes`` after BASE."""
    return (BASE + dt.timedelta(minutes=minutes)).replace(tzinfo=None)


def daily(code, day, close, minutes=0, task="task-1", **extra):
    """One stock_daily row (day = day of January 2025)."""
    row = {"ts_code": code, "trade_date": dt.date(2025, 1, day), "open": close - 0.5, "high": close + 1,
           "low": close - 1, "close": close, "pre_close": None, "change": None, "pct_chg": None,
           "vol": 100.0, "amount": 1000.0, "ah_vol": None, "ah_amount": None,
           "_task_id": task, "_fetched_at": fetched(minutes)}
    row.update(extra)
    return row


class Stage:
    """Seal files into ``staging/<task_type>/`` in seal order (one second apart)."""

    def __init__(self, config):
        self.config = config
        self.seq = 0

    def __call__(self, task_type, rows=None, table=None, instance="t1", name=None):
        self.seq += 1
        dataset = self.config.datasets[task_type]
        if table is None:
            table = pa.Table.from_pylist(rows, schema=dataset.arrow_schema)
        sf = StagedFile.new(task_type, instance, self.seq, now=BASE + dt.timedelta(seconds=self.seq))
        folder = self.config.staging_dir / (name or task_type)
        meta = staging.footer_metadata(dataset, len(table), {"task-1"}, instance, sf.created_at, 1)
        return staging.seal(table, folder / sf.name, meta)


# -- the warehouse backends ----------------------------------------------------------

DUCKDB, LAKE_SQLITE, LAKE_POSTGRES = "duckdb", "ducklake-sqlite", "ducklake-postgres"
BACKENDS = (DUCKDB, LAKE_SQLITE, LAKE_POSTGRES)
# The reason a test runs once: what it checks happens before any warehouse is opened.
NO_WAREHOUSE = "never opens the warehouse, so it is the same test on every backend"
# The reason a test runs on a DuckDB file only: only a DuckDB file is locked by whoever opens it.
HELD_FILE = "a DuckDB file held open by another process (the duckdb CLI); a DuckLake has no such lock"


class Backend:
    """Where a test's warehouse lives: a DuckDB file, or a DuckLake on SQLite or PostgreSQL.

    ``database(tmp_path)`` is the ``loader.database`` value for the data under
    ``tmp_path`` (None: the default DuckDB file). On PostgreSQL the first
    ``tmp_path`` gets the test's own database (``postgres_db``), every other one
    a database of its own, dropped by ``close()``: two data folders never share
    a catalog, as two DuckDB files are never one.
    """

    def __init__(self, name, postgres_db=None, postgres_server=None):
        self.name = name
        self.postgres_db = postgres_db
        self.postgres_server = postgres_server
        self._conninfo = {}  # tmp_path -> conninfo of its catalog
        self._extra = []  # the databases made beside postgres_db
        self._connections = {}  # Database -> this test's open connection to that DuckLake

    @property
    def is_lake(self):
        return self.name != DUCKDB

    def database(self, tmp_path):
        if self.name == DUCKDB:
            return None
        if self.name == LAKE_SQLITE:
            return "ducklake:sqlite:catalog.sqlite"
        key = Path(tmp_path)
        if key not in self._conninfo:
            self._conninfo[key] = self.postgres_db.conninfo if not self._conninfo else self._new_database()
        return f"ducklake:postgres:{self._conninfo[key]}"

    def _new_database(self):
        import psycopg

        name = f"{self.postgres_db.name}_{len(self._extra) + 1}"
        with psycopg.connect(self.postgres_server.conninfo, autocommit=True) as admin:
            admin.execute(f"CREATE DATABASE {name}")
        self._extra.append(name)
        return self.postgres_server.conninfo_for(name)

    def query(self, database, sql, params):
        """Rows of ``sql`` on a DuckLake, through one connection kept for the test.

        A connection costs over half a second (DuckDB checks the signature of
        each extension it loads), and a DuckLake, unlike a DuckDB file, needs no
        releasing: each statement is a transaction of its own and sees every
        commit made before it, by any process (and a PostgreSQL restart: the
        connection reconnects).
        """
        if database not in self._connections:
            self._connections[database] = lake.connect(database)
        return self._connections[database].execute(sql, params or []).fetchall()

    def close(self):
        for con in self._connections.values():
            con.close()
        self._connections.clear()
        if not self._extra:
            return
        import psycopg

        self.postgres_server.start()  # a test may have left it stopped
        with psycopg.connect(self.postgres_server.conninfo, autocommit=True) as admin:
            for name in self._extra:
                admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


_backend = Backend(DUCKDB)  # the one the running test asked for (conftest's ``backend``)


@contextlib.contextmanager
def using(backend):
    """Make ``backend`` the one ``loader_config`` and ``write_loader_config`` put in the configuration."""
    global _backend
    before, _backend = _backend, backend
    try:
        yield backend
    finally:
        _backend = before


def _on_backend(tmp_path, loader):
    database = _backend.database(tmp_path)
    # A DuckLake is not released when idle (nobody waits for it): its connection costs over half a second.
    lake_keys = {"database": database, "idle_release": LAKE_IDLE_RELEASE} if database else {}
    return {**FAST, **lake_keys, **loader}


def loader_config(tmp_path, **loader):
    """A configuration in memory (data in tmp_path/data) with quick loader retries and scans,
    its warehouse on the test's backend."""
    return from_mapping({"loader": _on_backend(tmp_path, loader)}, "<test>", CONFIG_DIR, tmp_path)


def write_loader_config(tmp_path, **loader):
    """The YAML twin of ``loader_config``, for subprocesses; returns its path."""
    return write_config(tmp_path, log_level="INFO", loader=_on_backend(tmp_path, loader))


def query(config, sql, params=None):
    """Rows of ``sql`` on the configuration's warehouse, whatever its backend.

    A DuckDB file is opened with the loader's own settings, so this shares the
    database a ``Loader`` in this process holds open, and closed again at once,
    so a loader process can take it.
    """
    database = config.loader.database
    if database.is_lake:
        return _backend.query(database, sql, params)
    con = lake.connect(database)
    try:
        return con.execute(sql, params or []).fetchall()
    finally:
        con.close()


def table(config, name, cols="*", order="ts_code, trade_date"):
    return query(config, f"SELECT {cols} FROM {name} ORDER BY {order}")


def has_table(config, name):
    """Whether the warehouse has table ``name`` (a DuckDB file not created yet has none)."""
    database = config.loader.database
    if not database.is_lake and not database.path.exists():
        return False
    return query(config, "SELECT count(*) FROM information_schema.tables WHERE table_catalog = current_database()"
                         " AND table_name = ?", [name]) == [(1,)]


def hold_writer_lock(config_path, task_type):
    """Another loader holding ``task_type``'s writer lock on the configuration's DuckLake: the
    process ``tests.loader.hold_writer_lock``, once it holds it; ``stop()`` it to release it."""
    holder = Process("tests.loader.hold_writer_lock", config_path, task_type, env={"PYTHONPATH": str(REPO)})
    try:
        wait_for(lambda: "held" in holder.log() or holder.proc.poll() is not None, timeout=30,
                 message=f"the writer lock of {task_type} to be held")
        assert "held" in holder.log(), holder.log()
    except BaseException:
        holder.close()
        raise
    return holder


def files_in(folder, pattern="*.parquet"):
    return sorted(p.name for p in Path(folder).rglob(pattern))


def reload_files(config, patterns, force=False):
    """``reload`` of the files the patterns name, into the configuration's warehouse: the outcome."""
    wh = Warehouse(config.loader.database).open()
    try:
        return reload(wh, config, resolve_paths(config, [str(p) for p in patterns]), force=force)
    finally:
        wh.close()


def loader_cmd(config_path, *args):
    return [sys.executable, "-m", "loader", "--config", str(config_path), *args]


def run_cli(config_path, *args, timeout=60):
    return subprocess.run(loader_cmd(config_path, *args), capture_output=True, text=True, timeout=timeout,
                          cwd=str(config_path.parent))


def kill_9_lives(config_path, staging_dir, rng, lives, first=(0.5, 1.0)):
    """``loader run``, killed with SIGKILL at random moments, life after life, until staging/ is empty.

    Returns how many kills landed mid-work (some files loaded, some not).
    """
    mid_work = 0
    for life in range(lives):
        before = len(files_in(staging_dir))
        if not before:
            break
        proc = subprocess.Popen(loader_cmd(config_path, "run"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # Lives grow longer so the run always ends, whatever the machine's speed.
        eventually(lambda: proc.poll() is not None, rng.uniform(*first) + 0.1 * life)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        mid_work += 0 < len(files_in(staging_dir)) < before
    return mid_work
