"""``loader asof TABLE DATE [--where SQL] [--output FILE]``: the same answer as ``<table>_asof``,
printed or exported, on every backend; beside a running loader; and one-line refusals."""

import subprocess
import sys

import duckdb
import pytest

from loader.warehouse import Warehouse
from tests.helpers import hold_database, release, wait_for
from tests.history.helpers import known_on, load, statement
from tests.loader.helpers import Stage, loader_config, run_cli, write_loader_config

A, B = "600000.SH", "000001.SZ"


def _two_reports(stage):
    return [stage("income", [statement(A, "1", "2024-03-29", 1.0, fetched="2024-04-01"),
                             statement(B, "1", "2024-04-10", 2.0, fetched="2024-04-11")]),
            stage("income", [statement(A, "0", "2024-03-29", 1.0, fetched="2024-05-02"),
                             statement(A, "1", "2024-04-26", 1.2, fetched="2024-05-02")])]


def test_it_prints_and_exports_what_the_macro_answers(tmp_path, config, database, stage, warehouse):
    load(warehouse, config, _two_reports(stage))
    expected = known_on(warehouse, "income", "2024-04-25", "ts_code, basic_eps, update_flag, _valid_from")
    warehouse.close()  # a DuckDB file opens in one process at a time
    path = write_loader_config(tmp_path, database=database)

    shown = run_cli(path, "asof", "income", "20240425")
    assert shown.returncode == 0, shown.stderr
    assert f"│ {A} │" in shown.stdout and f"│ {B} │" in shown.stdout
    assert "2 row(s) of income as known on 2024-04-25" in shown.stdout
    one = run_cli(path, "asof", "income", "2024-04-25", "--where", f"ts_code = '{B}'")
    assert one.returncode == 0 and "1 row(s)" in one.stdout and A not in one.stdout, one.stdout + one.stderr

    for suffix, read in ((".parquet", "read_parquet"), (".csv", "read_csv")):
        out = tmp_path / f"known{suffix}"
        done = run_cli(path, "asof", "income", "2024-04-25", "--output", str(out))
        assert done.returncode == 0, done.stderr
        assert f"2 row(s) of income as known on 2024-04-25 written to {out}" in done.stdout
        got = duckdb.sql(f"SELECT ts_code, basic_eps, update_flag::VARCHAR, _valid_from::DATE"
                         f" FROM {read}('{out}') ORDER BY ALL").fetchall()
        assert got == expected
    assert sorted(p.name for p in tmp_path.glob("*known*")) == ["known.csv", "known.parquet"]  # no temporary left


@pytest.mark.parametrize("args, expected", [
    (["incomes", "2024-04-25"], "TABLE: expected a table with history declared in"),
    (["stock_daily", "2024-04-25"], "TABLE: stock_daily keeps no history"),
    (["stock_basic", "2024-04-25"], "TABLE: stock_basic has no history in the warehouse yet"),
    (["income", "2024-02-30"], "DATE: expected YYYY-MM-DD or YYYYMMDD, got '2024-02-30'"),
    (["income", "yesterday"], "DATE: expected YYYY-MM-DD or YYYYMMDD, got 'yesterday'"),
    (["income", "2024-04-25", "--where", "ts_code = "], "--where: DuckDB refused 'ts_code = ': Parser Error"),
    (["income", "2024-04-25", "--where", "no_such_column > 1"], "--where: DuckDB refused"),
    (["income", "2024-04-25", "--output", "known.xlsx"], "--output: expected a file ending in .parquet or .csv"),
    (["income", "2024-04-25", "--output", "no/such/folder/known.csv"], "--output: cannot write"),
    (["income"], "Missing argument 'DATE'"),
])
def test_a_wrong_request_is_refused_in_one_line_with_exit_2(tmp_path, args, expected):
    config = loader_config(tmp_path)
    wh = Warehouse(config.loader.database).open()
    try:
        load(wh, config, _two_reports(Stage(config)))
    finally:
        wh.close()
    done = run_cli(write_loader_config(tmp_path), "asof", *args)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert expected in done.stderr, done.stderr


def test_a_warehouse_that_does_not_exist_yet_is_named(tmp_path):
    done = run_cli(write_loader_config(tmp_path), "asof", "income", "2024-04-25")
    assert done.returncode == 2 and "does not exist yet; run the loader first" in done.stderr, done.stderr
    assert not (tmp_path / "data" / "warehouse.duckdb").exists()


@pytest.mark.parametrize("database", ["ducklake-sqlite", "ducklake-postgres"], indirect=True)
def test_it_answers_while_loader_run_writes_the_lake(tmp_path, database, config, stage, spawn):
    path = write_loader_config(tmp_path, database=database)
    loader = spawn("loader", path, "run")
    first, second = _two_reports(stage)
    wait_for(lambda: not first.exists() and not second.exists(), 60, message=f"the loader to load; {loader.log_path}")

    third = stage("income", [statement("600004.SH", "1", "2024-04-20", 3.0, fetched="2024-04-21")])
    out = tmp_path / "known.parquet"
    done = run_cli(path, "asof", "income", "2024-04-25", "--where", f"ts_code <> '{B}'", "--output", str(out))
    assert done.returncode == 0, done.stderr
    assert (A, 1.0) in duckdb.sql(f"SELECT ts_code, basic_eps FROM '{out}'").fetchall()  # the original, not 1.2
    assert loader.proc.poll() is None, loader.log()
    wait_for(lambda: not third.exists(), 60, message=f"the loader to go on loading; {loader.log_path}")
    assert loader.stop() == 0


@pytest.mark.parametrize("database", ["duckdb"], indirect=True)
def test_on_a_duckdb_file_held_by_another_process_it_waits_and_says_so(tmp_path, config, stage, warehouse):
    load(warehouse, config, _two_reports(stage))
    warehouse.close()
    path = write_loader_config(tmp_path)
    holder = hold_database(config.loader.database)
    err = tmp_path / "asof.err"
    with open(err, "w") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "loader", "--config", str(path), "asof", "income",
                                 "2024-04-25"], stdout=subprocess.PIPE, stderr=stderr, text=True)
    try:
        wait_for(lambda: "database busy, retry" in err.read_text(), 30, message="asof to say it waits")
        assert proc.poll() is None
    finally:
        release(holder)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, err.read_text()
    assert "2 row(s) of income as known on 2024-04-25" in out
