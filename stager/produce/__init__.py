"""Synthetic producer: a seeded, realistic China A-share downloader's work.

``generate`` simulates what a Tushare-based downloader fetches over a run of
trading days and yields it as ``Batch`` objects, in the order a downloader
would enqueue them; ``produce`` enqueues them through the Huey task
``process_fetched_data``. Generation is pure (no Huey, no I/O, no
configuration) and deterministic: the same arguments give the same batches,
byte for byte.

What the data looks like (the Tushare facts behind it are in docs/tushare.md):

- a trading calendar without weekends and SSE holidays (exact for 2019-2026,
  fixed-date holidays only for other years) -- ``calendar``;
- ts_codes of the three exchanges (SH 600/601/603/605/688, SZ
  000/001/002/003/300/301, BJ 920 and legacy 43/83/87), a few ST names;
  ``stock_basic`` with listed and delisted stocks, fetched once per
  list_status at the start and again at the end (IPOs and delistings between)
  -- ``universe``;
- ``stock_daily`` per trade_date (whole market, chunked): OHLC with
  low <= open, close <= high inside the exchange's daily limits (10% main
  board, 5% main-board ST, 20% ChiNext/STAR, 30% BJ), suspensions (no row),
  ex-dividend days (pre_close is the ex-rights reference price), vol in lots
  (fractional), amount in thousand CNY consistent with a VWAP inside
  [low, high] -- ``bars``;
- ``daily_bar_qfq`` per ts_code over a window, as pro_bar(adj='qfq',
  adjfactor=True) computes it: raw * adj_factor(t) / adj_factor(anchor),
  anchor = last row of the window, rounded to 2 dp, newest row first. Windows
  overlap, a stock is re-fetched over a longer window after an ex-date (the
  new anchor rewrites its history), and some old windows are fetched again
  late (an older anchor that must not win) -- ``bars``;
- ``daily_bar_none`` as pro_bar(adj=None) in SDK >= 1.4.8: pre_close = the
  previous row's raw close, NaN (with change and pct_chg) on the oldest row
  of each fetch -- ``bars``;
- balancesheet, income, cashflow (report_type '1', amounts in CNY yuan,
  income and cashflow year to date) per period, whole market in the middle and
  after the end of each disclosure season, some restated: the original row
  (update_flag '0') and the correction (update_flag '1', later f_ann_date)
  arrive together, and corrections found at the end are fetched per ts_code.
  Accounting identities hold where cheap; some fields are NaN
  -- ``statements``.

Dates are ``YYYYMMDD`` strings and missing numbers NaN, as Tushare sends them.
``data`` is a list of dicts for most batches, a dict of columns or a
pyarrow Table for others, so every accepted shape is exercised (``emit``).

With ``bad_share`` > 0 a share of rows is replaced by a corrupted copy ('abc'
as a number, a missing ts_code, a malformed date, a ts_code off the pattern).
Each one is listed in its batch's ``bad_rows``, so a test can check that every
dead-lettered row was injected; the good rows do not depend on bad_share.
"""

from .calendar import is_trading_day, trading_days
from .emit import Batch, BadRow
from .enqueue import PRODUCE_HELP, PRODUCE_OPTIONS, produce
from .fields import FIELDS, STATEMENTS
from .run import generate

__all__ = ["generate", "produce", "PRODUCE_OPTIONS", "PRODUCE_HELP", "Batch", "BadRow", "FIELDS",
           "STATEMENTS", "trading_days", "is_trading_day"]
