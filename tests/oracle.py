"""What the warehouse must hold after the synthetic producer's batches: the tests' oracle,
and the checks that hold a finished run (warehouse, dead letter, leftovers) against it.

Written independently of the stager (its own cleaning, DuckDB for the
version order), so comparing the warehouse with it checks the whole pipeline.
Test and benchmark code only: it needs DuckDB and the datasets of a loaded
configuration, which the caller passes.
"""

import datetime as dt
import math
from collections import Counter, defaultdict

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from loader import lake
from stager.deadletter import UNKNOWN, read_records
from stager.results import TaskType
from stager.tasks import build_huey


def expected_rows(batches, datasets):
    """The warehouse the batches must produce: ``{task type: pyarrow.Table}``.

    Every good row (injected bad rows left out), cleaned as the stager does
    (YYYYMMDD -> DATE, NaN -> NULL, missing declared columns -> NULL), reduced to
    one row per primary key by the dataset's version_order, where _fetched_at is
    the batch's position (``produce`` stamps fetch times in that order) and
    _anchor_date the batch's anchor parameter. Declared columns only, sorted by
    primary key. ``batches`` may be a fresh ``generate(...)`` with the same
    arguments: it is deterministic. ``datasets``: a loaded configuration's
    (``config.datasets``), the declarations the stager and the loader use.
    """
    parts = defaultdict(list)  # task type -> cleaned tables of ~16k rows (pending dicts are what costs memory)
    pending = defaultdict(lambda: ([], [], []))  # task type -> rows, their batch position, their anchor

    def flush(name):
        rows, seqs, anchors = pending.pop(name)
        table = clean(rows, datasets[name]).append_column("_seq", pa.array(seqs, pa.int64()))
        if datasets[name].anchor_param:
            table = table.append_column("_anchor", pa.array(anchors, pa.date32()))
        parts[name].append(table)

    for seq, batch in enumerate(batches):
        ds = datasets[TaskType(batch.task_type).value]
        bad = {b.index for b in batch.bad_rows}
        rows = [r for i, r in enumerate(batch.row_dicts()) if i not in bad]
        if not rows:
            continue
        anchor = None
        if ds.anchor_param:
            raw = batch.params.get(ds.anchor_param) or max(r[ds.anchor_column] for r in rows)
            anchor = dt.datetime.strptime(raw, "%Y%m%d").date()
        buf_rows, buf_seqs, buf_anchors = pending[ds.name]
        buf_rows.extend(rows)
        buf_seqs.extend([seq] * len(rows))
        buf_anchors.extend([anchor] * len(rows))
        if len(buf_rows) >= 16384:
            flush(ds.name)
    for name in list(pending):
        flush(name)
    out = {}
    con = duckdb.connect()
    try:
        for name, tables in parts.items():
            ds = datasets[name]
            con.register("src", pa.concat_tables(tables))
            rename = {"_fetched_at": "_seq", "_anchor_date": "_anchor"}
            order = ", ".join(f'"{rename.get(c, c)}" DESC NULLS LAST' for c in ds.version_order)
            pk = ", ".join(f'"{c}"' for c in ds.primary_key)
            drop = "_seq, _anchor" if ds.anchor_param else "_seq"
            out[name] = con.sql(
                f"SELECT * EXCLUDE ({drop}) FROM src QUALIFY row_number() OVER "
                f"(PARTITION BY {pk} ORDER BY {order}) = 1 ORDER BY {pk}").to_arrow_table()
            con.unregister("src")
    finally:
        con.close()
    return out


def clean(rows, dataset):
    """Good rows -> a table of the dataset's declared columns, typed as the warehouse stores them."""
    raw = pa.Table.from_pylist(rows)
    arrays = []
    for col in dataset.columns:
        if col.name not in raw.column_names:
            arrays.append(pa.nulls(raw.num_rows, col.arrow_type))
            continue
        a = raw[col.name]
        if col.type == "DATE":
            a = pc.cast(pc.strptime(pc.cast(a, pa.string()), format="%Y%m%d", unit="s"), pa.date32())
        elif col.type == "DOUBLE":
            a = pc.cast(a, pa.float64())
            a = pc.if_else(pc.is_nan(a), pa.scalar(None, pa.float64()), a)
        else:
            a = pc.cast(a, col.arrow_type)
        arrays.append(a)
    return pa.table(arrays, names=[c.name for c in dataset.columns])


# == checking a run against it ==================================================

# -- the warehouse -------------------------------------------------------------

def warehouse_tables(config):
    """{task type: (column types, rows)} of the declared columns, sorted by primary key, read-only."""
    con = lake.connect(config.loader.database, read_only=True)
    try:
        out = {}
        for name in config.datasets.names:
            ds = config.datasets[name]
            types = dict(con.execute(
                "SELECT column_name, data_type FROM information_schema.columns"
                " WHERE table_catalog = current_database() AND table_schema = 'main' AND table_name = ?",
                [name]).fetchall())
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


def hosts(config):
    """A configuration, or a list of them (several hosts, each with its own data folder), as a list."""
    return list(config) if isinstance(config, (list, tuple)) else [config]


def deadlettered_rows(config):
    """Counter of (task type, normalized row) in the dead letter(s), and the records by that key."""
    counts, records = Counter(), {}
    for host in hosts(config):
        for rec in read_records(host.deadletter_dir):
            key = (rec["task_type"], _normal(rec["row"]))
            counts[key] += 1
            records.setdefault(key, []).append(rec)
    return counts, records


def assert_deadletter_is_injected(config, injected, exactly=True):
    """Every dead-lettered row was injected as bad, refused for its injected fault.

    ``config``: one, or the list of every host's (their dead letters together).
    ``exactly``: and every injected row is there once. Without it (after a
    kill -9 a task may run twice and write its refused rows twice) each
    injected row must be there at least once.
    """
    want, bad_rows = injected
    got, records = deadlettered_rows(config)
    assert not any((host.deadletter_dir / UNKNOWN).exists() for host in hosts(config))
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
    """Tasks, leases, results and scheduled tasks left in the configuration's queue, SQLite or Redis.

    On SQLite ``tasks`` counts queued and leased tasks (a leased task stays in
    the task table); on Redis a leased task has left the queue for its stager's
    lease hash, so ``tasks`` counts the queued ones and ``leases`` every entry
    of every lease hash, registered stager or not.
    """
    huey, _ = build_huey(config)
    try:
        s = huey.storage
        if config.huey.backend == "redis":
            tasks = s.queue_size()
            leases = sum(s.conn.hlen(key) for key in s.conn.scan_iter(match=s.leases_key("*")))
        else:
            tasks = s.sql("select count(*) from task where queue = ?", (s.name,), results=True)[0][0]
            leases = s.lease_count()
        return {"tasks": tasks, "leases": leases, "results": s.result_store_size(), "scheduled": s.schedule_size()}
    finally:
        huey.storage.close()


def files_under(folder):
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def assert_nothing_left(config):
    """The queue is empty, and so are staging and quarantine; ``config``: one, or every host's."""
    for host in hosts(config):
        assert huey_state(host) == {"tasks": 0, "leases": 0, "results": 0, "scheduled": 0}
        assert files_under(host.staging_dir) == []  # neither sealed files nor .tmp leftovers
        assert files_under(host.quarantine_dir) == []


def assert_archive_is_the_manifest(config):
    """Every archived file was committed (is in the manifest) and every manifest file was archived.

    ``config``: one, or the list of every host's loading into one warehouse (their archives together).
    """
    archived = sorted(p.name for host in hosts(config) for p in files_under(host.archive_dir))
    con = lake.connect(hosts(config)[0].loader.database, read_only=True)
    try:
        manifest = sorted(r[0] for r in con.execute("SELECT file FROM _duckstage_manifest").fetchall())
    finally:
        con.close()
    assert archived == manifest
