"""Synthetic producer: a seeded, realistic China A-share downloader's work.

``generate`` simulates what a Tushare-based downloader fetches over a run of
trading days and yields it as ``Batch`` objects, in the order a downloader
would enqueue them; ``produce`` enqueues them through the Huey task
``process_fetched_data``; ``expected_rows`` says what the warehouse must hold
afterwards. Generation is pure (no Huey, no I/O) and deterministic: the same
arguments give the same batches, byte for byte.

What the data looks like (the Tushare facts behind it are in docs/tushare.md):

- a trading calendar without weekends and SSE holidays (exact for 2019-2026,
  fixed-date holidays only for other years);
- ts_codes of the three exchanges (SH 600/601/603/605/688, SZ
  000/001/002/003/300/301, BJ 920 and legacy 43/83/87), a few ST names;
- ``stock_basic`` with listed and delisted stocks, fetched once per
  list_status at the start and again at the end (IPOs and delistings between);
- ``stock_daily`` per trade_date (whole market, chunked): OHLC with
  low <= open, close <= high inside the exchange's daily limits (10% main
  board, 5% main-board ST, 20% ChiNext/STAR, 30% BJ), suspensions (no row),
  ex-dividend days (pre_close is the ex-rights reference price), vol in lots
  (fractional), amount in thousand CNY consistent with a VWAP inside
  [low, high];
- ``daily_bar_qfq`` per ts_code over a window, as pro_bar(adj='qfq',
  adjfactor=True) computes it: raw * adj_factor(t) / adj_factor(anchor),
  anchor = last row of the window, rounded to 2 dp, newest row first. Windows
  overlap, a stock is re-fetched over a longer window after an ex-date (the
  new anchor rewrites its history), and some old windows are fetched again
  late (an older anchor that must not win);
- ``daily_bar_none`` as pro_bar(adj=None) in SDK >= 1.4.8: pre_close = the
  previous row's raw close, NaN (with change and pct_chg) on the oldest row
  of each fetch;
- balancesheet, income, cashflow (report_type '1', amounts in CNY yuan,
  income and cashflow year to date) per period, whole market in the middle and
  after the end of each disclosure season, some restated: the original row
  (update_flag '0') and the correction (update_flag '1', later f_ann_date)
  arrive together, and corrections found at the end are fetched per ts_code.
  Accounting identities hold where cheap; some fields are NaN.

Dates are ``YYYYMMDD`` strings and missing numbers NaN, as Tushare sends them.
``data`` is a list of dicts for most batches, a dict of columns or a
pyarrow Table for others, so every accepted shape is exercised.

With ``bad_share`` > 0 a share of rows is replaced by a corrupted copy ('abc'
as a number, a missing ts_code, a malformed date, a ts_code off the pattern).
Each one is listed in its batch's ``bad_rows``, so a test can check that every
dead-lettered row was injected; the good rows do not depend on bad_share.
"""

import bisect
import datetime as dt
import math
import random
import statistics
import zlib
from array import array
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from .results import TaskType, utcnow

DATASETS_PATH = Path(__file__).resolve().parent.parent / "config" / "datasets.yaml"

NAN = float("nan")
# standard normal quantiles: a table draw is ~5x cheaper than random.gauss
_Z = [statistics.NormalDist().inv_cdf((i + 0.5) / 4096) for i in range(4096)]
_HALF_Z = [abs(z) for z in _Z]

# ---------------------------------------------------------------------------
# Fields a downloader requests (fields=...), in Tushare's order.

BAR_FIELDS = ("ts_code", "trade_date", "open", "high", "low", "close", "pre_close",
              "change", "pct_chg", "vol", "amount")
QFQ_FIELDS = BAR_FIELDS + ("adj_factor",)
BASIC_FIELDS = ("ts_code", "symbol", "name", "area", "industry", "fullname", "enname", "cnspell",
                "market", "exchange", "curr_type", "list_status", "list_date", "delist_date",
                "is_hs", "act_name", "act_ent_type")
_HEAD = ("ts_code", "ann_date", "f_ann_date", "end_date", "report_type", "comp_type",
         "end_type", "update_flag")
BALANCESHEET_FIELDS = _HEAD + (
    "total_share", "cap_rese", "undistr_porfit", "surplus_rese", "money_cap", "trad_asset",
    "notes_receiv", "accounts_receiv", "oth_receiv", "prepayment", "inventories",
    "total_cur_assets", "lt_eqt_invest", "invest_real_estate", "fix_assets", "cip",
    "intan_assets", "goodwill", "defer_tax_assets", "total_nca", "total_assets", "st_borr",
    "notes_payable", "acct_payable", "adv_receipts", "contract_liab", "payroll_payable",
    "taxes_payable", "non_cur_liab_due_1y", "total_cur_liab", "lt_borr", "bond_payable",
    "total_ncl", "total_liab", "minority_int", "total_hldr_eqy_exc_min_int",
    "total_hldr_eqy_inc_min_int", "total_liab_hldr_eqy")
INCOME_FIELDS = _HEAD + (
    "basic_eps", "diluted_eps", "total_revenue", "revenue", "int_income", "comm_income",
    "n_commis_income", "fv_value_chg_gain", "invest_income", "ass_invest_income", "total_cogs",
    "oper_cost", "int_exp", "comm_exp", "biz_tax_surchg", "sell_exp", "admin_exp", "rd_exp",
    "fin_exp", "fin_exp_int_exp", "fin_exp_int_inc", "assets_impair_loss", "credit_impa_loss",
    "oth_income", "asset_disp_income", "operate_profit", "non_oper_income", "non_oper_exp",
    "total_profit", "income_tax", "n_income", "n_income_attr_p", "minority_gain",
    "oth_compr_income", "t_compr_income", "compr_inc_attr_p", "ebit", "ebitda")
# cashflow: comp_type comes before report_type in this API
CASHFLOW_FIELDS = ("ts_code", "ann_date", "f_ann_date", "end_date", "comp_type", "report_type",
                   "end_type", "update_flag") + (
    "net_profit", "finan_exp", "c_fr_sale_sg", "recp_tax_rends", "c_fr_oth_operate_a",
    "c_inf_fr_operate_a", "c_paid_goods_s", "c_paid_to_for_empl", "c_paid_for_taxes",
    "oth_cash_pay_oper_act", "st_cash_out_act", "n_cashflow_act", "c_disp_withdrwl_invest",
    "c_recp_return_invest", "n_recp_disp_fiolta", "stot_inflows_inv_act",
    "c_pay_acq_const_fiolta", "c_paid_invest", "stot_out_inv_act", "n_cashflow_inv_act",
    "c_recp_cap_contrib", "c_recp_borrow", "proc_issue_bonds", "stot_cash_in_fnc_act",
    "c_prepay_amt_borr", "c_pay_dist_dpcp_int_exp", "stot_cashout_fnc_act",
    "n_cash_flows_fnc_act", "eff_fx_flu_cash", "n_incr_cash_cash_equ", "c_cash_equ_beg_period",
    "c_cash_equ_end_period", "free_cashflow", "depr_fa_coga_dpba", "amort_intang_assets",
    "im_net_cashflow_oper_act")

FIELDS = {
    TaskType.STOCK_BASIC: BASIC_FIELDS,
    TaskType.STOCK_DAILY: BAR_FIELDS,
    TaskType.DAILY_BAR_QFQ: QFQ_FIELDS,
    TaskType.DAILY_BAR_NONE: BAR_FIELDS,
    TaskType.BALANCESHEET: BALANCESHEET_FIELDS,
    TaskType.INCOME: INCOME_FIELDS,
    TaskType.CASHFLOW: CASHFLOW_FIELDS,
}
STATEMENTS = (TaskType.INCOME, TaskType.BALANCESHEET, TaskType.CASHFLOW)

# ---------------------------------------------------------------------------
# Trading calendar

# Weekday closures of the SSE (ranges may run over weekends). The per-year
# trading-day counts match akshare's calendar: 2019 244, 2020 243, 2021 243,
# 2022 242, 2023 242, 2024 242, 2025 243, 2026 242.
_HOLIDAYS = {
    2019: "0101 0204-0210 0405 0501-0504 0607 0913 1001-1007",
    2020: "0101 0124-0202 0404-0406 0501-0505 0625-0626 1001-1008",
    2021: "0101 0211-0217 0403-0405 0501-0505 0614 0920-0921 1001-1007",
    2022: "0103 0131-0206 0403-0405 0430-0504 0603 0912 1001-1007",
    2023: "0102 0121-0127 0405 0429-0503 0622-0623 0929-1006",
    2024: "0101 0209-0217 0404-0406 0501-0505 0610 0915-0917 1001-1007",
    2025: "0101 0128-0204 0404-0406 0501-0505 0531-0602 1001-1008",
    2026: "0101-0103 0215-0223 0404-0406 0501-0505 0619 0925 1001-1007",
}
_FIXED_HOLIDAYS = "0101 0501-0503 1001-1007"  # other years: the lunar holidays are not modelled


def _closures(year):
    out = set()
    for part in _HOLIDAYS.get(year, _FIXED_HOLIDAYS).split():
        first, _, last = part.partition("-")
        day = dt.date(year, int(first[:2]), int(first[2:]))
        end = dt.date(year, int(last[:2]), int(last[2:])) if last else day
        while day <= end:
            out.add(day)
            day += dt.timedelta(days=1)
    return out


def is_trading_day(day):
    """True for a weekday that is not an exchange holiday (``day``: date or YYYYMMDD)."""
    if isinstance(day, str):
        day = _date(day)
    return day.weekday() < 5 and day not in _closures(day.year)


def trading_days(start, count):
    """The first ``count`` trading days on or after ``start``, as YYYYMMDD strings."""
    day, out, closed, year = _date(start), [], set(), None
    while len(out) < count:
        if day.year != year:
            year, closed = day.year, _closures(day.year)
        if day.weekday() < 5 and day not in closed:
            out.append(_ymd(day))
        day += dt.timedelta(days=1)
    return out


def _date(s):
    return dt.date(int(s[:4]), int(s[4:6]), int(s[6:8]))


def _ymd(d):
    return f"{d.year:04d}{d.month:02d}{d.day:02d}"


def _shift(ymd, days):
    return _ymd(_date(ymd) + dt.timedelta(days=days))


# ---------------------------------------------------------------------------
# The universe

# weight, suffix, prefixes, market, exchange, daily limit, first listing date
_BOARDS = (
    (0.31, "SH", ("600", "601", "603", "605"), "主板", "SSE", 0.10, "19901219"),
    (0.105, "SH", ("688",), "科创板", "SSE", 0.20, "20190722"),
    (0.27, "SZ", ("000", "001", "002", "003"), "主板", "SZSE", 0.10, "19910403"),
    (0.25, "SZ", ("300", "301"), "创业板", "SZSE", 0.20, "20091030"),
    (0.065, "BJ", ("920", "43", "83", "87"), "北交所", "BSE", 0.30, "20211115"),
)
_CHARS = "安宝北滨博长城创达大德电东方飞丰峰福富港广国海航和恒红宏华环汇佳建江金锦京精聚凯康科蓝力联龙隆美明南宁鹏平奇启前庆荣瑞三森山上深神晟盛时顺泰天通万威伟西祥新鑫星兴亚阳一亿易银永友宇元远云泽长兆浙正中众洲紫"
_SUFFIXES = ("科技", "股份", "电子", "药业", "能源", "智能", "材料", "控股", "集团", "电气", "生物", "化工",
             "传媒", "银行", "证券", "重工", "环保", "医疗", "食品", "精密")
_INDUSTRIES = ("元器件", "软件服务", "化学制药", "汽车配件", "电气设备", "专用机械", "通信设备", "半导体",
               "医疗保健", "化工原料", "食品", "白酒", "全国地产", "小金属", "建筑工程", "环境保护", "互联网",
               "电器仪表", "纺织", "水力发电")
_AREAS = ("深圳", "上海", "北京", "浙江", "江苏", "广东", "山东", "四川", "湖北", "福建", "安徽", "湖南",
          "河南", "辽宁", "天津", "重庆", "陕西", "江西")
_ACT_TYPES = ("民营企业", "地方国企", "中央国企", "外资企业", "集体企业", "无")
_SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗"
_GIVEN = "伟芳娜敏静丽强磊军洋勇艳杰涛明超秀霞平刚"


class _Stock:
    __slots__ = (
        "code", "name", "board", "limit", "list_date", "delist_date", "list_idx", "delist_idx",
        "basic", "close", "adj", "sigma", "vol_base", "susp", "paid_year", "bar_offset",
        "fetched_to", "ex_since_fetch", "prev_window",
        "hist",
        "comp_type", "revenue", "growth", "gross", "opex", "assets", "lev", "shares", "minority",
        "has_goodwill", "has_rd",
    )


def _universe(rng, stocks, days, cal):
    """Listed stocks at the start, IPOs and delistings during the run, and long-delisted ones."""
    n_ipo = round(stocks * 0.02 * days / 250)
    n_delist_run = round(stocks * 0.01 * days / 250)
    n_old_delisted = round(stocks * 0.05)
    total = stocks + n_ipo + n_old_delisted
    weights = [b[0] for b in _BOARDS]
    codes, out = set(), []
    first = cal[0]
    for i in range(total):
        board = rng.choices(range(len(_BOARDS)), weights)[0]
        _, suffix, prefixes, market, exchange, limit, earliest = _BOARDS[board]
        while True:
            prefix = rng.choice(prefixes)
            code = prefix + "".join(rng.choice("0123456789") for _ in range(6 - len(prefix)))
            code += "." + suffix
            if code not in codes:
                break
        codes.add(code)
        s = _Stock()
        s.code, s.board, s.limit = code, board, limit
        st = board in (0, 2) and rng.random() < 0.03
        if st:
            s.limit = 0.05
        s.name = ("*ST" if rng.random() < 0.5 else "ST") * st + rng.choice(_CHARS) + rng.choice(_CHARS) \
            + rng.choice(_SUFFIXES)
        s.delist_date = None
        s.list_idx, s.delist_idx = 0, len(cal)
        lo = _date(max(earliest, "19901219"))
        if i < stocks:  # listed at the start; a few delist during the run
            hi = _date(first) - dt.timedelta(days=30)
            if lo >= hi:
                lo = hi - dt.timedelta(days=1)
            s.list_date = _ymd(lo + dt.timedelta(days=int((hi - lo).days * rng.random() ** 0.7)))
            if i < n_delist_run and days > 4:
                s.delist_idx = rng.randrange(days // 4, days)
                s.delist_date = cal[s.delist_idx]
        elif i < stocks + n_ipo:  # IPO during the run
            s.list_idx = rng.randrange(1, days) if days > 1 else 0
            s.list_date = cal[s.list_idx]
        else:  # delisted before the run
            hi = _date(first) - dt.timedelta(days=400)
            lo = min(lo, hi - dt.timedelta(days=800))
            s.list_date = _ymd(lo + dt.timedelta(days=rng.randrange((hi - lo).days)))
            s.delist_date = _ymd(_date(s.list_date) + dt.timedelta(days=rng.randrange(365, 365 * 12)))
            s.delist_date = min(s.delist_date, _shift(first, -30))
            s.list_idx = s.delist_idx = -1  # never trades here
        s.basic = _basic(rng, s, market, exchange)
        years = max(0.0, (_date(first) - _date(s.list_date)).days / 365.25)
        s.adj = round(math.exp(rng.uniform(0.0, 0.12) * years), 3) if s.list_idx == 0 else 1.0
        s.close = int(min(1800.0, max(1.5, math.exp(rng.gauss(2.5, 0.8)))) * 100)  # fen
        s.sigma = rng.uniform(0.012, 0.035) * (1.3 if limit > 0.1 else 1.0)
        s.vol_base = math.exp(rng.gauss(11.0, 1.0)) + 1000.0
        s.susp = 0
        s.paid_year = int(first[:4]) if s.list_idx else 0
        s.bar_offset = rng.randrange(1 << 30)
        s.fetched_to, s.ex_since_fetch, s.prev_window = 0, False, None
        # one row per trading day: day index, open, high, low, close, pre_close (fen),
        # vol (0.01 lot), amount (thousand CNY), adj_factor; all exact in a double
        s.hist = array("d")
        _company(rng, s)
        out.append(s)
    out.sort(key=lambda s: s.code)
    return out


def _basic(rng, s, market, exchange):
    name = s.name.replace("*ST", "").replace("ST", "")
    spell = "".join(chr(65 + (ord(ch) % 26)) for ch in name)  # stand-in for pinyin initials
    industry = "银行" if name.endswith("银行") else "证券" if name.endswith("证券") else rng.choice(_INDUSTRIES)
    return {
        "ts_code": s.code, "symbol": s.code[:6], "name": s.name, "area": rng.choice(_AREAS),
        "industry": industry, "fullname": None if rng.random() < 0.02 else name + "股份有限公司",
        "enname": f"{spell.title()} Co., Ltd.", "cnspell": spell, "market": market,
        "exchange": exchange, "curr_type": "CNY", "list_status": "L", "list_date": s.list_date,
        "delist_date": None, "is_hs": rng.choice("NNNHS") if exchange != "BSE" else "N",
        "act_name": None if rng.random() < 0.1 else rng.choice(_SURNAMES) + rng.choice(_GIVEN) + rng.choice(_GIVEN),
        "act_ent_type": rng.choice(_ACT_TYPES),
    }


def _company(rng, s):
    industry = s.basic["industry"]
    s.comp_type = "2" if industry == "银行" else "4" if industry == "证券" else (
        "3" if rng.random() < 0.002 else "1")
    s.revenue = math.exp(rng.gauss(21.5, 1.3)) * (8 if s.comp_type != "1" else 1)
    s.growth = rng.gauss(0.06, 0.12)
    s.gross = rng.uniform(0.12, 0.6)
    s.opex = rng.uniform(0.04, s.gross * 0.8)
    s.assets = s.revenue * (rng.uniform(8, 14) if s.comp_type != "1" else rng.uniform(0.8, 3.0))
    s.lev = rng.uniform(0.85, 0.93) if s.comp_type != "1" else rng.uniform(0.15, 0.75)
    s.shares = float(round(math.exp(rng.gauss(20.3, 1.0)), -4))
    s.minority = rng.choice((0.0, 0.0, rng.uniform(0.01, 0.15)))
    s.has_goodwill = rng.random() < 0.4
    s.has_rd = s.comp_type == "1" and rng.random() < 0.85


def _basic_row(s, status):
    row = dict(s.basic)
    if status == "D":
        row["name"] = s.name.replace("*ST", "").replace("ST", "") + "退"
        row["list_status"], row["delist_date"] = "D", s.delist_date
    return row


# ---------------------------------------------------------------------------
# Financial statements

# Disclosure seasons: (period MMDD, first announcement, deadline) as (month, day, next-year?)
_SEASONS = {"0331": ((4, 1, 0), (4, 30, 0)), "0630": ((7, 10, 0), (8, 31, 0)),
            "0930": ((10, 10, 0), (10, 31, 0)), "1231": ((1, 15, 1), (4, 30, 1))}


def _season(period):
    year = int(period[:4])
    (m1, d1, y1), (m2, d2, y2) = _SEASONS[period[4:]]
    return dt.date(year + y1, m1, d1), dt.date(year + y2, m2, d2)


@dataclass(frozen=True)
class _Report:
    ann_date: str
    correction: str  # f_ann_date of the correction, or None
    corrected: tuple  # the statements the correction changes
    bump: float  # relative change of the corrected figures (0.0: an identical re-issue)


def _report(seed, s, period, restate_share):
    r = random.Random(_seed(seed, "report", s.code, period))
    begin, deadline = _season(period)
    ann = begin + dt.timedelta(days=int((deadline - begin).days * r.random() ** 0.5))
    if period.endswith("0331") and r.random() < 0.4:  # Q1 and the annual report often come together
        annual = _report(seed, s, f"{int(period[:4]) - 1}1231", restate_share).ann_date
        if annual >= _ymd(begin):
            ann = _date(annual)
    correction = corrected = None
    bump = 0.0
    if r.random() < restate_share:
        correction = _ymd(ann + dt.timedelta(days=r.randrange(5, 90)))
        corrected = r.choice((STATEMENTS, STATEMENTS, (TaskType.INCOME,), (TaskType.BALANCESHEET,),
                              (TaskType.CASHFLOW,)))
        bump = 0.0 if r.random() < 0.25 else r.choice((-1, 1)) * r.uniform(0.005, 0.08)
    return _Report(_ymd(ann), correction, corrected or (), bump)


def _r2(x):
    """Round half away from zero to 2 dp (NaN stays NaN); cheaper than round()."""
    return int(x * 100 + (0.5 if x >= 0 else -0.5)) / 100 if x == x else x


def _nz(x):
    return 0.0 if x != x else x


def _seed(*parts):
    return zlib.crc32(":".join(map(str, parts)).encode())


def _statements(seed, s, period, bump=0.0):
    """income, balancesheet and cashflow figures of one period (report_type 1).

    Income and cash flows are year to date: a yearly base times the cumulative
    seasonal weight of the quarter. Totals are derived from rounded parts, so
    the accounting identities hold to the fen. ``bump`` scales the period's
    figures for a restated version.
    """
    year, quarter = int(period[:4]), int(period[4:6]) // 3
    u = random.Random(_seed(seed, s.code, period)).random
    fin = s.comp_type != "1"
    years = year - 2023
    size = (1 + s.growth) ** years * (1 + 0.1 * (random.Random(_seed(seed, s.code, year)).random() - 0.5))
    frac = sum((0.22, 0.24, 0.25, 0.29)[:quarter])
    rev = s.revenue * size * frac * (1 + 0.04 * (u() - 0.5)) * (1 + bump)
    t = frac  # share of the year's time-proportional flows

    i = {}
    if fin:
        i["int_income"] = _r2(rev * (1.1 if s.comp_type == "2" else 0.2) * (0.9 + 0.2 * u()))
        i["int_exp"] = _r2(i["int_income"] * (0.45 + 0.15 * u()))
        i["comm_income"] = _r2(rev * (0.1 + 0.3 * u()))
        i["comm_exp"] = _r2(i["comm_income"] * (0.05 + 0.1 * u()))
        i["n_commis_income"] = _r2(i["comm_income"] - i["comm_exp"])
        i["revenue"] = i["total_revenue"] = _r2(i["int_income"] - i["int_exp"] + i["n_commis_income"] + rev * 0.05)
        for k in ("oper_cost", "sell_exp", "fin_exp", "fin_exp_int_exp", "fin_exp_int_inc", "oth_income"):
            i[k] = NAN
    else:
        for k in ("int_income", "int_exp", "comm_income", "comm_exp", "n_commis_income"):
            i[k] = NAN
        i["revenue"] = i["total_revenue"] = _r2(rev)
        i["oper_cost"] = _r2(rev * (1 - s.gross) * (0.98 + 0.04 * u()))
        i["sell_exp"] = _r2(rev * s.opex * 0.45 * (0.95 + 0.1 * u()))
        i["fin_exp_int_exp"] = _r2(s.assets * s.lev * 0.002 * t * (0.8 + 0.4 * u()))
        i["fin_exp_int_inc"] = _r2(s.assets * 0.0004 * t * (0.5 + u()))
        i["fin_exp"] = _r2(i["fin_exp_int_exp"] - i["fin_exp_int_inc"])
        i["oth_income"] = _r2(rev * 0.01 * u())
    total_rev = i["total_revenue"]
    i["admin_exp"] = _r2(total_rev * s.opex * 0.4 * (0.95 + 0.1 * u()))
    i["rd_exp"] = _r2(total_rev * (0.02 + 0.07 * u())) if s.has_rd else NAN
    i["biz_tax_surchg"] = _r2(total_rev * (0.004 + 0.008 * u()))
    if fin:
        i["total_cogs"] = _r2(total_rev * 0.35 + i["admin_exp"] + i["biz_tax_surchg"])
    else:
        i["total_cogs"] = _r2(i["oper_cost"] + i["sell_exp"] + i["admin_exp"] + _nz(i["rd_exp"])
                              + i["biz_tax_surchg"] + i["fin_exp"])
    i["invest_income"] = _r2(total_rev * 0.02 * u())
    i["ass_invest_income"] = _r2(i["invest_income"] * 0.3)
    i["fv_value_chg_gain"] = _r2(total_rev * 0.008 * (u() - 0.5)) if u() < 0.7 else NAN
    i["assets_impair_loss"] = _r2(-total_rev * 0.01 * u())
    i["credit_impa_loss"] = _r2(-total_rev * 0.006 * u())
    i["asset_disp_income"] = _r2(total_rev * 0.002 * (u() - 0.5))
    i["operate_profit"] = _r2(total_rev - i["total_cogs"] + _nz(i["oth_income"]) + i["invest_income"]
                              + _nz(i["fv_value_chg_gain"]) + i["assets_impair_loss"] + i["credit_impa_loss"]
                              + i["asset_disp_income"])
    i["non_oper_income"] = _r2(total_rev * 0.003 * u())
    i["non_oper_exp"] = _r2(total_rev * 0.002 * u())
    i["total_profit"] = tp = _r2(i["operate_profit"] + i["non_oper_income"] - i["non_oper_exp"])
    i["income_tax"] = tax = _r2(max(0.0, tp * (0.12 + 0.13 * u())))
    i["n_income"] = ni = _r2(tp - tax)
    i["minority_gain"] = mg = _r2(ni * s.minority)
    i["n_income_attr_p"] = attr = _r2(ni - mg)
    i["oth_compr_income"] = oci = _r2(total_rev * 0.004 * (u() - 0.5))
    i["t_compr_income"] = _r2(ni + oci)
    i["compr_inc_attr_p"] = _r2(attr + oci * (1 - s.minority))
    depr = _r2(s.assets * 0.04 * t * (0.6 + 0.4 * u()))
    amort = _r2(s.assets * 0.008 * t * (0.5 + 0.5 * u()))
    i["ebit"] = ebit = _r2(tp + _nz(i["fin_exp_int_exp"]))
    i["ebitda"] = _r2(ebit + depr + amort)
    i["basic_eps"] = round(attr / s.shares, 4)
    i["diluted_eps"] = i["basic_eps"] if not s.minority else round(attr / s.shares * 0.99, 4)

    c = {"net_profit": ni, "finan_exp": _nz(i["fin_exp_int_exp"]), "depr_fa_coga_dpba": depr,
         "amort_intang_assets": amort}
    c["c_fr_sale_sg"] = _r2(total_rev * 1.1 * (0.9 + 0.18 * u()))
    c["recp_tax_rends"] = _r2(total_rev * 0.01 * u()) if u() < 0.6 else NAN
    c["c_fr_oth_operate_a"] = _r2(total_rev * 0.01 * u())
    c["c_inf_fr_operate_a"] = _r2(c["c_fr_sale_sg"] + _nz(c["recp_tax_rends"]) + c["c_fr_oth_operate_a"])
    cost = i["oper_cost"] if not fin else total_rev * 0.4
    c["c_paid_goods_s"] = _r2(cost * (1.0 + 0.1 * u()))
    c["c_paid_to_for_empl"] = _r2(total_rev * (0.05 + 0.06 * u()))
    c["c_paid_for_taxes"] = _r2(tax + i["biz_tax_surchg"] * 2)
    c["oth_cash_pay_oper_act"] = _r2((i["admin_exp"] + _nz(i["sell_exp"])) * 0.5)
    c["st_cash_out_act"] = _r2(c["c_paid_goods_s"] + c["c_paid_to_for_empl"] + c["c_paid_for_taxes"]
                               + c["oth_cash_pay_oper_act"])
    c["n_cashflow_act"] = c["im_net_cashflow_oper_act"] = _r2(c["c_inf_fr_operate_a"] - c["st_cash_out_act"])
    c["c_disp_withdrwl_invest"] = _r2(s.assets * 0.04 * t * u())
    c["c_recp_return_invest"] = _r2(i["invest_income"] * 0.6)
    c["n_recp_disp_fiolta"] = _r2(abs(i["asset_disp_income"]))
    c["stot_inflows_inv_act"] = _r2(c["c_disp_withdrwl_invest"] + c["c_recp_return_invest"]
                                    + c["n_recp_disp_fiolta"])
    c["c_pay_acq_const_fiolta"] = capex = _r2(s.assets * 0.06 * t * (0.2 + u()))
    c["c_paid_invest"] = _r2(s.assets * 0.05 * t * u())
    c["stot_out_inv_act"] = _r2(capex + c["c_paid_invest"])
    c["n_cashflow_inv_act"] = _r2(c["stot_inflows_inv_act"] - c["stot_out_inv_act"])
    c["c_recp_cap_contrib"] = _r2(s.assets * 0.05) if u() < 0.03 else NAN
    c["c_recp_borrow"] = _r2(s.assets * s.lev * 0.15 * t * u())
    c["proc_issue_bonds"] = _r2(s.assets * 0.03) if u() < 0.05 else NAN
    c["stot_cash_in_fnc_act"] = _r2(_nz(c["c_recp_cap_contrib"]) + c["c_recp_borrow"] + _nz(c["proc_issue_bonds"]))
    c["c_prepay_amt_borr"] = _r2(s.assets * s.lev * 0.15 * t * u())
    c["c_pay_dist_dpcp_int_exp"] = _r2(c["finan_exp"] + total_rev * 0.02 * u())
    c["stot_cashout_fnc_act"] = _r2(c["c_prepay_amt_borr"] + c["c_pay_dist_dpcp_int_exp"])
    c["n_cash_flows_fnc_act"] = _r2(c["stot_cash_in_fnc_act"] - c["stot_cashout_fnc_act"])
    c["eff_fx_flu_cash"] = _r2(total_rev * 0.001 * (u() - 0.5)) if u() < 0.5 else NAN
    c["n_incr_cash_cash_equ"] = _r2(c["n_cashflow_act"] + c["n_cashflow_inv_act"] + c["n_cash_flows_fnc_act"]
                                    + _nz(c["eff_fx_flu_cash"]))
    c["c_cash_equ_beg_period"] = beg = _r2(s.assets * 0.12 * (1 + s.growth) ** years)
    c["c_cash_equ_end_period"] = _r2(beg + c["n_incr_cash_cash_equ"])
    c["free_cashflow"] = _r2(c["n_cashflow_act"] - capex)
    return i, _balance(u, s, years + quarter / 4, bump, c["c_cash_equ_end_period"]), c


def _balance(u, s, years, bump, cash_end):
    fin = s.comp_type != "1"
    total = s.assets * (1 + s.growth) ** years * (0.98 + 0.04 * u()) * (1 + bump)
    b = {"total_share": s.shares}
    cur = total * ((0.3 + 0.4 * u()) if not fin else (0.5 + 0.2 * u()))
    parts = (("money_cap", max(cash_end, cur * 0.1) if not fin else cur * 0.3),
             ("trad_asset", cur * 0.08 * u()),
             ("notes_receiv", NAN if fin else cur * 0.06 * u()),
             ("accounts_receiv", NAN if fin else cur * (0.05 + 0.2 * u())),
             ("oth_receiv", cur * 0.03 * u()),
             ("prepayment", NAN if fin else cur * 0.04 * u()),
             ("inventories", NAN if fin else cur * (0.05 + 0.25 * u())))
    listed = 0.0
    for k, v in parts:
        b[k] = v = _r2(v)
        listed += _nz(v)
    b["total_cur_assets"] = _r2(max(cur, listed * 1.05))
    nca = max(total - b["total_cur_assets"], total * 0.1)
    b["lt_eqt_invest"] = _r2(nca * 0.15 * u())
    b["invest_real_estate"] = _r2(nca * 0.05 * u()) if u() < 0.4 else NAN
    b["fix_assets"] = _r2(nca * ((0.2 + 0.4 * u()) if not fin else 0.02))
    b["cip"] = NAN if fin else _r2(nca * 0.1 * u())
    b["intan_assets"] = _r2(nca * (0.02 + 0.08 * u()))
    b["goodwill"] = _r2(nca * 0.08 * u()) if s.has_goodwill else NAN
    b["defer_tax_assets"] = _r2(nca * 0.03 * u())
    b["total_nca"] = _r2(nca)
    b["total_assets"] = assets = _r2(b["total_cur_assets"] + b["total_nca"])
    liab = assets * s.lev * (0.99 + 0.02 * u())
    cl = liab * (0.5 + 0.35 * u())
    b["st_borr"] = _r2(cl * 0.3 * u())
    b["notes_payable"] = NAN if fin else _r2(cl * 0.1 * u())
    b["acct_payable"] = NAN if fin else _r2(cl * (0.1 + 0.25 * u()))
    b["adv_receipts"] = _r2(cl * 0.05 * u()) if u() < 0.5 else NAN
    b["contract_liab"] = NAN if fin else _r2(cl * 0.15 * u())
    b["payroll_payable"] = _r2(cl * (0.01 + 0.04 * u()))
    b["taxes_payable"] = _r2(cl * (0.005 + 0.025 * u()))
    b["non_cur_liab_due_1y"] = _r2(cl * 0.08 * u())
    b["total_cur_liab"] = _r2(cl)
    ncl = liab - cl
    b["lt_borr"] = _r2(ncl * (0.2 + 0.6 * u()))
    b["bond_payable"] = _r2(ncl * 0.3 * u()) if u() < 0.3 else NAN
    b["total_ncl"] = _r2(ncl)
    b["total_liab"] = total_liab = _r2(b["total_cur_liab"] + b["total_ncl"])
    equity = assets - total_liab
    b["minority_int"] = minority = _r2(equity * s.minority)
    b["total_hldr_eqy_exc_min_int"] = parent = _r2(equity - minority)
    b["total_hldr_eqy_inc_min_int"] = _r2(parent + minority)
    b["total_liab_hldr_eqy"] = _r2(total_liab + b["total_hldr_eqy_inc_min_int"])
    b["cap_rese"] = _r2(parent * (0.1 + 0.3 * u()))
    b["surplus_rese"] = _r2(parent * (0.02 + 0.08 * u()))
    b["undistr_porfit"] = _r2(parent * (0.1 + 0.4 * u()))
    return b


def _statement_rows(seed, s, period, rep, today):
    """{task_type: [rows]} as a fetch on ``today`` returns them (original row first)."""
    out = {t: [] for t in STATEMENTS}
    if rep.ann_date > today:
        return out
    visible = rep.correction is not None and rep.correction <= today
    orig = _statements(seed, s, period)
    fixed = _statements(seed, s, period, rep.bump) if visible and rep.bump else orig
    end_type = str(int(period[4:6]) // 3)
    for t, o, f in zip(STATEMENTS, orig, fixed):
        restated = visible and t in rep.corrected
        versions = [("0" if restated else "1", rep.ann_date, o)]
        if restated:
            versions.append(("1", rep.correction, f))
        fields = FIELDS[t]
        for flag, f_ann, values in versions:
            head = (s.code, rep.ann_date, f_ann, period, "1", s.comp_type, end_type, flag)
            if t is TaskType.CASHFLOW:  # comp_type before report_type
                head = head[:4] + (s.comp_type, "1") + head[6:]
            row = dict(zip(fields, head))
            for name in fields[8:]:
                row[name] = values[name]
            out[t].append(row)
    return out


# ---------------------------------------------------------------------------
# Batches

@dataclass(frozen=True)
class BadRow:
    """An injected bad row: where it is, what is wrong, and the row as sent."""

    index: int  # position in the batch's data
    kind: str  # bad_number | missing_ts_code | bad_date | bad_ts_code
    column: str
    value: object
    row: dict


@dataclass
class Batch:
    """One fetch result, ready for ``process_fetched_data(task_type, data, **params)``."""

    task_type: TaskType
    data: object  # list of dicts, dict of columns, or pyarrow.Table
    params: dict
    bad_rows: tuple = ()
    shape: str = "list"

    @property
    def rows(self):
        if isinstance(self.data, pa.Table):
            return self.data.num_rows
        if isinstance(self.data, dict):
            return len(next(iter(self.data.values()), ()))
        return len(self.data)

    def row_dicts(self):
        """The data as a list of row dicts, whatever its shape."""
        if isinstance(self.data, pa.Table):
            return self.data.to_pylist()
        if isinstance(self.data, dict):
            names = list(self.data)
            return [dict(zip(names, values)) for values in zip(*self.data.values())]
        return list(self.data)


_NUMBER_COLUMNS = {
    TaskType.STOCK_DAILY: ("open", "high", "low", "close", "vol", "amount"),
    TaskType.DAILY_BAR_NONE: ("open", "high", "low", "close", "vol", "amount"),
    TaskType.DAILY_BAR_QFQ: ("vol", "amount"),
}
_DATE_COLUMN = {TaskType.STOCK_DAILY: "trade_date", TaskType.DAILY_BAR_NONE: "trade_date",
                TaskType.DAILY_BAR_QFQ: "trade_date", TaskType.BALANCESHEET: "end_date",
                TaskType.INCOME: "end_date", TaskType.CASHFLOW: "end_date"}
_BAD_DATES = ("2024-13-45", "20241345", "20230230", "2024.01.02")
_BAD_CODES = ("60000.SH", "600000.SS", "600000", "SH600000", "6000001.SZ", "00000A.SZ")


class _Emitter:
    """Chunks rows into batches, picks their shape, injects bad rows."""

    def __init__(self, seed, bad_share, rows_per_task, task_types):
        self.shape_rng = random.Random(f"{seed}:shape")
        self.bad_rng = random.Random(f"{seed}:bad")
        self.bad_share = bad_share
        self.rows_per_task = rows_per_task
        self.task_types = task_types
        self._skip = self._gap()

    def _gap(self):
        if self.bad_share <= 0:
            return math.inf
        if self.bad_share >= 1:
            return 0
        return int(math.log(1.0 - self.bad_rng.random()) / math.log(1.0 - self.bad_share))

    def batches(self, task_type, rows, params, chunk=True):
        step = self.rows_per_task if chunk else max(1, len(rows))
        for i in range(0, len(rows), step):
            u = self.shape_rng.random()  # drawn for every batch, emitted or not: stable shapes
            if task_type not in self.task_types:
                continue
            part = rows[i:i + step]
            shape = "list" if u < 0.7 else "dict" if u < 0.85 else "table"
            bad = self._inject(task_type, part, shape) if self.bad_share > 0 else ()
            if bad and shape == "table":
                shape = "dict"
            yield Batch(task_type, _shaped(part, shape, FIELDS[task_type]), dict(params), bad, shape)

    def _inject(self, task_type, rows, shape):
        bad, n = [], len(rows)
        while self._skip < n:
            i = self._skip
            rows[i] = row = dict(rows[i])
            r = self.bad_rng
            kinds = ["missing_ts_code", "bad_ts_code"]
            if task_type in _NUMBER_COLUMNS:
                kinds += ["bad_number", "bad_number"]
            if task_type in _DATE_COLUMN:
                kinds.append("bad_date")
            kind = r.choice(kinds)
            if kind == "bad_number":
                column, value = r.choice(_NUMBER_COLUMNS[task_type]), "abc"
            elif kind == "bad_date":
                column, value = _DATE_COLUMN[task_type], r.choice(_BAD_DATES)
            elif kind == "bad_ts_code":
                column, value = "ts_code", r.choice(_BAD_CODES)
            else:
                column, value = "ts_code", None
            if value is None and shape == "list" and r.random() < 0.5:
                del row[column]  # the key is absent, not just null
            else:
                row[column] = value
            bad.append(BadRow(i, kind, column, value, dict(row)))
            self._skip = i + 1 + self._gap()
        self._skip -= n
        return tuple(bad)


def _shaped(rows, shape, fields):
    if shape == "list":
        return rows
    if shape == "table":
        return pa.Table.from_pylist(rows).select(list(fields))
    return {f: [r.get(f) for r in rows] for f in fields}


# ---------------------------------------------------------------------------
# The run

def generate(stocks=5400, days=250, seed=0, bad_share=0.0, start="20240102", rows_per_task=1000, *,
             task_types=None, bar_every=20, bar_overlap=5, bar_share=1.0, qfq_refetch_days=120,
             retry_share=0.02, restate_share=0.05):
    """Yield the batches of ``days`` trading days of a downloader's work, in enqueue order.

    ``stocks`` listed stocks at the start (plus ~2%/year IPOs, ~1%/year
    delistings during the run, and 5% delisted long ago); ``days`` trading days
    from ``start`` (YYYYMMDD). ``rows_per_task`` caps whole-market fetches per
    task. ``task_types`` (names or TaskType) limits what is emitted without
    changing it. Bars: each of a ``bar_share`` of the stocks is fetched every
    ``bar_every`` trading days over its new rows plus ``bar_overlap`` old ones;
    after an ex-date the qfq fetch covers the last ``qfq_refetch_days`` rows;
    ``retry_share`` of qfq fetches are followed by a late re-fetch of the
    previous window. ``restate_share`` of reports get a correction.
    """
    if stocks < 1 or days < 1 or rows_per_task < 1 or bar_every < 1:
        raise ValueError("stocks, days, rows_per_task and bar_every must be positive")
    if not 0.0 <= bad_share < 1.0:
        raise ValueError("bad_share must be in [0, 1)")
    wanted = set(TaskType) if task_types is None else {TaskType(t) for t in task_types}
    rng = random.Random(seed)
    cal = trading_days(start, days)
    universe = _universe(rng, stocks, days, cal)
    emit = _Emitter(seed, bad_share, rows_per_task, wanted)
    for s in universe:
        if rng.random() >= bar_share:
            s.bar_offset = None

    yield from _stock_basic(emit, universe, when=0)
    events = _statement_events(cal)
    reports = {}
    last_market_fetch = {}
    for di, day in enumerate(cal):
        rows = _step_day(rng, universe, di, day)
        yield from emit.batches(TaskType.STOCK_DAILY, rows, {"trade_date": day})
        for s in universe:
            if s.bar_offset is not None and (di + s.bar_offset) % bar_every == 0 \
                    and len(s.hist) > s.fetched_to * _W:
                yield from _fetch_bars(emit, rng, s, cal, di, bar_overlap, qfq_refetch_days, retry_share)
        for period in events.get(di, ()):
            last_market_fetch[period] = day
            yield from _fetch_statements(emit, seed, universe, period, day, reports, restate_share)
    yield from _stock_basic(emit, universe, when=len(cal))
    # corrections published after the last whole-market fetch of their period: per ts_code
    last = cal[-1]
    for period, fetched_on in sorted(last_market_fetch.items()):
        for s in universe:
            rep = reports.get((s.code, period))
            if rep is not None and rep.correction and fetched_on < rep.correction <= last:
                found = _statement_rows(seed, s, period, rep, last)
                for t in STATEMENTS:
                    if t in rep.corrected:
                        yield from emit.batches(t, found[t], {"ts_code": s.code, "period": period}, chunk=False)


def _stock_basic(emit, universe, when):
    """stock_basic as a downloader fetches it: once per list_status, L then D."""
    listed, delisted = [], []
    for s in universe:
        if s.delist_idx <= when and s.delist_date is not None:
            delisted.append(_basic_row(s, "D"))
        elif s.list_idx <= when:
            listed.append(_basic_row(s, "L"))
    for status, rows in (("L", listed), ("D", delisted)):
        yield from emit.batches(TaskType.STOCK_BASIC, rows, {"exchange": "", "list_status": status})


def _step_day(rng, universe, di, day):
    """Advance every trading stock by one day; return the day's daily rows.

    Prices are kept in integer fen (cents), so a price is exactly the float of
    its 2-dp decimal and limit prices round half up as the exchanges do.
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
        lim = s.limit
        up = int(pre * (1 + lim) + 0.5)
        dn = int(pre * (1 - lim) + 0.5) or 1
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


_W = 9  # values per history row


def _fetch_bars(emit, rng, s, cal, di, overlap, refetch_days, retry_share):
    n = len(s.hist) // _W
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
    params = {"ts_code": s.code, "start_date": cal[int(s.hist[start_i * _W])], "end_date": end_date}
    if qfq:
        params.update(adj="qfq", adjfactor=True)
    return params


def _window(s, start_i, end_i):
    """History rows start_i..end_i-1 as 9-tuples, oldest first."""
    it = iter(s.hist[start_i * _W:end_i * _W])
    return zip(it, it, it, it, it, it, it, it, it)


def _qfq_rows(s, cal, start_i, end_i):
    """pro_bar(adj='qfq', adjfactor=True): newest first, anchored at the window's last row.

    price * adj_factor / adj_factor(anchor), to 2 dp; change recomputed from the
    rounded prices and left unrounded, pct_chg to 2 dp, as the SDK does.
    """
    code = s.code
    anchor = s.hist[end_i * _W - 1]
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


def _statement_events(cal):
    """{day index: [period, ...]}: whole-market fetches mid-season and after each deadline."""
    first, last = _date(cal[0]), _date(cal[-1])
    events = defaultdict(list)
    for year in range(first.year - 1, last.year + 1):
        for mmdd in _SEASONS:
            period = f"{year}{mmdd}"
            begin, deadline = _season(period)
            for when in (begin + (deadline - begin) / 2, deadline + dt.timedelta(days=1)):
                di = bisect.bisect_left(cal, _ymd(when))
                if di < len(cal) and when >= first:
                    events[di].append(period)
    return {di: sorted(ps) for di, ps in events.items()}


def _fetch_statements(emit, seed, universe, period, day, reports, restate_share):
    """income_vip/balancesheet_vip/cashflow_vip(period=...): every report published by ``day``."""
    found = {t: [] for t in STATEMENTS}
    for s in universe:
        if s.list_date > day or (s.delist_date is not None and s.delist_date <= period):
            continue
        rep = reports.get((s.code, period))
        if rep is None:
            rep = reports[(s.code, period)] = _report(seed, s, period, restate_share)
        if s.delist_date is not None and s.delist_date <= rep.ann_date:
            continue
        for t, rows in _statement_rows(seed, s, period, rep, day).items():
            found[t].extend(rows)
    for t in STATEMENTS:
        yield from emit.batches(t, found[t], {"period": period, "report_type": "1"})


# ---------------------------------------------------------------------------
# What the warehouse must hold

def expected_rows(batches, datasets=None):
    """The warehouse the batches must produce: ``{task type: pyarrow.Table}``.

    Every good row (injected bad rows left out), cleaned as the stager does
    (YYYYMMDD -> DATE, NaN -> NULL, missing declared columns -> NULL), reduced to
    one row per primary key by the dataset's version_order, where _fetched_at is
    the batch's position (``produce`` stamps fetch times in that order) and
    _anchor_date the batch's anchor parameter. Declared columns only, sorted by
    primary key. ``batches`` may be a fresh ``generate(...)`` with the same
    arguments: it is deterministic.
    """
    import duckdb

    from .datasets import load_datasets

    datasets = datasets or load_datasets(DATASETS_PATH)
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
            anchor = _date(raw)
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


# ---------------------------------------------------------------------------
# Enqueueing

def produce(process_fetched_data, batches, *, stamp=True, clock=utcnow, progress=None):
    """Enqueue every batch: ``process_fetched_data(batch.task_type, batch.data, **batch.params)``.

    With ``stamp`` each task also gets a ``fetched_at`` strictly later than the
    previous one's, so the fetch-time version order is the enqueue order even
    when the clock stalls or steps back (``expected_rows`` relies on it).
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
