"""The loader as a real process: watchdog, signals, status while running, the duckdb CLI, kill -9."""

import json
import random
import shutil
import signal
import subprocess

import pytest

from loader import Loader
from loader.lake import shell_command
from loader.warehouse import MANIFEST

from tests.helpers import duckdb_cli, eventually, hold_database, release
from tests.loader.helpers import (DUCKDB, HELD_FILE, LAKE_POSTGRES, LAKE_SQLITE, NO_WAREHOUSE, Stage, daily, files_in,
                                  has_table, hold_writer_lock, kill_9_lives, loader_cmd, loader_config, query, run_cli,
                                  table, write_loader_config)


def test_watchdog_wakes_the_loader_for_a_new_sealed_file(tmp_path):
    config = loader_config(tmp_path, rescan_interval=30)  # only the observer can be this quick
    stage = Stage(config)
    loader = Loader(config).start()
    try:
        stage("stock_daily", [daily("000001.SZ", 2, 10.0)])
        assert eventually(lambda: files_in(config.archive_dir) != [], 15)  # a rescan would take 30 s
    finally:
        assert loader.stop(10)
    assert table(config, "stock_daily", "close") == [(10.0,)]
    assert loader.get_status()["state"] == "stopped"


@pytest.mark.backends(DUCKDB, reason=NO_WAREHOUSE)
def test_cli_errors_are_one_line_and_exit_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("loader:\n  max_retries: -1\n")
    result = run_cli(bad, "run")  # status shows a refused file; run refuses it
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "loader.max_retries" in result.stderr
    good = write_loader_config(tmp_path)
    result = run_cli(good, "reload", str(tmp_path / "missing-*.parquet"))
    assert result.returncode == 2 and "no such file" in result.stderr and "Traceback" not in result.stderr
    result = run_cli(good, "rebuild", "--task-type", "nope")
    assert result.returncode == 2 and result.stderr.count("\n") == 1


def test_run_loads_at_startup_reports_status_while_holding_the_db_and_stops_on_sigterm(tmp_path):
    path = write_loader_config(tmp_path, idle_release=60)  # keep the database held while status runs
    config = loader_config(tmp_path)
    stage = Stage(config)
    stage("stock_daily", [daily("000001.SZ", 2, 10.0)])  # sealed while the loader was down
    proc = subprocess.Popen(loader_cmd(path, "run"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert eventually(lambda: files_in(config.archive_dir) != [], 20)
        stage("stock_daily", [daily("000002.SZ", 2, 10.0)])
        assert eventually(lambda: len(files_in(config.archive_dir)) == 2, 10)
        result = run_cli(path, "status", "--json")
        assert result.returncode == 0, result.stderr
        st = json.loads(result.stdout)
        assert st["loader"]["running"] and st["loader"]["pid"] == proc.pid
        if config.loader.database.is_lake:  # read directly, while the loader writes
            assert st["database_busy"] is None and st["snapshot"] is not None
        else:
            assert st["database_busy"] == "held by the running loader"
        assert st["manifest"]["stock_daily"]["files"] == 2
        assert st["pending"] == {}
        human = run_cli(path, "status")
        assert "loader: idle" in human.stdout and "stock_daily" in human.stdout
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert table(config, "stock_daily", "ts_code") == [("000001.SZ",), ("000002.SZ",)]
    st = json.loads(run_cli(path, "status", "--json").stdout)
    assert not st["loader"]["running"] and st["manifest"]["stock_daily"]["rows"] == 2


@pytest.mark.backends(DUCKDB, reason=HELD_FILE)
def test_run_waits_for_a_person_holding_the_database_then_loads(tmp_path):
    path = write_loader_config(tmp_path, max_retries=2)
    config = loader_config(tmp_path)
    Stage(config)("stock_daily", [daily("000001.SZ", 2, 10.0)])
    holder = hold_database(config.loader.database)
    proc = subprocess.Popen(loader_cmd(path, "run"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        def slow_retry():
            snap = json.loads((config.run_dir / "loader.json").read_text()) \
                if (config.run_dir / "loader.json").exists() else {}
            return (snap.get("retry") or {}).get("slow")

        assert eventually(slow_retry, 20)
        assert files_in(config.staging_dir) != []
        release(holder)
        assert eventually(lambda: files_in(config.archive_dir) != [], 20)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(20) == 0
    finally:
        if holder.poll() is None:
            release(holder)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert table(config, "stock_daily", "ts_code") == [("000001.SZ",)]


@pytest.mark.backends(LAKE_SQLITE, LAKE_POSTGRES, reason="only a DuckLake has a writer lock per task type")
def test_run_waits_for_another_loader_holding_the_writer_lock_then_loads(tmp_path, spawn):
    path = write_loader_config(tmp_path)
    config = loader_config(tmp_path)
    stage = Stage(config)
    basic = stage("stock_basic", [{"ts_code": "000001.SZ", "symbol": "000001", "name": "PA", "_task_id": "t",
                                   "_fetched_at": daily("x", 1, 1.0)["_fetched_at"]}])
    staged = stage("stock_daily", [daily("000001.SZ", 2, 10.0)])
    holder = hold_writer_lock(path, "stock_daily")
    try:
        proc = spawn("loader", path, "run")
        # The other task type's lock is free: it loads meanwhile, and status says what this one waits on.
        assert eventually(lambda: files_in(config.archive_dir) == [basic.name], 20), proc.log()
        st = json.loads(run_cli(path, "status", "--json").stdout)
        assert st["loader"]["running"] and st["loading"]["task_type"] == "stock_daily", st
        assert staged.exists() and files_in(config.quarantine_dir) == []
        assert not has_table(config, "stock_daily")
        holder.stop(10)
        assert eventually(lambda: files_in(config.archive_dir) == sorted([basic.name, staged.name]), 20), proc.log()
        assert proc.stop() == 0
    finally:
        holder.close()
    assert table(config, "stock_daily", "ts_code") == [("000001.SZ",)]
    assert query(config, f"SELECT count(*) FROM {MANIFEST}") == [(2,)]


def test_reload_cli_and_force(tmp_path):
    path = write_loader_config(tmp_path)
    config = loader_config(tmp_path)
    stage = Stage(config)
    stage("stock_daily", [daily("000001.SZ", 2, 10.0, minutes=1)])
    stage("stock_daily", [daily("000001.SZ", 2, 11.0, minutes=2)])
    loader = Loader(config)
    loader.run_once()
    loader.stop()
    old = str(config.archive_dir / "stock_daily" / "*" / "*000001.parquet")
    result = run_cli(path, "reload", old)
    assert result.returncode == 0, result.stderr
    assert "1 file(s) merged" in result.stdout and table(config, "stock_daily", "close") == [(11.0,)]
    result = run_cli(path, "reload", "--force", old)
    assert result.returncode == 0 and table(config, "stock_daily", "close") == [(10.0,)]


def test_the_duckdb_cli_reads_the_warehouse_and_the_staged_files(config, stage):
    stage("stock_daily", [daily("000001.SZ", 2, 10.0)])
    loader = Loader(config)
    loader.run_once()
    loader.stop()  # released: a person may open it now
    staged = stage("stock_daily", [daily("000002.SZ", 2, 20.0)])
    cli = duckdb_cli()
    # The duckdb CLI as `loader shell` opens it: read-only, a DuckLake attached with the installed extensions.
    out = subprocess.run([*shell_command(config.loader.database, cli), "-csv", "-c",
                          f"SELECT ts_code, close FROM stock_daily; SELECT count(*) AS n FROM {MANIFEST}"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert "000001.SZ,10.0" in out.stdout and "n\n1" in out.stdout
    out = subprocess.run([cli, "-csv", "-c", f"SELECT ts_code, close FROM '{staged.parent}/*.parquet';"
                          f" SELECT value FROM parquet_kv_metadata('{staged}') WHERE key = 'duckstage.task_type'"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert "000002.SZ,20.0" in out.stdout and "stock_daily" in out.stdout


def _many_files(config, seed, files, rows=300):
    """Overlapping keys and versions over many files, so order and dedup matter."""
    rng = random.Random(seed)
    stage = Stage(config)
    codes = [f"{i:06d}.SZ" for i in range(1, 60)]
    for n in range(files):
        chosen = {}
        for _ in range(rows):
            code, day = rng.choice(codes), rng.randint(1, 28)
            chosen[(code, day)] = daily(code, day, round(rng.uniform(1, 100), 2), minutes=rng.randint(0, 50),
                                        task=f"task-{n}")
        stage("stock_daily", list(chosen.values()))
        stage("stock_basic", [{"ts_code": codes[n % len(codes)], "symbol": codes[n % len(codes)][:6],
                               "name": f"name {n}", "_task_id": f"task-{n}",
                               "_fetched_at": daily("x", 1, 1, minutes=n)["_fetched_at"]}])


@pytest.mark.timeout(240)
@pytest.mark.parametrize("files", [pytest.param(50, id="quick"), pytest.param(200, id="soak", marks=pytest.mark.slow)])
def test_kill_9_at_random_moments_converges_to_a_crash_free_run(tmp_path, backend, files):
    # A DuckLake commit writes new data and delete files and catalog rows, several times a DuckDB
    # file's work, and each life connects anew (half a second of extension loading): fewer files,
    # longer first lives, for about the same number of kills.
    first = (0.5, 1.0)
    if backend.is_lake:
        files, first = files * 2 // 5, (1.0, 2.0)
    calm = loader_config(tmp_path / "calm")
    _many_files(calm, seed=7, files=files)
    path = write_loader_config(tmp_path / "crash", max_rows_per_transaction=800)
    crash = loader_config(tmp_path / "crash")
    shutil.copytree(calm.staging_dir, crash.staging_dir)  # the same sealed files for both runs
    loader = Loader(calm.with_loader(max_rows_per_transaction=800))
    while loader.run_once():
        pass
    loader.stop()
    expected = {t: table(calm, t, order="ALL") for t in ("stock_daily", "stock_basic")}

    total = len(files_in(crash.staging_dir))
    mid_work = kill_9_lives(path, crash.staging_dir, random.Random(11), 40, first)
    assert files_in(crash.staging_dir) == [], "not done after 40 lives"
    assert mid_work >= 1, "no kill landed while files were being loaded"
    assert files_in(crash.quarantine_dir) == []
    assert len(files_in(crash.archive_dir)) == total
    for name, rows in expected.items():
        assert table(crash, name, order="ALL") == rows
    assert query(crash, f"SELECT count(*), count(DISTINCT file) FROM {MANIFEST}") == [(total, total)]
