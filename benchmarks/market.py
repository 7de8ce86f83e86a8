"""The whole A-share market's history as a downloader fetches it, generated fast enough to benchmark with.

``stager.produce`` is the realistic producer (adjustment anchors, restatements,
bad rows) and makes a few hundred thousand rows a minute. A backfill of the
whole market is about 50M bar rows; this module makes them with numpy, a
task's columns at a time, in the shape Tushare returns them (``YYYYMMDD``
strings, NaN for missing numbers) as pyarrow Tables, one per call a
downloader makes:

- ``stock_daily``: one task per trade date, the whole market listed that day
  (``pro.daily(trade_date=...)``);
- ``daily_bar_qfq`` and ``daily_bar_none``: one task per stock, its whole
  history (``pro_bar(ts_code=..., adj='qfq' | None)``);
- ``balancesheet``, ``income``, ``cashflow``: one task per stock, every
  quarter since it listed.

Every key is new and appears once: an initial load. The calendar is the
weekdays from the first trade date (1990-12-19) to ``today``; listings grow
over the years so that 5,400 stocks hold about 3,100 trading days each on
average, as the real market does (about 16.7M rows per bar dataset).
"""

import datetime as dt

import numpy as np
import pyarrow as pa

FIRST_TRADE_DATE = dt.date(1990, 12, 19)
LISTING_SKEW = 0.5625  # list day = days * u**skew: mean history 36 % of the calendar, ~3,100 days
STATEMENT_FIELDS = {  # a few amounts per statement; the other declared columns stay NULL
    "balancesheet": ["total_share", "money_cap", "inventories", "total_cur_assets", "total_assets",
                     "total_cur_liab", "total_liab", "total_hldr_eqy_exc_min_int"],
    "income": ["basic_eps", "total_revenue", "revenue", "operate_profit", "total_profit", "income_tax",
               "n_income", "n_income_attr_p"],
    "cashflow": ["net_profit", "c_fr_sale_sg", "n_cashflow_act", "n_cashflow_inv_act", "n_cash_flows_fnc_act",
                 "c_cash_equ_end_period"],
}
BAR_TASK_TYPES = ("stock_daily", "daily_bar_qfq", "daily_bar_none")
STATEMENT_TASK_TYPES = tuple(STATEMENT_FIELDS)


def _ymd(days):
    """datetime64[D] -> Tushare's YYYYMMDD strings."""
    return pa.array(np.char.replace(np.datetime_as_string(days, unit="D"), "-", ""))


class Market:
    """``stocks`` stocks over the last ``years`` years (None: since 1990) up to ``today``."""

    def __init__(self, stocks=5400, years=None, today=None, seed=0):
        today = today or dt.date.today()
        first = FIRST_TRADE_DATE if years is None else max(FIRST_TRADE_DATE, today - dt.timedelta(days=365 * years))
        whole = np.arange(np.datetime64(FIRST_TRADE_DATE), np.datetime64(today) + 1)
        whole = whole[np.is_busday(whole)]
        rng = np.random.default_rng(seed)
        # Listing days over the whole history, so that a shorter window holds the recent part of it.
        listed = (len(whole) * rng.random(stocks) ** LISTING_SKEW).astype(np.int64)
        self.days = whole[whole >= np.datetime64(first)]
        offset = len(whole) - len(self.days)
        self.listed = np.maximum(listed - offset, 0)  # index into self.days
        self.ymd = np.char.replace(np.datetime_as_string(self.days, unit="D"), "-", "")  # Tushare's dates
        self.codes = np.array([f"{600000 + i:06d}.SH" if i < 2000 else f"{i - 2000:06d}.SZ" for i in range(stocks)])
        self.seed = seed

    # -- sizes ---------------------------------------------------------------------

    def bar_rows(self):
        """Rows of one bar dataset (each of stock_daily, daily_bar_qfq, daily_bar_none)."""
        return int((len(self.days) - self.listed).sum())

    def quarters(self, i):
        """Quarter ends since stock ``i`` listed (within the window), before the last day."""
        start = self.days[self.listed[i]].astype("datetime64[M]")
        ends = np.arange(start, self.days[-1].astype("datetime64[M]"), 1)
        ends = ends[(ends.astype(int) % 3) == 2]  # March, June, September, December
        return (ends + 1).astype("datetime64[D]") - 1

    def statement_rows(self):
        return sum(len(self.quarters(i)) for i in range(len(self.codes)))

    def rows(self, task_types):
        return sum(self.bar_rows() if t in BAR_TASK_TYPES else self.statement_rows() for t in task_types)

    # -- tasks -----------------------------------------------------------------------

    def tasks(self, task_types):
        """(task_type, table, params) in a downloader's order: dataset by dataset."""
        for task_type in task_types:
            if task_type == "stock_daily":
                yield from self._daily()
            elif task_type in ("daily_bar_qfq", "daily_bar_none"):
                yield from self._bars(task_type)
            else:
                yield from self._statements(task_type)

    def _prices(self, rng, n, walk):
        close = 10.0 * np.exp(np.cumsum(rng.normal(0, 0.02, n))) if walk else rng.uniform(3, 80, n)
        pre = close / (1 + rng.normal(0, 0.02, n))
        high = np.maximum(close, pre) * (1 + rng.uniform(0, 0.03, n))
        low = np.minimum(close, pre) * (1 - rng.uniform(0, 0.03, n))
        open_ = low + (high - low) * rng.random(n)
        vol = rng.uniform(1e3, 1e6, n)
        cols = {"open": open_, "high": high, "low": low, "close": close, "pre_close": pre,
                "change": close - pre, "pct_chg": (close / pre - 1) * 100, "vol": vol,
                "amount": vol * (low + high) / 2 / 10}
        return {k: np.round(v, 2) for k, v in cols.items()}

    def _daily(self):
        rng = np.random.default_rng(self.seed + 1)
        order = np.argsort(self.listed, kind="stable")
        listed_sorted = self.listed[order]
        for d in range(len(self.days)):
            n = int(np.searchsorted(listed_sorted, d, side="right"))
            if not n:
                continue
            ymd = str(self.ymd[d])
            cols = {"ts_code": pa.array(self.codes[order[:n]]), "trade_date": pa.array(np.full(n, ymd))}
            cols.update(self._prices(rng, n, walk=False))
            yield "stock_daily", pa.table(cols), {"trade_date": ymd}

    def _bars(self, task_type):
        rng = np.random.default_rng(self.seed + (2 if task_type == "daily_bar_qfq" else 3))
        for i, code in enumerate(self.codes):
            days = self.ymd[self.listed[i]:][::-1]  # pro_bar: newest first
            n = len(days)
            if not n:
                continue
            cols = {"ts_code": pa.array(np.full(n, code)), "trade_date": pa.array(days)}
            cols.update(self._prices(rng, n, walk=True))
            end = str(days[0])
            if task_type == "daily_bar_qfq":
                cols["adj_factor"] = np.round(np.linspace(1.0, 3.0, n)[::-1], 3)
            else:  # SDK >= 1.4.8: NaN on the oldest row of the fetch
                for k in ("pre_close", "change", "pct_chg"):
                    cols[k][-1] = np.nan
            yield task_type, pa.table(cols), {"ts_code": code, "end_date": end}

    def _statements(self, task_type):
        rng = np.random.default_rng(self.seed + hash(task_type) % 1000)
        fields = STATEMENT_FIELDS[task_type]
        for i, code in enumerate(self.codes):
            ends = self.quarters(i)
            n = len(ends)
            if not n:
                continue
            ann = ends + rng.integers(20, 110, n)
            cols = {"ts_code": pa.array(np.full(n, code)), "ann_date": _ymd(ann), "f_ann_date": _ymd(ann),
                    "end_date": _ymd(ends), "report_type": pa.array(np.full(n, "1")),
                    "comp_type": pa.array(np.full(n, "1")), "update_flag": pa.array(np.full(n, "1"))}
            for f in fields:
                cols[f] = np.round(rng.lognormal(18, 2, n), 2)
            yield task_type, pa.table(cols), {"ts_code": code}
