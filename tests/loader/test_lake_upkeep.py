"""A DuckLake's upkeep and its readers: files per table stay few, time travel and `loader shell` work."""

import time

import pytest

from duckstage.config import load_config
from loader import lake
from loader.service import Loader
from tests.helpers import Process, free_port, get, value, wait_for, write_config
from tests.loader.helpers import FAST, Stage, daily, files_in, run_cli


@pytest.fixture(params=["sqlite", "postgres"])
def lake_config(request, tmp_path):
    if request.param == "sqlite":
        database = "ducklake:sqlite:catalog.sqlite"
    else:
        database = "ducklake:postgres:" + request.getfixturevalue("postgres_db").conninfo
    path = write_config(tmp_path, log_level="INFO",
                        loader={**FAST, "database": database, "maintenance_interval": 0, "idle_release": 60})
    return path, load_config(path)


def read(config, sql):
    con = lake.connect(config.loader.database, read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def commits(config, stage, loader, n, codes=30):
    """``n`` commits of one file each: new rows, and newer versions of every earlier row."""
    for i in range(n):
        stage("stock_daily", [daily(f"{c:06d}.SZ", 2 + i % 20, 10.0 + i, minutes=i) for c in range(1, codes + 1)])
        assert loader.run_once() == 1


def test_upkeep_keeps_the_files_of_a_table_few_and_the_rows_as_they_were(lake_config):
    _, config = lake_config
    stage = Stage(config)
    loader = Loader(config)
    commits(config, stage, loader, 40)
    before = read(config, "SELECT * FROM stock_daily ORDER BY ts_code, trade_date")
    files = lake.file_counts(loader.warehouse.open().con)["stock_daily"]
    assert files["data_files"] >= 20  # one per commit (30-row files are too big to be inlined)

    left = loader.upkeep.run(loader.warehouse, config.datasets.names, config.loader, delete_after=0)
    loader.warehouse.close()
    assert left["stock_daily"]["data_files"] <= 2 and left["stock_daily"]["delete_files"] == 0, left
    assert left["_duckstage_manifest"]["data_files"] <= 2, left
    assert read(config, "SELECT * FROM stock_daily ORDER BY ts_code, trade_date") == before
    assert loader.upkeep.status()["runs"] == 1 and loader.get_status()["maintenance"]["last"]["error"] is None


def test_upkeep_runs_on_its_interval_and_keeps_time_travel_within_the_retention(lake_config):
    _, config = lake_config
    config = config.with_loader(maintenance_interval=0.5)
    stage = Stage(config)
    loader = Loader(config)
    commits(config, stage, loader, 3)
    early = loader.get_status()["snapshot"]
    early_rows = read(config, f"SELECT count(*), sum(close) FROM stock_daily AT (VERSION => {early})")
    time.sleep(0.6)
    commits(config, stage, loader, 3)  # the first step after the interval runs it
    assert loader.upkeep.status()["runs"] >= 1
    loader.warehouse.close()
    assert read(config, f"SELECT count(*), sum(close) FROM stock_daily AT (VERSION => {early})") == early_rows
    assert read(config, "SELECT count(*) FROM stock_daily")[0][0] >= early_rows[0][0]


def test_status_and_metrics_show_the_current_snapshot_while_the_loader_runs(lake_config, tmp_path):
    path, config = lake_config
    port = free_port()
    path = write_config(tmp_path, log_level="INFO", loader={
        **FAST, "database": str(config.loader.database.attach_target), "maintenance_interval": 0,
        "metrics_port": port})
    stage = Stage(config)
    stage("stock_daily", [daily("000001.SZ", 2, 10.0)])
    loader = Process("loader", path, "run")
    try:
        wait_for(lambda: not files_in(config.staging_dir / "stock_daily"), timeout=60,
                 message="the loader to load the file")
        snapshot = read(config, "SELECT id FROM ducklake_current_snapshot('lake')")[0][0]
        wait_for(lambda: f"snapshot {snapshot} " in run_cli(path, "status").stdout, timeout=30,
                 message=f"status to show snapshot {snapshot}")
        shown = run_cli(path, "status", "--json")
        assert '"snapshot": %d' % snapshot in shown.stdout
        wait_for(lambda: value(get(port, "/metrics")[1], "duckstage_loader_snapshot") == snapshot, timeout=30,
                 message=f"/metrics to show snapshot {snapshot}")
        # A reader gets in while the loader runs: the DuckLake is never held by one process.
        out = run_cli(path, "shell", "-csv", "-noheader", "-c", "SELECT count(*) FROM stock_daily")
        assert out.returncode == 0 and out.stdout.strip() == "1", out
        assert loader.stop(30) == 0
    finally:
        loader.close()


def test_loader_shell_is_read_only_and_downloads_nothing(lake_config):
    path, config = lake_config
    Stage(config)("stock_daily", [daily("000001.SZ", 2, 10.0)])
    loader = Loader(config)
    assert loader.run_once() == 1
    loader.warehouse.close()
    out = run_cli(path, "shell", "-csv", "-noheader", "-c",
                  "SELECT count(*) FROM stock_daily; SELECT current_setting('autoinstall_known_extensions')")
    assert out.returncode == 0 and out.stdout.split() == ["1", "false"], out
    refused = run_cli(path, "shell", "-c", "DELETE FROM stock_daily")
    assert refused.returncode != 0 and "read-only" in (refused.stdout + refused.stderr).lower(), refused
    assert read(config, "SELECT count(*) FROM stock_daily") == [(1,)]


def test_loader_shell_on_a_database_file_that_does_not_exist_yet_says_so(tmp_path):
    path = write_config(tmp_path, loader=FAST)
    out = run_cli(path, "shell", "-c", "SELECT 1")
    assert out.returncode == 2 and "does not exist yet" in out.stderr and "Traceback" not in out.stderr, out


def test_a_database_file_opens_in_loader_shell_once_the_loader_released_it(tmp_path):
    path = write_config(tmp_path, loader=FAST)
    config = load_config(path)
    Stage(config)("stock_daily", [daily("000001.SZ", 2, 10.0, minutes=1)])
    loader = Loader(config)
    loader.run_once()
    loader.warehouse.close()
    out = run_cli(path, "shell", "-csv", "-noheader", "-c", "SELECT close FROM stock_daily")
    assert out.returncode == 0 and out.stdout.strip() == "10.0", out


def test_upkeep_while_another_loader_commits_keeps_every_key_once(tmp_path, postgres_db):
    """Loader a loads small files of stock_daily (new keys and newer versions) and runs its upkeep
    between them, while loader b, on another host, commits to another table all along. With small
    inserts kept in the catalog (DuckLake 1.5.5's data inlining), flushing them out at such a moment
    left rows in the table twice, or failed with an internal error that left loader a unable to
    write until restarted. Every key must be there once, with its newest version."""
    import threading

    database = "ducklake:postgres:" + postgres_db.conninfo
    loader = {**FAST, "database": database, "data_path": str(tmp_path / "lake"), "maintenance_interval": 0,
              "idle_release": 60}
    configs = [load_config(write_config(tmp_path / host, loader=loader)) for host in ("a", "b")]
    loaders = [Loader(config) for config in configs]
    stop, errors = threading.Event(), []

    def other_host():
        stage, i = Stage(configs[1]), 0
        try:
            while not stop.is_set():
                stage("daily_bar_none", [daily(f"{c:06d}.SH", 2 + i % 20, 5.0 + i, minutes=i) for c in range(1, 4)])
                loaders[1].run_once()
                i += 1
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    loaders[0].warehouse.open()  # creates the catalog: two first ATTACHes at once collide (and are retried)
    other = threading.Thread(target=other_host)
    other.start()
    stage, newest = Stage(configs[0]), {}
    try:
        for i in range(10):
            rows = [daily(f"{c:06d}.SZ", 2, 10.0 + i, minutes=i) for c in range(3 * i + 1, 3 * i + 4)]  # new keys
            rows += [daily(f"{c:06d}.SZ", 2, 10.0 + i, minutes=i) for c in (1, 3 * i // 2 + 1)]  # newer versions
            stage("stock_daily", rows)
            newest.update({r["ts_code"]: r["close"] for r in rows})
            # A commit refused for loader b's is retried, as by `loader run`: at most a few times here.
            assert 1 in (loaders[0].run_once() for _ in range(5)), "the file was not loaded"
            loaders[0].upkeep.run(loaders[0].warehouse, configs[0].datasets.names, configs[0].loader)
    finally:
        stop.set()
        other.join(60)
        for loader in loaders:
            loader.warehouse.close()
    assert not errors, errors
    assert read(configs[0], "SELECT count(*) - count(DISTINCT ts_code) FROM stock_daily") == [(0,)]
    assert dict(read(configs[0], "SELECT ts_code, close FROM stock_daily")) == newest
