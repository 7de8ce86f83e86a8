"""Financial statements: disclosure seasons, reports and restatements, the figures.

income, balancesheet and cashflow as income_vip/balancesheet_vip/cashflow_vip
return them (report_type '1'), fetched per period for the whole market.
"""

import bisect
import datetime as dt
import random
import zlib
from collections import defaultdict
from dataclasses import dataclass

from ..results import TaskType
from .calendar import to_date, to_ymd
from .fields import FIELDS, STATEMENTS

NAN = float("nan")

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
        if annual >= to_ymd(begin):
            ann = to_date(annual)
    correction = corrected = None
    bump = 0.0
    if r.random() < restate_share:
        correction = to_ymd(ann + dt.timedelta(days=r.randrange(5, 90)))
        corrected = r.choice((STATEMENTS, STATEMENTS, (TaskType.INCOME,), (TaskType.BALANCESHEET,),
                              (TaskType.CASHFLOW,)))
        bump = 0.0 if r.random() < 0.25 else r.choice((-1, 1)) * r.uniform(0.005, 0.08)
    return _Report(to_ymd(ann), correction, corrected or (), bump)


def _r2(x):
    """Round half away from zero to 2 dp (NaN stays NaN); cheaper than round()."""
    return int(x * 100 + (0.5 if x >= 0 else -0.5)) / 100 if x == x else x


def _nz(x):
    return 0.0 if x != x else x


def _seed(*parts):
    return zlib.crc32(":".join(map(str, parts)).encode())


_QUARTER_SHARES = (0.22, 0.24, 0.25, 0.29)  # of a year's revenue, by quarter
_QUARTER_ENDS = ("0331", "0630", "0930", "1231")


def _statements(seed, s, period, bump=0.0):
    """income, balancesheet and cashflow figures of one period (report_type 1).

    Income and cash flows are year to date, as the reports state them: the
    sum of the year's quarters up to this one, each quarter drawn on its own.
    A figure that cannot be negative in a quarter (revenue, a cost) therefore
    never falls from one report of a year to the next, whatever the draws.
    Totals are derived from rounded parts, so the accounting identities hold
    to the fen in each quarter and so in the sums. ``bump`` scales the
    period's figures for a restated version.
    """
    year, quarter = int(period[:4]), int(period[4:6]) // 3
    years = year - 2023
    size = (1 + s.growth) ** years * (1 + 0.1 * (random.Random(_seed(seed, s.code, year)).random() - 0.5))
    quarters = []
    for q in range(quarter):
        u = random.Random(_seed(seed, s.code, f"{year}{_QUARTER_ENDS[q]}", "flows")).random
        share = _QUARTER_SHARES[q]
        rev = s.revenue * size * share * (1 + 0.04 * (u() - 0.5)) * (1 + bump)
        quarters.append(_quarter_flows(u, s, rev, share))
    i = _year_to_date([q[0] for q in quarters])
    c = _year_to_date([q[1] for q in quarters])
    attr = i["n_income_attr_p"]
    i["basic_eps"] = round(attr / s.shares, 4)
    i["diluted_eps"] = i["basic_eps"] if not s.minority else round(attr / s.shares * 0.99, 4)
    c["c_cash_equ_beg_period"] = beg = _r2(s.assets * 0.12 * (1 + s.growth) ** years)
    c["c_cash_equ_end_period"] = _r2(beg + c["n_incr_cash_cash_equ"])
    u = random.Random(_seed(seed, s.code, period)).random
    return i, _balance(u, s, years + quarter / 4, bump, c["c_cash_equ_end_period"]), c


def _year_to_date(quarters):
    """Sum each figure over the quarters; NaN where no quarter has it."""
    out = {}
    for name in quarters[0]:
        values = [q[name] for q in quarters if q[name] == q[name]]
        out[name] = _r2(sum(values)) if values else NAN
    return out


def _quarter_flows(u, s, rev, t):
    """One quarter's income and cash flow figures, from its revenue base ``rev``.

    ``t`` is the quarter's share of the year's time-proportional flows.
    """
    fin = s.comp_type != "1"
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
    c["free_cashflow"] = _r2(c["n_cashflow_act"] - capex)
    return i, c


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


def statement_rows(seed, s, period, rep, today):
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


def statement_events(cal):
    """{day index: [period, ...]}: whole-market fetches mid-season and after each deadline."""
    first, last = to_date(cal[0]), to_date(cal[-1])
    events = defaultdict(list)
    for year in range(first.year - 1, last.year + 1):
        for mmdd in _SEASONS:
            period = f"{year}{mmdd}"
            begin, deadline = _season(period)
            for when in (begin + (deadline - begin) / 2, deadline + dt.timedelta(days=1)):
                di = bisect.bisect_left(cal, to_ymd(when))
                if di < len(cal) and when >= first:
                    events[di].append(period)
    return {di: sorted(ps) for di, ps in events.items()}


def fetch_statements(emit, seed, universe, period, day, reports, restate_share):
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
        for t, rows in statement_rows(seed, s, period, rep, day).items():
            found[t].extend(rows)
    for t in STATEMENTS:
        yield from emit.batches(t, found[t], {"period": period, "report_type": "1"})
