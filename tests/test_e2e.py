"""End to end: ``python -m stager.demo`` (producer, stager and loader as real
processes) against what the synthetic producer generated, row for row.

The warehouse is compared with ``expected_rows(generate(...))`` on every
declared column of every task type; the dead letter must hold exactly the
injected bad rows; nothing may be quarantined, left in staging or left in the
Huey queue, its leases or its result store. ``tests/test_soak.py`` reuses the
checks below under ``kill -9``.
"""

import math
import subprocess
import sys
from collections import Counter

import duckdb
import pytest

from duckstage.config import load_config
from stager.deadletter import UNKNOWN, read_records
from stager.produce import generate
from stager.tasks import build_huey
from tests.helpers import REPO, write_config
from tests.oracle import expected_rows

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


# -- the warehouse -------------------------------------------------------------

def warehouse_tables(config):
    """{task type: (column types, rows)} of the declared columns, sorted by primary key, read-only."""
    con = duckdb.connect(str(config.loader.database), read_only=True)
    try:
        out = {}
        for name in config.datasets.names:
            ds = config.datasets[name]
            types = dict(con.execute(
                "SELECT column_name, data_type FROM information_schema.columns"
                " WHERE table_schema = 'main' AND table_name = ?", [name]).fetchall())
            if not types:
                continue
            cols = ", ".join(f'"{c.name}"' for c in ds.columns)
            pk = ", ".join(f'"{c}"' for c in ds.primary_key)
            rows = con.execute(f'SELECT {cols} FROM "{name}" ORDER BY {pk}').fetchall()
            out[name] = ({c.name: types.get(c.name) for c in ds.columns}, rows)
        return out
    finally:
        con.close()


def assert_warehouse_equals(config, expected):
    """Every task type's table equals ``expected`` ({task type: pyarrow.Table}) row for row.

    Floats are compared exactly: a value goes from the producer's Python float
    to Arrow float64, Parquet DOUBLE and DuckDB DOUBLE with no arithmetic on the
    way, so any difference, even in the last bit, is a bug (a lossy cast, a
    text round trip). NaN must have become NULL (Tushare's "missing"); a NaN
    left in the warehouse compares unequal to the expected None and fails.
    Dates are compared as ``datetime.date``, not as text.
    """
    actual = warehouse_tables(config)
    for name in config.datasets.names:
        ds = config.datasets[name]
        want = expected[name].to_pylist() if name in expected else []
        want = [tuple(r[c.name] for c in ds.columns) for r in want]
        types, got = actual.get(name, ({}, []))
        if want:
            assert types == {c.name: c.type for c in ds.columns}, f"{name}: column types"
        assert len(got) == len(want), f"{name}: {len(got)} warehouse rows, {len(want)} expected"
        for g, w in zip(got, want):
            if g != w:
                diff = {c.name: (gv, wv) for c, gv, wv in zip(ds.columns, g, w) if not _same(gv, wv)}
                key = {k: w[[c.name for c in ds.columns].index(k)] for k in ds.primary_key}
                pytest.fail(f"{name} {key}: (warehouse, expected) differ in {diff}")


def _same(a, b):
    return a == b and type(a) is type(b)


# -- the dead letter -----------------------------------------------------------

def _normal(row):
    """A row as sent, comparable with its dead-letter copy: missing and null
    values dropped (a list row may lack a key the dict shape sends as None;
    NaN is stored as the text 'nan')."""
    def missing(v):
        return v is None or v == "nan" or (isinstance(v, float) and math.isnan(v))
    return tuple(sorted((k, repr(v)) for k, v in row.items() if not missing(v)))


def injected_bad_rows(batches):
    """Counter of (task type, normalized row) for every injected bad row, and {that key: BadRow}."""
    counts, by_key = Counter(), {}
    for batch in batches:
        for bad in batch.bad_rows:
            key = (batch.task_type.value, _normal(bad.row))
            counts[key] += 1
            by_key[key] = bad
    return counts, by_key


def deadlettered_rows(config):
    """Counter of (task type, normalized row) in the dead letter, and the records by that key."""
    counts, records = Counter(), {}
    for rec in read_records(config.deadletter_dir):
        key = (rec["task_type"], _normal(rec["row"]))
        counts[key] += 1
        records.setdefault(key, []).append(rec)
    return counts, records


def assert_deadletter_is_injected(config, injected, exactly=True):
    """Every dead-lettered row was injected as bad, refused for its injected fault.

    ``exactly``: and every injected row is there once. Without it (after a
    kill -9 a task may run twice and write its refused rows twice) each
    injected row must be there at least once.
    """
    want, bad_rows = injected
    got, records = deadlettered_rows(config)
    assert not (config.deadletter_dir / UNKNOWN).exists()
    not_injected = [records[k][0] for k in got if k not in want]
    assert not not_injected, f"{len(not_injected)} dead-lettered rows were not injected, e.g. {not_injected[:3]}"
    missing = [bad_rows[k] for k in want if got[k] < want[k]]
    assert not missing, f"{len(missing)} injected bad rows are not in the dead letter, e.g. {missing[:3]}"
    if exactly:
        assert got == want
    for key, recs in records.items():
        bad = bad_rows[key]
        for rec in recs:
            assert rec["reason"].startswith(bad.column + ":"), (bad, rec["reason"])
            assert rec["task_id"]


# -- what is left over -----------------------------------------------------------

def huey_state(config):
    """Tasks (queued or leased), leases, results and scheduled tasks left in the Huey file."""
    huey, _ = build_huey(config)
    try:
        s = huey.storage
        tasks = s.sql("select count(*) from task where queue = ?", (s.name,), results=True)[0][0]
        return {"tasks": tasks, "leases": s.lease_count(), "results": s.result_store_size(),
                "scheduled": s.schedule_size()}
    finally:
        huey.storage.close()


def files_under(folder):
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def assert_nothing_left(config):
    assert huey_state(config) == {"tasks": 0, "leases": 0, "results": 0, "scheduled": 0}
    assert files_under(config.staging_dir) == []  # neither sealed files nor .tmp leftovers
    assert files_under(config.quarantine_dir) == []


def assert_archive_is_the_manifest(config):
    """Every archived file was committed (is in the manifest) and every manifest file was archived."""
    archived = sorted(p.name for p in files_under(config.archive_dir))
    con = duckdb.connect(str(config.loader.database), read_only=True)
    try:
        manifest = sorted(r[0] for r in con.execute("SELECT file FROM _duckstage_manifest").fetchall())
    finally:
        con.close()
    assert archived == manifest


# -- the tests ------------------------------------------------------------------

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
