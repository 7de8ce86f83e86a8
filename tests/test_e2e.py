"""End to end: ``python -m stager.demo`` (producer, stager and loader as real
processes) against what the synthetic producer generated, row for row.

The warehouse is compared with ``expected_rows(generate(...))`` on every
declared column of every task type; the dead letter must hold exactly the
injected bad rows; nothing may be quarantined, left in staging or left in the
Huey queue, its leases or its result store. The checks live with the oracle
(``tests/oracle.py``); ``tests/test_soak.py`` runs them under ``kill -9``.
"""

import subprocess
import sys

import duckdb

from duckstage.config import load_config
from stager.produce import generate
from tests.helpers import REPO, write_config
from tests.oracle import (assert_archive_is_the_manifest, assert_deadletter_is_injected, assert_nothing_left,
                          assert_warehouse_equals, expected_rows, injected_bad_rows, warehouse_tables)

# 40 stocks over 6 trading days from 2024-04-25: the whole-market statement
# fetches after the 2023 annual and 2024 Q1 deadlines (2024-04-30) fall in the
# window, so all seven task types carry rows, and a 2% bad share injects every
# kind of bad row (bad number, missing ts_code, bad date, bad ts_code).
DEMO = dict(stocks=40, days=6, seed=3, bad_share=0.02, start="20240425")


def run_demo(config_path, stocks, days, seed, bad_share, start, timeout=120):
    """``python -m stager.demo`` as a user runs it; the finished process."""
    args = [sys.executable, "-m", "stager.demo", "--config", str(config_path), "--stocks", str(stocks),
            "--days", str(days), "--seed", str(seed), "--bad-share", str(bad_share), "--start", start]
    return subprocess.run(args, cwd=str(REPO), capture_output=True, text=True, timeout=timeout)


def generated(stocks, days, seed, bad_share, start):
    return generate(stocks=stocks, days=days, seed=seed, bad_share=bad_share, start=start)


def test_demo_warehouse_equals_what_the_producer_generated(tmp_path):
    path = write_config(tmp_path)
    config = load_config(path)
    done = run_demo(path, **DEMO)
    assert done.returncode == 0, done.stdout + done.stderr

    expected = expected_rows(generated(**DEMO), config.datasets)
    assert set(expected) == set(config.datasets.names)  # the arguments still exercise every task type
    assert_warehouse_equals(config, expected)

    injected = injected_bad_rows(generated(**DEMO))
    kinds = {bad.kind for bad in injected[1].values()}
    assert kinds == {"bad_number", "missing_ts_code", "bad_date", "bad_ts_code"}
    assert_deadletter_is_injected(config, injected)
    assert_nothing_left(config)
    assert_archive_is_the_manifest(config)


def test_demo_run_twice_on_the_same_data_changes_no_row(tmp_path):
    small = dict(DEMO, stocks=15, days=3)
    path = write_config(tmp_path)
    config = load_config(path)
    first = run_demo(path, **small)
    assert first.returncode == 0, first.stdout + first.stderr
    before = warehouse_tables(config)
    assert sum(len(rows) for _, rows in before.values()) > 0

    again = run_demo(path, **small)  # the same batches, enqueued again with later fetch times
    assert again.returncode == 0, again.stdout + again.stderr
    assert warehouse_tables(config) == before
    assert_warehouse_equals(config, expected_rows(generated(**small), config.datasets))
    assert_nothing_left(config)
    with duckdb.connect(str(config.loader.database), read_only=True) as con:
        loads = con.execute("SELECT max(loads) FROM _duckstage_manifest").fetchone()[0]
    assert loads == 1  # the rerun's rows came in new files; no file was loaded twice
