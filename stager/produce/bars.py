"""Daily bars: the day-by-day price simulation and the fetches of it.

``stock_daily`` comes from ``step_day`` per trade date; ``daily_bar_qfq`` and
``daily_bar_none`` are pro_bar fetches per ts_code over a window of the
history ``step_day`` records.
"""

import math
import statistics

from ..results import TaskType

NAN = float("nan")
# standard normal quantiles: a table draw is ~5x cheaper than random.gauss
_Z = [statistics.NormalDist().inv_cdf((i + 0.5) / 4096) for i in range(4096)]
_HALF_Z = [abs(z) for z in _Z]
# A stock's history has one row per trading day: day index, open, high, low,
# close, pre_close (fen), vol (0.01 lot), amount (thousand CNY), adj_factor;
# all exact in a double.
HIST_WIDTH = 9


def limit_prices(pre, limit):
    """The limit-up and limit-down prices (fen) for reference price ``pre`` (fen), ``limit`` in %.

    The exchanges round pre * (1 +- limit) half up to the fen on the exact
    decimal product. Integer arithmetic gets that; a binary float does not
    (0.7 is stored below 7/10, so 45 fen * 0.7 = 31.5 would round to 31).
    A limit-down price is at least 1 fen.
    """
    return (pre * (100 + limit) + 50) // 100, (pre * (100 - limit) + 50) // 100 or 1


def step_day(rng, universe, di, day):
    """Advance every trading stock by one day; return the day's daily rows.

    Prices are kept in integer fen (cents), so a price is exactly the float of
    its 2-dp decimal and limit prices are exact (``limit_prices``).
    """
    year = int(day[:4])
    month = int(day[4:6])
    hazard = 0.75 / 85 if 5 <= month <= 8 else 0.08 / 160
    rand, bits, z, hz, exp = rng.random, rng.getrandbits, _Z, _HALF_Z, math.exp
    rows = []
    append = rows.append
    for s in universe:
        if di < s.list_idx or di >= s.delist_idx:
            continue
        if s.susp:
            s.susp -= 1
            continue
        if di > s.list_idx and rand() < 0.002:
            s.susp = int(rand() * 10)
            continue
        pre = s.close
        if s.paid_year != year and di > s.list_idx and rand() < hazard:
            s.paid_year = year
            div = pre * (0.005 + 0.035 * rand())  # cash dividend, fen per share
            bonus = 0.0 if rand() > 0.12 else (0.2, 0.3, 0.4, 0.5, 1.0)[int(rand() * 5)]
            ref = int((pre - div) / (1 + bonus) + 0.5)  # ex-rights reference price
            if ref >= 50:
                s.adj = round(s.adj * pre / ref, 3)
                s.ex_since_fetch = True
                pre = ref
        up, dn = limit_prices(pre, s.limit)
        sig = s.sigma
        r = bits(60)  # five 12-bit draws from the normal table
        ret = 0.0003 + sig * z[r & 4095]
        c = int(pre * (1 + ret) + 0.5)
        c = up if c > up else dn if c < dn else c
        o = int(pre * (1 + 0.4 * sig * z[(r >> 12) & 4095]) + 0.5)
        o = up if o > up else dn if o < dn else o
        hi = int((o if o > c else c) * (1 + 0.5 * sig * hz[(r >> 24) & 4095]) + 0.5)
        if hi > up:
            hi = up
        lo = int((c if o > c else o) * (1 - 0.5 * sig * hz[(r >> 36) & 4095]) + 0.5)
        if lo < dn:
            lo = dn
        vol = int(s.vol_base * exp(0.35 * z[r >> 48] + 8.0 * (ret if ret > 0 else -ret)))  # 0.01 lot
        # thousand CNY = vwap (fen) / 100 * vol (0.01 lot = shares) / 1000, to 3 dp
        amount = int((lo + (hi - lo) * (0.3 + 0.4 * rand())) * vol / 100 + 0.5) / 1000
        x = (c - pre) * 1e6 / pre
        s.close = c
        s.hist.extend((di, o, hi, lo, c, pre, vol, amount, s.adj))
        append({"ts_code": s.code, "trade_date": day, "open": o / 100, "high": hi / 100, "low": lo / 100,
                "close": c / 100, "pre_close": pre / 100, "change": (c - pre) / 100,
                "pct_chg": int(x + 0.5 if x >= 0 else x - 0.5) / 10000, "vol": vol / 100, "amount": amount})
    return rows


def has_unfetched_rows(s):
    return len(s.hist) > s.fetched_to * HIST_WIDTH


def fetch_bars(emit, rng, s, cal, di, overlap, refetch_days, retry_share):
    n = len(s.hist) // HIST_WIDTH
    start_i = max(0, s.fetched_to - overlap)
    qfq_start = max(0, n - refetch_days) if s.ex_since_fetch and s.fetched_to else start_i
    qfq_start = min(qfq_start, start_i)
    end_date = cal[di]
    yield from emit.batches(TaskType.DAILY_BAR_QFQ, _qfq_rows(s, cal, qfq_start, n),
                            _bar_params(s, cal, qfq_start, end_date, qfq=True), chunk=False)
    yield from emit.batches(TaskType.DAILY_BAR_NONE, _none_rows(s, cal, start_i, n),
                            _bar_params(s, cal, start_i, end_date, qfq=False), chunk=False)
    if s.prev_window is not None and rng.random() < retry_share:
        # a failed fetch retried late: an older anchor arrives after a newer one
        p_start, p_end, p_date = s.prev_window
        yield from emit.batches(TaskType.DAILY_BAR_QFQ, _qfq_rows(s, cal, p_start, p_end),
                                _bar_params(s, cal, p_start, p_date, qfq=True), chunk=False)
    s.prev_window = (qfq_start, n, end_date)
    s.fetched_to, s.ex_since_fetch = n, False


def _bar_params(s, cal, start_i, end_date, qfq):
    params = {"ts_code": s.code, "start_date": cal[int(s.hist[start_i * HIST_WIDTH])], "end_date": end_date}
    if qfq:
        params.update(adj="qfq", adjfactor=True)
    return params


def _window(s, start_i, end_i):
    """History rows start_i..end_i-1 as 9-tuples, oldest first."""
    it = iter(s.hist[start_i * HIST_WIDTH:end_i * HIST_WIDTH])
    return zip(it, it, it, it, it, it, it, it, it)


def _qfq_rows(s, cal, start_i, end_i):
    """pro_bar(adj='qfq', adjfactor=True): newest first, anchored at the window's last row.

    price * adj_factor / adj_factor(anchor), to 2 dp; change recomputed from the
    rounded prices and left unrounded, pct_chg to 2 dp, as the SDK does.
    """
    code = s.code
    anchor = s.hist[end_i * HIST_WIDTH - 1]
    rows = []
    append = rows.append
    for di, o, h, l, c, p, v, a, f in _window(s, start_i, end_i):
        k = f / anchor
        close, pre = int(c * k + 0.5) / 100, int(p * k + 0.5) / 100
        change = close - pre
        append({"ts_code": code, "trade_date": cal[int(di)], "open": int(o * k + 0.5) / 100,
                "high": int(h * k + 0.5) / 100, "low": int(l * k + 0.5) / 100, "close": close,
                "pre_close": pre, "change": change, "pct_chg": round(change / pre * 100, 2),
                "vol": v / 100, "amount": a, "adj_factor": f})
    rows.reverse()
    return rows


def _none_rows(s, cal, start_i, end_i):
    """pro_bar(adj=None), SDK >= 1.4.8: pre_close is the previous row's close, NaN on the oldest."""
    code = s.code
    rows = []
    append = rows.append
    pre = change = pct = NAN
    for di, o, h, l, c, p, v, a, f in _window(s, start_i, end_i):
        close = c / 100
        if pre == pre:
            change = close - pre
            pct = round(change / pre * 100, 2)  # the SDK's '%.2f' formatting
        append({"ts_code": code, "trade_date": cal[int(di)], "open": o / 100, "high": h / 100,
                "low": l / 100, "close": close, "pre_close": pre, "change": change, "pct_chg": pct,
                "vol": v / 100, "amount": a})
        pre = close
    rows.reverse()
    return rows
