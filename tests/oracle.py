"""What the warehouse must hold after the synthetic producer's batches: the tests' oracle.

Written independently of the stager (its own cleaning, DuckDB for the
version order), so comparing the warehouse with it checks the whole pipeline.
Test and benchmark code only: it needs DuckDB and the datasets of a loaded
configuration, which the caller passes.
"""

import datetime as dt
from collections import defaultdict

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from stager.results import TaskType


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
