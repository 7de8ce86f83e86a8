"""Enqueueing batches as ``process_fetched_data`` tasks, and the ``stager produce`` options."""

import datetime as dt

from duckstage.staging import utcnow

from ..results import TaskType


def produce(process_fetched_data, batches, *, stamp=True, clock=utcnow, progress=None):
    """Enqueue every batch: ``process_fetched_data(batch.task_type, batch.data, **batch.params)``.

    With ``stamp`` each task also gets a ``fetched_at`` strictly later than the
    previous one's, so the fetch-time version order is the enqueue order even
    when the clock stalls or steps back (a model of the warehouse that ranks
    versions by position in ``batches`` relies on it).
    ``progress(batch, counts)`` is called after each enqueue. Returns
    ``{task type: {"tasks", "rows", "bad_rows"}}``.
    """
    counts = {}
    last = None
    for batch in batches:
        params = dict(batch.params)
        if stamp:
            now = clock()
            if last is not None and now <= last:
                now = last + dt.timedelta(microseconds=1)
            last = now
            params["fetched_at"] = now.isoformat()
        process_fetched_data(batch.task_type, batch.data, **params)
        c = counts.setdefault(TaskType(batch.task_type).value, {"tasks": 0, "rows": 0, "bad_rows": 0})
        c["tasks"] += 1
        c["rows"] += batch.rows
        c["bad_rows"] += len(batch.bad_rows)
        if progress is not None:
            progress(batch, counts)
    return counts


# For ``stager produce``: (flag, generate() keyword, type, default, help).
PRODUCE_OPTIONS = (
    ("--stocks", "stocks", int, 5400, "Stocks listed at the start (plus IPOs, delistings)."),
    ("--days", "days", int, 250, "Trading days to simulate."),
    ("--seed", "seed", int, 0, "Random seed: the same seed enqueues the same data."),
    ("--bad-share", "bad_share", float, 0.0, "Share of rows replaced by bad ones (0..1)."),
    ("--start", "start", str, "20240102", "First day, YYYYMMDD (moved to a trading day)."),
    ("--rows-per-task", "rows_per_task", int, 1000, "Rows per task of whole-market fetches."),
)

PRODUCE_HELP = """Enqueue a synthetic A-share downloader's work as process_fetched_data tasks.

Seven task types shaped like Tushare's output: stock_basic, daily per
trade_date, pro_bar qfq and unadjusted per ts_code, and the three statements
per period with restated reports. Deterministic for a seed; --bad-share mixes
in bad rows that must end in the dead letter.

Example:

    stager produce --stocks 500 --days 20 --seed 1 --bad-share 0.01
"""
