"""How a real Tushare downloader hands its fetches to duckstage.

A template, not part of the package: copy it into your downloader. Each
Tushare call's result goes, unchanged, to the Huey task
``process_fetched_data(task_type, data, **request_params)``; duckstage
validates, cleans (YYYYMMDD -> DATE, NaN -> NULL), stages and loads it.

Rules that matter (the Tushare facts behind them are in docs/tushare.md):

- Pass the request parameters as keyword arguments. They travel with the rows
  and some decide which version of a row wins: for ``daily_bar_qfq`` the
  ``end_date`` is the qfq anchor, so a later window rewrites older qfq prices
  and an older window replayed late cannot roll them back.
- Ask for explicit ``fields=``: several columns are not returned by default
  (``stock_basic.list_status``/``delist_date``, ``income.credit_impa_loss``...).
- Hand over the DataFrame as Tushare returns it (pandas is optional for
  duckstage; a list of dicts, a dict of columns or a pyarrow Table work too).
  Do not fix dates or NaN yourself.
- ``pro_bar`` accepts one ts_code per call and returns None when it finds
  nothing: skip those.

Run it with a token and a duckstage configuration (the same one the stager
uses, so both agree on the queue)::

    pip install tushare
    TUSHARE_TOKEN=... DUCKSTAGE_CONFIG=config/duckstage.yaml \\
        python examples/tushare_producer.py 20240102 20240131

Importing this file needs neither tushare nor a token; ``main`` does.
"""

import os
import sys
import time

from stager import TaskType

BAR_FIELDS = "ts_code,trade_date,open,high,low,close,pre_close,change,pct_chg,vol,amount"
BASIC_FIELDS = ("ts_code,symbol,name,area,industry,fullname,enname,cnspell,market,exchange,"
                "curr_type,list_status,list_date,delist_date,is_hs,act_name,act_ent_type")
# Statement fields: the key, the version columns and what you store (see config/datasets.yaml).
STATEMENT_HEAD = "ts_code,ann_date,f_ann_date,end_date,report_type,comp_type,end_type,update_flag"
INCOME_FIELDS = STATEMENT_HEAD + (",basic_eps,diluted_eps,total_revenue,revenue,operate_profit,"
                                  "total_profit,income_tax,n_income,n_income_attr_p,minority_gain,"
                                  "credit_impa_loss,oth_income,asset_disp_income")
BALANCESHEET_FIELDS = STATEMENT_HEAD + (",total_share,money_cap,total_cur_assets,total_nca,total_assets,"
                                        "total_cur_liab,total_ncl,total_liab,minority_int,"
                                        "total_hldr_eqy_exc_min_int,total_hldr_eqy_inc_min_int,"
                                        "total_liab_hldr_eqy")
CASHFLOW_FIELDS = STATEMENT_HEAD + (",net_profit,n_cashflow_act,n_cashflow_inv_act,n_cash_flows_fnc_act,"
                                    "n_incr_cash_cash_equ,c_cash_equ_beg_period,c_cash_equ_end_period")

PAUSE = 0.15  # seconds between calls: stay under Tushare's per-minute limit


def fetch_stock_basic(pro, enqueue):
    # One call per list_status: the API's default filter is L only.
    for status in ("L", "D", "P"):
        params = {"exchange": "", "list_status": status}
        df = pro.stock_basic(**params, fields=BASIC_FIELDS)
        enqueue(TaskType.STOCK_BASIC, df, **params)
        time.sleep(PAUSE)


def fetch_daily(pro, enqueue, trade_date):
    # The whole market for one day: at most 6000 rows, one call.
    df = pro.daily(trade_date=trade_date, fields=BAR_FIELDS)
    enqueue(TaskType.STOCK_DAILY, df, trade_date=trade_date)


def fetch_bars(ts, pro, enqueue, ts_code, start_date, end_date):
    # pro_bar computes qfq on the client: prices = raw * adj_factor / adj_factor(anchor),
    # anchor = the window's last trading day. Keep adj_factor (adjfactor=True).
    params = {"ts_code": ts_code, "start_date": start_date, "end_date": end_date}
    qfq = ts.pro_bar(api=pro, adj="qfq", adjfactor=True, freq="D", asset="E", **params)
    if qfq is not None:
        enqueue(TaskType.DAILY_BAR_QFQ, qfq, adj="qfq", adjfactor=True, **params)
    # adj=None: SDK >= 1.4.8 recomputes pre_close from the previous row (NaN on the oldest row)
    raw = ts.pro_bar(api=pro, adj=None, freq="D", asset="E", **params)
    if raw is not None:
        enqueue(TaskType.DAILY_BAR_NONE, raw, **params)
    time.sleep(PAUSE)


def fetch_statements(pro, enqueue, period, ts_code=None):
    # Whole market with the *_vip APIs (per period), or one stock with the plain ones.
    # Restated reports come back as two rows (update_flag '0' and '1'): send both.
    calls = ((TaskType.INCOME, "income", INCOME_FIELDS),
             (TaskType.BALANCESHEET, "balancesheet", BALANCESHEET_FIELDS),
             (TaskType.CASHFLOW, "cashflow", CASHFLOW_FIELDS))
    for task_type, api, fields in calls:
        if ts_code:
            params = {"ts_code": ts_code, "period": period}
            df = getattr(pro, api)(**params, fields=fields)
        else:
            params = {"period": period, "report_type": "1"}
            df = getattr(pro, api + "_vip")(**params, fields=fields)
        enqueue(task_type, df, **params)
        time.sleep(PAUSE)


def main(argv=None):
    import tushare as ts  # only here: importing the template needs no tushare

    from stager.tasks import process_fetched_data  # the Huey task, from $DUCKSTAGE_CONFIG

    argv = sys.argv[1:] if argv is None else argv
    start_date, end_date = (argv + ["20240102", "20240131"])[:2]
    pro = ts.pro_api(os.environ["TUSHARE_TOKEN"])

    def enqueue(task_type, data, **params):
        # Enqueueing returns at once; the stager (or your own Huey consumer) runs the task.
        process_fetched_data(task_type, data, **params)

    fetch_stock_basic(pro, enqueue)
    calendar = pro.trade_cal(exchange="SSE", start_date=start_date, end_date=end_date, is_open="1")
    for trade_date in sorted(calendar["cal_date"]):
        fetch_daily(pro, enqueue, trade_date)
        time.sleep(PAUSE)
    listed = pro.stock_basic(exchange="", list_status="L", fields="ts_code")
    for ts_code in listed["ts_code"]:
        fetch_bars(ts, pro, enqueue, ts_code, start_date, end_date)
    for period in sorted({d[:4] + q for d in (start_date, end_date) for q in ("0331", "0630", "0930", "1231")
                          if d[:4] + q <= end_date}):
        fetch_statements(pro, enqueue, period)


if __name__ == "__main__":
    main()
