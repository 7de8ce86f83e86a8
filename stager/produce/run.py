"""The run: a downloader's fetches day by day, as batches in enqueue order."""

import random

from ..results import TaskType
from .bars import fetch_bars, has_unfetched_rows, step_day
from .calendar import trading_days
from .emit import Emitter
from .fields import STATEMENTS
from .statements import fetch_statements, statement_events, statement_rows
from .universe import draw_universe, fetch_stock_basic


def generate(stocks=5400, days=250, seed=0, bad_share=0.0, start="20240102", rows_per_task=1000, *,
             task_types=None, datasets=None, bar_every=20, bar_overlap=5, bar_share=1.0,
             qfq_refetch_days=120, retry_share=0.02, restate_share=0.05):
    """Yield the batches of ``days`` trading days of a downloader's work, in enqueue order.

    ``stocks`` listed stocks at the start (plus ~2%/year IPOs, ~1%/year
    delistings during the run, and 5% delisted long ago); ``days`` trading days
    from ``start`` (YYYYMMDD). ``rows_per_task`` caps whole-market fetches per
    task. ``task_types`` (names or TaskType) limits what is emitted without
    changing it, and so do ``datasets`` (a loaded configuration's): a task
    type they do not declare is left out, as the queue would refuse it.
    Bars: each of a ``bar_share`` of the stocks is fetched every ``bar_every``
    trading days over its new rows plus ``bar_overlap`` old ones; after an
    ex-date the qfq fetch covers the last ``qfq_refetch_days`` rows;
    ``retry_share`` of qfq fetches are followed by a late re-fetch of the
    previous window. ``restate_share`` of reports get a correction.
    """
    if stocks < 1 or days < 1 or rows_per_task < 1 or bar_every < 1:
        raise ValueError("stocks, days, rows_per_task and bar_every must be positive")
    if not 0.0 <= bad_share < 1.0:
        raise ValueError("bad_share must be in [0, 1)")
    wanted = set(TaskType) if task_types is None else {TaskType(t) for t in task_types}
    if datasets is not None:
        wanted = {t for t in wanted if t.value in datasets}
    rng = random.Random(seed)
    cal = trading_days(start, days)
    universe = draw_universe(rng, stocks, days, cal)
    emit = Emitter(seed, bad_share, rows_per_task, wanted)
    for s in universe:
        if rng.random() >= bar_share:
            s.bar_offset = None

    yield from fetch_stock_basic(emit, universe, when=0)
    events = statement_events(cal)
    reports = {}
    last_market_fetch = {}
    for di, day in enumerate(cal):
        rows = step_day(rng, universe, di, day)
        yield from emit.batches(TaskType.STOCK_DAILY, rows, {"trade_date": day})
        for s in universe:
            if s.bar_offset is not None and (di + s.bar_offset) % bar_every == 0 and has_unfetched_rows(s):
                yield from fetch_bars(emit, rng, s, cal, di, bar_overlap, qfq_refetch_days, retry_share)
        for period in events.get(di, ()):
            last_market_fetch[period] = day
            yield from fetch_statements(emit, seed, universe, period, day, reports, restate_share)
    yield from fetch_stock_basic(emit, universe, when=len(cal))
    # corrections published after the last whole-market fetch of their period: per ts_code
    last = cal[-1]
    for period, fetched_on in sorted(last_market_fetch.items()):
        for s in universe:
            rep = reports.get((s.code, period))
            if rep is not None and rep.correction and fetched_on < rep.correction <= last:
                found = statement_rows(seed, s, period, rep, last)
                for t in STATEMENTS:
                    if t in rep.corrected:
                        yield from emit.batches(t, found[t], {"ts_code": s.code, "period": period}, chunk=False)
