"""The synthetic producer: realistic Tushare-shaped data, reproducible, with known bad rows.

Rows are checked against config/datasets.yaml with a small validator of our
own (not the stager's), and against the Tushare rules in docs/tushare.md.
"""

import datetime as dt
import hashlib
import math
import os
import re
import shutil
import subprocess
import sys
from collections import Counter, defaultdict
from decimal import ROUND_HALF_UP, Decimal

import pyarrow as pa
import pytest
import yaml

from duckstage.config import load_config
from duckstage.datasets import load_datasets
from stager.produce import FIELDS, PRODUCE_OPTIONS, generate, produce, trading_days
from stager.produce.bars import limit_prices
from stager.results import TaskType
from stager.tasks import build_huey
from tests.helpers import CONFIG_DIR, REPO, write_config

DATASETS = load_datasets(CONFIG_DIR / "datasets.yaml")
# Through the Q1 disclosure season, into H1's, and over the ex-dividend months.
RUN = dict(stocks=300, days=90, seed=7, start="20240401", rows_per_task=400)


@pytest.fixture(scope="module")
def batches():
    return list(generate(**RUN))


@pytest.fixture(scope="module")
def bad_batches():
    return list(generate(**RUN, bad_share=0.02))


def by_type(batches, task_type):
    return [b for b in batches if b.task_type is task_type]


def rows_of(batches, task_type):
    return [r for b in by_type(batches, task_type) for r in b.row_dicts()]


# --- our own check of a row against datasets.yaml ---------------------------

DATE_RE = re.compile(r"^\d{8}$")


def problems(row, dataset):
    """What is wrong with a row as sent, by datasets.yaml; [] for a good row."""
    out = []
    declared = {c.name for c in dataset.columns}
    for name in row:
        if name not in declared:
            out.append(f"{name}: not declared")
    for col in dataset.columns:
        value = row.get(col.name)
        missing = value is None or (isinstance(value, float) and math.isnan(value))
        if missing:
            if not col.nullable:
                out.append(f"{col.name}: null")
            continue
        if col.type == "VARCHAR":
            if not isinstance(value, str):
                out.append(f"{col.name}: not a string")
            elif col.pattern and not re.search(col.pattern, value):
                out.append(f"{col.name}: off pattern")
        elif col.type == "DOUBLE":
            if not isinstance(value, float):
                out.append(f"{col.name}: not a float")
        elif col.type == "DATE":
            if not (isinstance(value, str) and DATE_RE.match(value)):
                out.append(f"{col.name}: not YYYYMMDD")
            else:
                try:
                    dt.datetime.strptime(value, "%Y%m%d")
                except ValueError:
                    out.append(f"{col.name}: no such date")
    return out


def good_rows(batch):
    bad = {b.index for b in batch.bad_rows}
    return [r for i, r in enumerate(batch.row_dicts()) if i not in bad]


# --- calendar ----------------------------------------------------------------

def test_calendar_has_no_weekends_or_holidays():
    days = trading_days("20190101", 2000)
    assert all(dt.datetime.strptime(d, "%Y%m%d").weekday() < 5 for d in days)
    per_year = Counter(d[:4] for d in days)
    # SSE trading days per year (akshare's calendar)
    assert [per_year[str(y)] for y in range(2019, 2027)] == [244, 243, 243, 242, 242, 242, 243, 242]
    for holiday in ("20240101", "20240212", "20240404", "20240501", "20241001", "20250129"):
        assert holiday not in days
    assert trading_days("20240210", 1) == ["20240219"]  # Spring Festival: closed Feb 9-17


# --- determinism -----------------------------------------------------------

def fingerprint(batches):
    return [(b.task_type, sorted(b.params.items()), b.shape, repr(b.row_dicts()),
             [(x.index, x.kind, x.column, repr(x.value)) for x in b.bad_rows]) for b in batches]


def test_same_seed_same_batches_other_seed_other_batches():
    small = dict(stocks=40, days=25, start="20240603", bad_share=0.05)
    first = fingerprint(generate(seed=3, **small))
    assert first == fingerprint(generate(seed=3, **small))
    assert first != fingerprint(generate(seed=4, **small))


# What ``bad_batches`` generates, per task type: the first 16 hex digits of a
# sha256 over its batches' fingerprints. A refactor must leave them alone; a
# deliberate change of the data updates them in the same commit and says why.
# Computed with CPython on glibc: another libm may round an exp() differently.
DIGESTS = {
    "stock_basic": "0f185aa5e14e9e98",
    "stock_daily": "f6af3924910caddd",
    "daily_bar_qfq": "7b3e1ab36a058066",
    "daily_bar_none": "05d239636a2c91ca",
    "income": "3c38a0938a2a33ee",
    "balancesheet": "99727e037bf22517",
    "cashflow": "713b2a5c5191b758",
}


def digests(batches):
    out = {}
    for task_type, *rest in fingerprint(batches):
        out.setdefault(task_type.value, hashlib.sha256()).update(repr(rest).encode())
    return {name: h.hexdigest()[:16] for name, h in out.items()}


def test_generated_data_is_pinned(bad_batches):
    assert digests(bad_batches) == DIGESTS


def test_all_seven_task_types_and_all_three_shapes(batches):
    assert {b.task_type for b in batches} == set(TaskType)
    shapes = {b.shape for b in batches}
    assert shapes == {"list", "dict", "table"}
    for b in batches:
        kind = {"list": list, "dict": dict, "table": pa.Table}[b.shape]
        assert isinstance(b.data, kind)


def test_task_types_filter_keeps_the_data_unchanged(batches):
    only = list(generate(**RUN, task_types=["income"]))
    assert fingerprint(only) == fingerprint(by_type(batches, TaskType.INCOME))


# --- every good row is valid ----------------------------------------------

def test_every_good_row_validates_against_datasets_yaml(bad_batches):
    for b in bad_batches:
        dataset = DATASETS[b.task_type.value]
        for row in good_rows(b):
            assert problems(row, dataset) == [], (b.task_type, b.params, row)


def test_fields_are_the_declared_columns():
    for task_type, fields in FIELDS.items():
        declared = [c.name for c in DATASETS[task_type.value].columns]
        assert set(fields) <= set(declared)
        # the two after-hours columns are not requested (not default, only from 2026-07)
        assert set(declared) - set(fields) <= {"ah_vol", "ah_amount"}


# --- codes and stock_basic -------------------------------------------------

PREFIXES = {"SH": ("600", "601", "603", "605", "688"), "SZ": ("000", "001", "002", "003", "300", "301"),
            "BJ": ("920", "43", "83", "87")}


def test_codes_come_from_the_three_exchanges():
    basic = rows_of(generate(stocks=3000, days=3, seed=1), TaskType.STOCK_BASIC)
    seen = set()
    for r in basic:
        code, suffix = r["ts_code"].split(".")
        prefix = next(p for p in PREFIXES[suffix] if code.startswith(p))
        seen.add(prefix)
        assert r["symbol"] == code
        assert r["exchange"] == {"SH": "SSE", "SZ": "SZSE", "BJ": "BSE"}[suffix]
    assert seen == {p for ps in PREFIXES.values() for p in ps}


def test_stock_basic_has_listed_and_delisted_stocks(batches):
    fetches = by_type(batches, TaskType.STOCK_BASIC)
    assert [b.params["list_status"] for b in fetches][:1] == ["L"]
    status = {}
    for b in fetches:
        for r in b.row_dicts():
            assert r["list_status"] == b.params["list_status"]
            assert (r["delist_date"] is None) == (r["list_status"] == "L")
            if r["delist_date"]:
                assert r["delist_date"] > r["list_date"]
            status.setdefault(r["ts_code"], []).append(r["list_status"])
    assert Counter(s[-1] for s in status.values()).keys() == {"L", "D"}
    assert ["L", "D"] in status.values()  # delisted during the run: listed at first, delisted at the end
    first = {r["ts_code"] for r in fetches[0].row_dicts()}
    daily = {r["ts_code"] for r in rows_of(batches, TaskType.STOCK_DAILY)}
    assert daily - first  # IPOs during the run


# --- daily bars ------------------------------------------------------------

def daily_limit(code, name):
    """The daily price limit in percent: by board, and 5 for ST names on the main boards."""
    if code.startswith(("688", "300", "301")):
        return 20
    if code.endswith(".BJ"):
        return 30
    return 5 if "ST" in name else 10


def limit_price(pre, limit, sign):
    """pre * (1 + sign * limit%), rounded half up to the fen on the exact decimal as the exchanges do.

    Not in binary floating point: 4.3 * 1.05 is 4.5149999... there, and the
    limit-up price of 4.30 at 5% is 4.52, not 4.51.
    """
    exact = Decimal(repr(pre)) * (100 + sign * limit) / 100
    return max(0.01, float(exact.quantize(Decimal("0.01"), ROUND_HALF_UP)))


def test_limit_price_is_the_exact_decimal_rounded_half_up():
    assert limit_price(4.3, 5, +1) == 4.52
    assert limit_price(0.45, 30, -1) == 0.32  # 0.315


def test_limit_prices_of_the_generator_are_exact():
    for limit in (5, 10, 20, 30):
        for pre in range(1, 20001):  # fen
            up, dn = limit_prices(pre, limit)
            assert (up / 100, dn / 100) == (limit_price(pre / 100, limit, +1), limit_price(pre / 100, limit, -1)), \
                (pre, limit)


def check_daily_bars(batches, run):
    names = {r["ts_code"]: r["name"] for r in rows_of(batches, TaskType.STOCK_BASIC)
             if r["list_status"] == "L"}
    daily = by_type(batches, TaskType.STOCK_DAILY)
    assert {b.params["trade_date"] for b in daily} == set(trading_days(run["start"], run["days"]))
    fractional = ex_days = at_limit = 0
    for b in daily:
        assert len(b.row_dicts()) <= run["rows_per_task"]
        for r in b.row_dicts():
            assert r["trade_date"] == b.params["trade_date"]
            o, h, lo, c, pre = r["open"], r["high"], r["low"], r["close"], r["pre_close"]
            assert 0 < lo <= min(o, c) <= max(o, c) <= h
            limit = daily_limit(r["ts_code"], names[r["ts_code"]])
            up, dn = limit_price(pre, limit, +1), limit_price(pre, limit, -1)
            assert dn <= lo and h <= up, r
            at_limit += h == up or lo == dn
            assert r["change"] == pytest.approx(c - pre, abs=1e-9)
            assert r["pct_chg"] == pytest.approx((c - pre) / pre * 100, abs=1e-4)
            vwap = r["amount"] * 1000 / (r["vol"] * 100)  # thousand CNY / shares
            assert lo - 0.01 <= vwap <= h + 0.01
            fractional += r["vol"] != int(r["vol"])
    assert fractional
    assert at_limit, "no price reached a limit: the bound was not put to the test"
    # ex-dividend days: pre_close is the reference price, not the raw previous close
    last_close = {}
    for b in daily:
        for r in b.row_dicts():
            prev = last_close.get(r["ts_code"])
            if prev is not None and r["pre_close"] < prev - 0.005:
                ex_days += 1
            last_close[r["ts_code"]] = r["close"]
    assert ex_days


def test_stock_daily_ohlc_limits_units(batches):
    check_daily_bars(batches, RUN)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_stock_daily_ohlc_limits_units_with_other_seeds(seed):
    run = dict(RUN, seed=seed)
    check_daily_bars(list(generate(**run, task_types=[TaskType.STOCK_BASIC, TaskType.STOCK_DAILY])), run)


def raw_closes(batches):
    return {(r["ts_code"], r["trade_date"]): r for r in rows_of(batches, TaskType.STOCK_DAILY)}


def test_qfq_prices_come_from_adjustment_factors(batches):
    raw = raw_closes(batches)
    qfq = by_type(batches, TaskType.DAILY_BAR_QFQ)
    assert qfq
    for b in qfq:
        rows = b.row_dicts()
        dates = [r["trade_date"] for r in rows]
        assert dates == sorted(dates, reverse=True)  # newest first
        assert dates[0] <= b.params["end_date"] and dates[-1] == b.params["start_date"]
        assert b.params["adj"] == "qfq" and all(r["ts_code"] == b.params["ts_code"] for r in rows)
        anchor = rows[0]["adj_factor"]
        for r in rows:
            daily = raw[(r["ts_code"], r["trade_date"])]
            ratio = anchor / r["adj_factor"]
            for col in ("open", "high", "low", "close", "pre_close"):
                assert r[col] * ratio == pytest.approx(daily[col], abs=0.005 * ratio + 1e-9)
            assert r["vol"] == daily["vol"] and r["amount"] == daily["amount"]
            if r["adj_factor"] == anchor:
                assert r["close"] == daily["close"]
            assert r["change"] == r["close"] - r["pre_close"]  # unrounded, as the SDK leaves it


def test_qfq_history_is_rewritten_by_later_anchors(batches):
    seen = defaultdict(dict)  # key -> {end_date: close}
    order = []
    for b in by_type(batches, TaskType.DAILY_BAR_QFQ):
        order.append((b.params["ts_code"], b.params["end_date"]))
        for r in b.row_dicts():
            seen[(r["ts_code"], r["trade_date"])][b.params["end_date"]] = r["close"]
    twice = [v for v in seen.values() if len(v) > 1]
    assert twice, "some keys are fetched under two anchors"
    assert any(len(set(v.values())) > 1 for v in twice), "an ex-date changes qfq history"
    latest = {}
    late = 0
    for code, end in order:
        late += end < latest.get(code, end)
        latest[code] = max(end, latest.get(code, end))
    assert late, "an older window is fetched again after a newer one"


def test_daily_bar_none_pre_close_is_the_previous_row(batches):
    raw = raw_closes(batches)
    differs = 0
    for b in by_type(batches, TaskType.DAILY_BAR_NONE):
        rows = b.row_dicts()
        oldest = rows[-1]
        assert all(math.isnan(oldest[c]) for c in ("pre_close", "change", "pct_chg"))
        for newer, older in zip(rows, rows[1:]):
            assert newer["pre_close"] == older["close"]
            assert newer["pct_chg"] == round((newer["close"] - older["close"]) / older["close"] * 100, 2)
            daily = raw[(newer["ts_code"], newer["trade_date"])]
            assert [newer[c] for c in ("open", "high", "low", "close", "vol")] == \
                [daily[c] for c in ("open", "high", "low", "close", "vol")]
            differs += newer["pre_close"] != daily["pre_close"]
    assert differs, "on ex-dates pro_bar's pre_close differs from daily's"


# --- statements ------------------------------------------------------------

def test_statements_restated_ytd_and_identities(batches):
    restated = 0
    for task_type in (TaskType.INCOME, TaskType.BALANCESHEET, TaskType.CASHFLOW):
        keys = defaultdict(list)
        for b in by_type(batches, task_type):
            assert b.params.get("period") or b.params.get("ts_code")
            for r in b.row_dicts():
                assert r["end_date"][4:] in ("0331", "0630", "0930", "1231")
                assert r["ann_date"] > r["end_date"] and r["f_ann_date"] >= r["ann_date"]
                assert r["report_type"] == "1"
                keys[(r["ts_code"], r["end_date"], r["report_type"])].append(r)
                if "period" in b.params:
                    assert r["end_date"] == b.params["period"]
        pairs = [rs for rs in keys.values() if {r["update_flag"] for r in rs} == {"0", "1"}]
        for rs in pairs:
            new = max((r for r in rs if r["update_flag"] == "1"), key=lambda r: r["f_ann_date"])
            old = [r for r in rs if r["update_flag"] == "0"]
            assert all(new["f_ann_date"] > r["f_ann_date"] for r in old)
        restated += len(pairs)
    assert restated

    nan_seen = 0
    for r in rows_of(batches, TaskType.BALANCESHEET):
        assert r["total_assets"] == pytest.approx(r["total_liab_hldr_eqy"], abs=0.02)
        assert r["total_assets"] == pytest.approx(r["total_cur_assets"] + r["total_nca"], abs=0.02)
        assert r["total_hldr_eqy_inc_min_int"] == pytest.approx(
            r["total_hldr_eqy_exc_min_int"] + r["minority_int"], abs=0.02)
        nan_seen += math.isnan(r["goodwill"])
    assert nan_seen
    for r in rows_of(batches, TaskType.INCOME):
        assert r["n_income"] == pytest.approx(r["total_profit"] - r["income_tax"], abs=0.02)
        assert r["n_income"] == pytest.approx(r["n_income_attr_p"] + r["minority_gain"], abs=0.02)
    for r in rows_of(batches, TaskType.CASHFLOW):
        assert r["c_cash_equ_end_period"] == pytest.approx(
            r["c_cash_equ_beg_period"] + r["n_incr_cash_cash_equ"], abs=0.02)
        flows = r["n_cashflow_act"] + r["n_cashflow_inv_act"] + r["n_cash_flows_fnc_act"]
        fx = 0.0 if math.isnan(r["eff_fx_flu_cash"]) else r["eff_fx_flu_cash"]
        assert r["n_incr_cash_cash_equ"] == pytest.approx(flows + fx, abs=0.03)


# Figures that no quarter can make negative: their year-to-date sums only grow.
CUMULATIVE = {
    TaskType.INCOME: ("revenue", "total_revenue", "int_income", "int_exp", "comm_income", "comm_exp",
                      "n_commis_income", "oper_cost", "sell_exp", "admin_exp", "rd_exp", "biz_tax_surchg",
                      "total_cogs", "fin_exp_int_exp", "fin_exp_int_inc", "invest_income", "oth_income",
                      "non_oper_income", "non_oper_exp", "income_tax"),
    TaskType.CASHFLOW: ("c_fr_sale_sg", "c_inf_fr_operate_a", "c_paid_goods_s", "c_paid_to_for_empl",
                        "c_paid_for_taxes", "st_cash_out_act", "c_disp_withdrwl_invest", "c_recp_return_invest",
                        "n_recp_disp_fiolta", "stot_inflows_inv_act", "c_pay_acq_const_fiolta", "c_paid_invest",
                        "stot_out_inv_act", "c_recp_borrow", "stot_cash_in_fnc_act", "c_prepay_amt_borr",
                        "c_pay_dist_dpcp_int_exp", "stot_cashout_fnc_act", "depr_fa_coga_dpba",
                        "amort_intang_assets"),
}


# Seed 8 drew securities firms whose year-to-date revenue fell when each
# period's revenue mix was drawn afresh.
@pytest.mark.parametrize("seed", [2, 8, 10])
def test_year_to_date_figures_never_fall_within_a_year(seed):
    batches = generate(stocks=60, days=200, seed=seed, start="20240102", restate_share=0.0,
                       task_types=list(CUMULATIVE))
    series = defaultdict(dict)  # (task type, ts_code, year, column) -> {end_date: value}
    kinds = set()
    for b in batches:
        for r in b.row_dicts():
            kinds.add(r["comp_type"])
            for column in CUMULATIVE[b.task_type]:
                if not math.isnan(r[column]):
                    series[(b.task_type.value, r["ts_code"], r["end_date"][:4], column)][r["end_date"]] = r[column]
    grown = 0
    for key, by_period in series.items():
        values = [by_period[p] for p in sorted(by_period)]
        assert values == sorted(values), (key, by_period)
        grown += len(values) > 2
    assert grown
    assert kinds - {"1"}, "no bank, insurer or broker: the financial statements were not put to the test"


# --- bad rows --------------------------------------------------------------

def test_injected_bad_rows_are_recorded_and_the_rest_unchanged(batches, bad_batches):
    assert len(batches) == len(bad_batches)
    kinds = Counter()
    total = bad = 0
    for good, b in zip(batches, bad_batches):
        assert (good.task_type, good.params) == (b.task_type, b.params)
        rows, clean_rows = b.row_dicts(), good.row_dicts()
        assert len(rows) == len(clean_rows)
        at = {x.index: x for x in b.bad_rows}
        dataset = DATASETS[b.task_type.value]
        for i, (row, clean) in enumerate(zip(rows, clean_rows)):
            if i in at:
                x = at[i]
                kinds[x.kind] += 1
                assert repr(row) == repr(x.row) or (x.column not in row and x.row.get(x.column) is None)
                assert problems(row, dataset), x  # every injected row is really bad
                assert repr({k: v for k, v in row.items() if k != x.column}) == \
                    repr({k: v for k, v in clean.items() if k != x.column})
            else:
                assert repr(row) == repr(clean)
        total += len(rows)
        bad += len(at)
    assert set(kinds) == {"bad_number", "missing_ts_code", "bad_date", "bad_ts_code"}
    assert 0.01 < bad / total < 0.03
    assert any(b.shape == "dict" for b in bad_batches if b.bad_rows)


# --- produce ---------------------------------------------------------------

def test_produce_enqueues_every_batch_with_rising_fetch_times(tmp_path):
    config = load_config(write_config(tmp_path))
    huey, task = build_huey(config)
    try:
        batches = list(generate(stocks=20, days=5, seed=1, start="20240603", bad_share=0.05))
        frozen = dt.datetime(2024, 6, 3, 16, 0, 0)
        counts = produce(task, batches, clock=lambda: frozen)  # a stalled clock
        assert sum(c["tasks"] for c in counts.values()) == len(batches) == huey.pending_count()
        assert counts["stock_daily"]["rows"] == sum(b.rows for b in by_type(batches, TaskType.STOCK_DAILY))
        assert sum(c["bad_rows"] for c in counts.values()) == sum(len(b.bad_rows) for b in batches)
        pending = huey.pending()
        stamps = [t.kwargs["fetched_at"] for t in pending]
        assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)
        first = pending[0]
        assert first.args[0] is TaskType.STOCK_BASIC and first.kwargs["list_status"] == "L"
    finally:
        huey.storage.close()


def test_produce_options_match_generate():
    import inspect

    params = inspect.signature(generate).parameters
    for flag, name, kind, default, help_text in PRODUCE_OPTIONS:
        assert flag == "--" + name.replace("_", "-")
        assert params[name].default == default and isinstance(default, kind) and help_text


def test_stager_produce_runs_from_an_installed_copy(tmp_path):
    """``stager produce`` from a non-editable install, started elsewhere with a config file there.

    An installed copy has no source tree around it: no config/ beside the
    code, and only the packages pyproject.toml lists.
    """
    src, site, work = tmp_path / "src", tmp_path / "site", tmp_path / "work"
    # Build from a copy so the build leaves nothing in this checkout.
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(
        ".git", ".venv", "data", "build", "dist", "*.egg-info", "__pycache__", "tests", "benchmarks"))
    build = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
                            "--no-build-isolation", "--target", str(site), str(src)],
                           capture_output=True, text=True, timeout=120)
    assert build.returncode == 0, build.stdout + build.stderr
    work.mkdir()
    shutil.copy(CONFIG_DIR / "datasets.yaml", work / "datasets.yaml")
    (work / "duckstage.yaml").write_text("data_dir: data\ndatasets: datasets.yaml\n")
    env = {**os.environ, "PYTHONPATH": str(site)}
    env.pop("DUCKSTAGE_CONFIG", None)

    def run(*args):
        return subprocess.run([sys.executable, *args], cwd=str(work), env=env, capture_output=True, text=True,
                              timeout=120)

    where = run("-c", "import stager.produce; print(stager.produce.__file__)")
    assert where.stdout.strip().startswith(str(site)), where.stdout + where.stderr
    small = dict(stocks=20, days=3, seed=1, start="20240603")
    done = run("-m", "stager", "--config", "duckstage.yaml", "produce",
               *(f"--{k}={v}" for k, v in small.items()))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "stock_daily:" in done.stdout

    huey, _ = build_huey(load_config(work / "duckstage.yaml"))
    try:
        assert huey.pending_count() == len(list(generate(**small)))
    finally:
        huey.storage.close()


def test_stager_produce_generates_only_the_task_types_the_configuration_declares(tmp_path):
    # A datasets file without the statements: the queue would refuse them.
    raw = yaml.safe_load((CONFIG_DIR / "datasets.yaml").read_text(encoding="utf-8"))
    for name in ("income", "balancesheet", "cashflow"):
        del raw["datasets"][name]
    (tmp_path / "datasets.yaml").write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    (tmp_path / "duckstage.yaml").write_text("data_dir: data\ndatasets: datasets.yaml\n")
    run = dict(stocks=10, days=12, seed=1, start="20240425")  # the annual and Q1 reports fall due
    done = subprocess.run([sys.executable, "-m", "stager", "--config", "duckstage.yaml", "produce",
                           *(f"--{k}={v}" for k, v in run.items())],
                          cwd=str(tmp_path), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr

    declared = [TaskType.STOCK_BASIC, TaskType.STOCK_DAILY, TaskType.DAILY_BAR_QFQ, TaskType.DAILY_BAR_NONE]
    assert {b.task_type for b in generate(**run)} > set(declared)  # the run has statements to leave out
    config = load_config(tmp_path / "duckstage.yaml")
    huey, _ = build_huey(config)
    try:
        assert Counter(t.args[0].value for t in huey.pending()) == \
            Counter(b.task_type.value for b in generate(**run, task_types=declared))
    finally:
        huey.storage.close()


# --- the real-downloader template ------------------------------------------

# A stand-in for the tushare package: the calls the template makes, answered from memory.
FAKE_TUSHARE = """\
from stager.produce import FIELDS
from stager.results import TaskType


class Pro:
    def stock_basic(self, exchange, list_status, fields):
        if fields == "ts_code":
            return {"ts_code": ["600000.SH", "830000.BJ"]}
        return [{"ts_code": "600000.SH", "list_status": list_status}]

    def trade_cal(self, exchange, start_date, end_date, is_open):
        return {"cal_date": ["20240103", "20240102"]}

    def daily(self, trade_date, fields):
        assert fields.split(",") == list(FIELDS[TaskType.STOCK_DAILY]), fields
        return [{"ts_code": "600000.SH", "trade_date": trade_date}]

    def _statement(self, period, report_type, fields):
        return [{"ts_code": "600000.SH", "end_date": period}]

    income_vip = balancesheet_vip = cashflow_vip = _statement


def pro_api(token):
    assert token == "a-token", token
    return Pro()


def pro_bar(api, adj, freq, asset, ts_code, start_date, end_date, adjfactor=False):
    return None if ts_code.startswith("8") else [{"ts_code": ts_code, "adj": adj}]
"""

# Imports the template as a downloader would, then runs its main without the pauses.
RUN_TEMPLATE = """\
import importlib.util
import sys

spec = importlib.util.spec_from_file_location("tushare_producer", sys.argv[1])
template = importlib.util.module_from_spec(spec)
spec.loader.exec_module(template)
print("tushare imported with the template:", "tushare" in sys.modules, flush=True)
template.PAUSE = 0
template.main(sys.argv[2:])
"""


def test_tushare_template_imports_without_tushare_and_enqueues_each_call_with_its_request(tmp_path):
    (tmp_path / "fake").mkdir()
    (tmp_path / "fake" / "tushare.py").write_text(FAKE_TUSHARE)
    (tmp_path / "run_template.py").write_text(RUN_TEMPLATE)
    path = write_config(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "fake"), "TUSHARE_TOKEN": "a-token",
           "DUCKSTAGE_CONFIG": str(path)}
    done = subprocess.run([sys.executable, str(tmp_path / "run_template.py"),
                           str(REPO / "examples" / "tushare_producer.py"), "20240102", "20240405"],
                          env=env, cwd=str(tmp_path), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    # The fake is importable, so this fails if the template imported tushare at module level.
    assert "tushare imported with the template: False" in done.stdout, done.stdout

    huey, _ = build_huey(load_config(path))
    try:
        tasks = huey.pending()
    finally:
        huey.storage.close()
    assert all("fetched_at" in task.kwargs for task in tasks)  # stamped by the task at enqueue
    enqueued = [(task.args[0], task.args[1].to_pylist(), {k: v for k, v in task.kwargs.items() if k != "fetched_at"})
                for task in tasks]
    window = {"ts_code": "600000.SH", "start_date": "20240102", "end_date": "20240405"}
    statement = {"period": "20240331", "report_type": "1"}
    assert enqueued == [
        *[(TaskType.STOCK_BASIC, [{"ts_code": "600000.SH", "list_status": s}], {"exchange": "", "list_status": s})
          for s in ("L", "D", "P")],
        *[(TaskType.STOCK_DAILY, [{"ts_code": "600000.SH", "trade_date": d}], {"trade_date": d})
          for d in ("20240102", "20240103")],  # in date order, whatever order the calendar came in
        (TaskType.DAILY_BAR_QFQ, [{"ts_code": "600000.SH", "adj": "qfq"}], {"adj": "qfq", "adjfactor": True, **window}),
        (TaskType.DAILY_BAR_NONE, [{"ts_code": "600000.SH", "adj": None}], window),  # 830000.BJ: pro_bar -> None
        *[(task_type, [{"ts_code": "600000.SH", "end_date": "20240331"}], statement)
          for task_type in (TaskType.INCOME, TaskType.BALANCESHEET, TaskType.CASHFLOW)],
    ]
