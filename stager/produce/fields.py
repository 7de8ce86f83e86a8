"""The fields a downloader requests (``fields=...``) per task type, in Tushare's order."""

from ..results import TaskType

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
