"""Several loaders on one DuckLake: no duplicate key, ever, whatever is killed.

DuckLake has no primary keys, and two transactions that insert the same new
keys both commit. Two ``loader run`` processes, each with its own data folder
(two hosts), load overlapping keys into one warehouse while they are killed
with SIGKILL at random; at the end each key is there once, with its newest
version, and every file is in the manifest once.
"""

import datetime as dt
import random
import threading
import time
from pathlib import Path

import pyarrow as pa
import pytest

from duckstage import staging
from duckstage.config import load_config
from duckstage.staging import StagedFile
from loader import lake
from tests.helpers import REPO, Process, eventually, wait_for, write_config
from tests.loader.helpers import BASE, FAST, daily, files_in

def catalog(kind, tmp_path, request):
    if kind == "sqlite":
        return f"ducklake:sqlite:{tmp_path / 'catalog.sqlite'}"
    return "ducklake:postgres:" + request.getfixturevalue("postgres_db").conninfo


def host_config(tmp_path, host, database):
    """One host's configuration: its own data folder, the shared warehouse and data files."""
    return write_config(tmp_path / host, log_level="INFO",
                        loader={**FAST, "database": database, "data_path": str(tmp_path / "lake"),
                                "idle_release": 0.2, "maintenance_interval": 1.0})


class Stager:
    """Seals files over shared keys, every row a strictly newer version than the one before."""

    def __init__(self, rng):
        self.rng = rng
        self.version = 0
        self.seq = 0
        self.fresh = 0  # keys handed out so far: stock n on 2 January
        self.newest = {}  # (ts_code, trade_date) -> close of the newest version
        self.lock = threading.Lock()

    def new_keys(self, n):
        """``n`` keys no file has had yet: loaders that take them at once both insert them."""
        with self.lock:
            self.fresh += n
            return [(f"{i:06d}.SZ", 2) for i in range(self.fresh - n + 1, self.fresh + 1)]

    def old_keys(self, n):
        with self.lock:
            return [(f"{self.rng.randint(1, max(1, self.fresh)):06d}.SZ", 2) for _ in range(n)]

    def seal(self, config, instance, keys):
        with self.lock:
            rows = {}
            for code, day in keys:
                self.version += 1
                rows[(code, day)] = daily(code, day, 10.0 + self.version / 1000, minutes=self.version)
            for (code, day), row in rows.items():
                self.newest[(code, dt.date(2025, 1, day))] = row["close"]
            self.seq += 1
            seq = self.seq
        dataset = config.datasets["stock_daily"]
        table = pa.Table.from_pylist(list(rows.values()), schema=dataset.arrow_schema)
        sf = StagedFile.new("stock_daily", instance, seq, now=BASE + dt.timedelta(seconds=seq))
        meta = staging.footer_metadata(dataset, len(table), {"task-1"}, instance, sf.created_at, 1)
        staging.seal(table, config.staging_dir / "stock_daily" / sf.name, meta)


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_two_loaders_killed_at_random_never_double_a_key(tmp_path, request, kind):
    rng = random.Random(11)
    database = catalog(kind, tmp_path, request)
    paths = {host: host_config(tmp_path, host, database) for host in ("a", "b")}
    configs = {host: load_config(p) for host, p in paths.items()}
    stager = Stager(rng)
    loaders = {host: Process("loader", p, "run") for host, p in paths.items()}
    kills = 0
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            # The same new keys on both hosts at once (two inserts of one key is the danger),
            # and now and then newer versions of keys loaded before.
            keys = stager.new_keys(rng.randint(20, 200))
            for host, config in configs.items():
                stager.seal(config, f"s{host}", keys)
                if rng.random() < 0.3:
                    stager.seal(config, f"s{host}", stager.old_keys(rng.randint(1, 20)))
            time.sleep(rng.uniform(0.1, 0.8))
            host = rng.choice(list(loaders))
            for name, p in loaders.items():
                assert p.proc.poll() is None, f"loader {name} exited by itself:\n{p.log()[-3000:]}"
            loaders[host].kill9()
            kills += 1
            time.sleep(rng.uniform(0.0, 0.3))
            loaders[host] = Process("loader", paths[host], "run")
        for host, config in configs.items():
            wait_for(lambda config=config: not files_in(config.staging_dir / "stock_daily"), timeout=120,
                     interval=0.2, message=f"host {host}'s loader to load every sealed file")
        for p in loaders.values():
            assert p.stop(60) == 0, p.log()[-3000:]
    finally:
        for p in loaders.values():
            p.close()

    con = lake.connect(configs["a"].loader.database, read_only=True)
    try:
        rows = con.execute("SELECT ts_code, trade_date, close FROM stock_daily").fetchall()
        manifest = con.execute("SELECT file, count(*) FROM _duckstage_manifest GROUP BY file").fetchall()
    finally:
        con.close()
    keys = [(code, day) for code, day, _ in rows]
    assert len(keys) == len(set(keys)), "a key is in the table twice"
    assert {(code, day): close for code, day, close in rows} == stager.newest
    archived = sorted(files_in(configs["a"].archive_dir) + files_in(configs["b"].archive_dir))
    assert sorted(name for name, _ in manifest) == archived and all(n == 1 for _, n in manifest)
    assert not files_in(configs["a"].quarantine_dir) and not files_in(configs["b"].quarantine_dir)
    assert kills >= 5


class PausedAtCommit:
    """A DuckDB connection that stops at its first COMMIT until ``go`` is set: a loader caught
    between its MERGE and its commit, at the moment another loader takes the same new keys."""

    def __init__(self, con, at_commit, go):
        self._con, self.at_commit, self.go = con, at_commit, go

    def execute(self, sql, *args):
        if sql.strip().upper() == "COMMIT" and not self.at_commit.is_set():
            self.at_commit.set()
            assert self.go.wait(60)
        return self._con.execute(sql, *args)

    def __getattr__(self, name):
        return getattr(self._con, name)


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_two_loaders_inserting_the_same_new_keys_at_once_leave_each_key_once(tmp_path, request, kind):
    """Without the writer lock both commits succeed on a PostgreSQL catalog and every key is there twice."""
    import duckdb

    from loader.load import load_files
    from loader.warehouse import Warehouse

    configs = the_same_new_keys_on_two_hosts(tmp_path, catalog(kind, tmp_path, request), 500)
    at_commit, go = threading.Event(), threading.Event()
    paused = Warehouse(configs["a"].loader.database,
                       connect=lambda *a, **k: PausedAtCommit(duckdb.connect(*a, **k), at_commit, go)).open()
    other = Warehouse(configs["b"].loader.database).open()
    outcomes, errors = {}, []

    def load(host, wh):
        config = configs[host]
        try:
            outcomes[host] = load_files(wh, config.datasets["stock_daily"],
                                        files_in_staging(config), config)
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    first = threading.Thread(target=load, args=("a", paused))
    first.start()
    try:
        assert at_commit.wait(60), errors
        second = threading.Thread(target=load, args=("b", other))
        second.start()
        second.join(2.0)  # the lock keeps it waiting: it must not have committed meanwhile
        go.set()
        first.join(60)
        second.join(60)
    finally:
        go.set()
        paused.close()
        other.close()
    assert not errors, errors
    assert outcomes["a"].inserted == 500 and outcomes["b"].inserted == 0 and outcomes["b"].updated == 500
    con = lake.connect(configs["a"].loader.database, read_only=True)
    try:
        assert con.execute("SELECT count(*), count(DISTINCT (ts_code, trade_date)) FROM stock_daily").fetchall() \
            == [(510, 510)]
    finally:
        con.close()


def the_same_new_keys_on_two_hosts(tmp_path, database, n):
    """Two hosts' configurations on ``database``, a table of 10 rows, and one file of the same ``n``
    new keys sealed on each host: {host: configuration}."""
    from loader.load import load_files
    from loader.warehouse import Warehouse

    configs = {host: load_config(host_config(tmp_path, host, database)) for host in ("a", "b")}
    stager = Stager(random.Random(5))
    stager.seal(configs["a"], "sa", stager.new_keys(10))  # the table exists before the race
    wh = Warehouse(configs["a"].loader.database).open()
    try:
        load_files(wh, configs["a"].datasets["stock_daily"], files_in_staging(configs["a"]), configs["a"],
                   settle=lambda p: Path(p).unlink())
    finally:
        wh.close()
    keys = stager.new_keys(n)
    for host, config in configs.items():
        stager.seal(config, f"s{host}", keys)
    return configs


def files_in_staging(config):
    return sorted(str(p) for p in (config.staging_dir / "stock_daily").glob("*.parquet"))


def test_a_loader_waits_for_the_writer_lock_another_holds(tmp_path, request):
    """While another process holds a task type's writer lock, nothing of that type is written;
    status says what the loader waits for; the files load once it is released."""
    database = catalog("sqlite", tmp_path, request)
    path = host_config(tmp_path, "a", database)
    config = load_config(path)
    holder = Process("tests.loader.hold_writer_lock", path, "stock_daily", env={"PYTHONPATH": str(REPO)})
    loader = None
    try:
        wait_for(lambda: "held" in holder.log(), timeout=30, message="the lock holder to start")
        stager = Stager(random.Random(3))
        stager.seal(config, "sa", stager.new_keys(10))
        loader = Process("loader", path, "run")
        assert eventually(lambda: "waiting for the writer lock of stock_daily, held by another loader"
                          in status_text(path), 20), loader.log()[-3000:]
        assert files_in(config.staging_dir / "stock_daily")  # nothing loaded meanwhile
        holder.stop(10)
        wait_for(lambda: not files_in(config.staging_dir / "stock_daily"), timeout=60,
                 message="the loader to load once the lock is free")
        assert loader.stop(30) == 0
    finally:
        holder.close()
        if loader:
            loader.close()
    con = lake.connect(config.loader.database, read_only=True)
    try:
        assert con.execute("SELECT count(*) FROM stock_daily").fetchall()[0][0] == len(stager.newest)
    finally:
        con.close()


def status_text(config_path):
    from tests.loader.helpers import run_cli

    out = run_cli(config_path, "status")
    return out.stdout + out.stderr


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_a_commit_refused_for_a_concurrent_writer_is_retried_not_quarantined(tmp_path, request, kind):
    """Someone updates the table between the loader's MERGE and its commit (a person in the
    duckdb CLI takes no writer lock): DuckLake refuses the commit, the loader retries, and the file
    loads on the next step; nothing goes to quarantine."""
    import duckdb

    from loader.service import Loader

    database = catalog(kind, tmp_path, request)
    config = load_config(host_config(tmp_path, "a", database))
    stager = Stager(random.Random(7))
    stager.seal(config, "sa", stager.new_keys(20))
    first = Loader(config)
    assert first.run_once() == 1
    first.warehouse.close()

    at_commit, go = threading.Event(), threading.Event()
    loader = Loader(config, connect=lambda *a, **k: PausedAtCommit(duckdb.connect(*a, **k), at_commit, go))
    stager.seal(config, "sa", stager.old_keys(5) + stager.new_keys(5))
    step = threading.Thread(target=loader.run_once)
    step.start()
    try:
        assert at_commit.wait(60)
        person = lake.connect(config.loader.database)
        try:
            person.execute("UPDATE stock_daily SET vol = vol + 1")
        finally:
            person.close()
    finally:
        go.set()
        step.join(60)
    status = loader.get_status()
    # PostgreSQL names the conflict; a SQLite catalog refuses the second writer as locked.
    assert status["retry"] and any(w in status["retry"]["error"] for w in ("Transaction conflict", "database is locked")), \
        status["retry"]
    assert len(files_in(config.staging_dir / "stock_daily")) == 1 and not files_in(config.quarantine_dir)
    assert loader.run_once() == 1
    assert not files_in(config.staging_dir / "stock_daily") and not files_in(config.quarantine_dir)
    loader.warehouse.close()
    con = lake.connect(config.loader.database, read_only=True)
    try:
        rows = dict(((c, d), v) for c, d, v in con.execute(
            "SELECT ts_code, trade_date, close FROM stock_daily").fetchall())
    finally:
        con.close()
    assert rows == stager.newest


def test_a_loader_killed_with_its_commit_on_the_way_does_not_let_the_next_double_its_keys(tmp_path, request,
                                                                                         postgres_db):
    """kill -9 of a loader just after it sent its COMMIT: its lock session ends at once and frees the
    writer lock, while the catalog's other session is still committing. The next holder begins from
    a snapshot without those rows; it must not insert their keys a second time."""
    import duckdb
    import psycopg

    from loader.load import load_files
    from loader.warehouse import Warehouse

    # Only inserts, on both hosts: DuckLake sees no conflict between two such transactions.
    configs = the_same_new_keys_on_two_hosts(tmp_path, "ducklake:postgres:" + postgres_db.conninfo, 500)
    events = {host: (threading.Event(), threading.Event()) for host in configs}  # (at commit, go on)
    warehouses = {host: Warehouse(config.loader.database, connect=lambda *a, host=host, **k: PausedAtCommit(
        duckdb.connect(*a, **k), *events[host])).open() for host, config in configs.items()}
    errors = []

    def load(host):
        config = configs[host]
        try:
            load_files(warehouses[host], config.datasets["stock_daily"], files_in_staging(config), config,
                       settle=lambda p: Path(p).unlink())
        except Exception as exc:  # noqa: BLE001 - the refused commit is looked at below
            errors.append(exc)

    threads = {host: threading.Thread(target=load, args=(host,)) for host in configs}
    try:
        threads["a"].start()
        assert events["a"][0].wait(60), errors
        # a dies: the server ends its lock session (what the kill does to it) ...
        with psycopg.connect(postgres_db.conninfo, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                          " WHERE application_name = 'duckstage loader'")
        threads["b"].start()  # ... b takes the lock and merges ...
        assert events["b"][0].wait(60), errors
        events["a"][1].set()  # ... and a's COMMIT, already sent, lands before b's
        threads["a"].join(60)
    finally:
        for at_commit, go in events.values():
            go.set()
        for thread in threads.values():
            if thread.ident:
                thread.join(60)
    left = files_in_staging(configs["b"])
    if left:  # b's commit was refused: its next step loads the file
        load_files(warehouses["b"], configs["b"].datasets["stock_daily"], left, configs["b"],
                   settle=lambda p: Path(p).unlink())
    for wh in warehouses.values():
        wh.close()
    con = lake.connect(configs["a"].loader.database, read_only=True)
    try:
        assert con.execute("SELECT count(*), count(DISTINCT (ts_code, trade_date)) FROM stock_daily").fetchall() \
            == [(510, 510)]
        assert con.execute("SELECT count(*), count(DISTINCT file) FROM _duckstage_manifest").fetchall() == [(3, 3)]
    finally:
        con.close()
    # Refused as a concurrent writer: retried, never blamed on the file.
    assert [type(e).__name__ for e in errors] == ["DatabaseBusy"] and left, errors
    assert not files_in(configs["b"].quarantine_dir)
