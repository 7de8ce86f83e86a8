"""The stocks of a run: codes, names and listings, and their ``stock_basic`` rows.

Each stock also carries its price state (advanced by ``bars``) and the
figures its financial statements grow from (read by ``statements``).
"""

import datetime as dt
import math
from array import array

from ..results import TaskType
from .calendar import shift, to_date, to_ymd

# weight, suffix, prefixes, market, exchange, daily limit (%), first listing date
_BOARDS = (
    (0.31, "SH", ("600", "601", "603", "605"), "主板", "SSE", 10, "19901219"),
    (0.105, "SH", ("688",), "科创板", "SSE", 20, "20190722"),
    (0.27, "SZ", ("000", "001", "002", "003"), "主板", "SZSE", 10, "19910403"),
    (0.25, "SZ", ("300", "301"), "创业板", "SZSE", 20, "20091030"),
    (0.065, "BJ", ("920", "43", "83", "87"), "北交所", "BSE", 30, "20211115"),
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


class Stock:
    """One stock: identity and listing, price state, fetch state, history, company figures."""

    __slots__ = (
        "code", "name", "board", "limit", "list_date", "delist_date", "list_idx", "delist_idx",
        "basic", "close", "adj", "sigma", "vol_base", "susp", "paid_year", "bar_offset",
        "fetched_to", "ex_since_fetch", "prev_window",
        "hist",
        "comp_type", "revenue", "growth", "gross", "opex", "assets", "lev", "shares", "minority",
        "has_goodwill", "has_rd",
    )


def draw_universe(rng, stocks, days, cal):
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
        s = Stock()
        s.code, s.board, s.limit = code, board, limit
        st = board in (0, 2) and rng.random() < 0.03
        if st:
            s.limit = 5
        s.name = ("*ST" if rng.random() < 0.5 else "ST") * st + rng.choice(_CHARS) + rng.choice(_CHARS) \
            + rng.choice(_SUFFIXES)
        s.delist_date = None
        s.list_idx, s.delist_idx = 0, len(cal)
        lo = to_date(max(earliest, "19901219"))
        if i < stocks:  # listed at the start; a few delist during the run
            hi = to_date(first) - dt.timedelta(days=30)
            if lo >= hi:
                lo = hi - dt.timedelta(days=1)
            s.list_date = to_ymd(lo + dt.timedelta(days=int((hi - lo).days * rng.random() ** 0.7)))
            if i < n_delist_run and days > 4:
                s.delist_idx = rng.randrange(days // 4, days)
                s.delist_date = cal[s.delist_idx]
        elif i < stocks + n_ipo:  # IPO during the run
            s.list_idx = rng.randrange(1, days) if days > 1 else 0
            s.list_date = cal[s.list_idx]
        else:  # delisted before the run
            hi = to_date(first) - dt.timedelta(days=400)
            lo = min(lo, hi - dt.timedelta(days=800))
            s.list_date = to_ymd(lo + dt.timedelta(days=rng.randrange((hi - lo).days)))
            s.delist_date = to_ymd(to_date(s.list_date) + dt.timedelta(days=rng.randrange(365, 365 * 12)))
            s.delist_date = min(s.delist_date, shift(first, -30))
            s.list_idx = s.delist_idx = -1  # never trades here
        s.basic = _basic(rng, s, market, exchange)
        years = max(0.0, (to_date(first) - to_date(s.list_date)).days / 365.25)
        s.adj = round(math.exp(rng.uniform(0.0, 0.12) * years), 3) if s.list_idx == 0 else 1.0
        s.close = int(min(1800.0, max(1.5, math.exp(rng.gauss(2.5, 0.8)))) * 100)  # fen
        s.sigma = rng.uniform(0.012, 0.035) * (1.3 if limit > 10 else 1.0)
        s.vol_base = math.exp(rng.gauss(11.0, 1.0)) + 1000.0
        s.susp = 0
        s.paid_year = int(first[:4]) if s.list_idx else 0
        s.bar_offset = rng.randrange(1 << 30)
        s.fetched_to, s.ex_since_fetch, s.prev_window = 0, False, None
        s.hist = array("d")  # filled by bars.step_day, HIST_WIDTH values a trading day
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


def basic_row(s, status):
    row = dict(s.basic)
    if status == "D":
        row["name"] = s.name.replace("*ST", "").replace("ST", "") + "退"
        row["list_status"], row["delist_date"] = "D", s.delist_date
    return row


def fetch_stock_basic(emit, universe, when):
    """stock_basic as a downloader fetches it: once per list_status, L then D."""
    listed, delisted = [], []
    for s in universe:
        if s.delist_idx <= when and s.delist_date is not None:
            delisted.append(basic_row(s, "D"))
        elif s.list_idx <= when:
            listed.append(basic_row(s, "L"))
    for status, rows in (("L", listed), ("D", delisted)):
        yield from emit.batches(TaskType.STOCK_BASIC, rows, {"exchange": "", "list_status": status})
