import datetime as dt

import pyarrow.parquet as pq

from duckstage import staging
from stager.deadletter import read_records


def daily_rows(n, day="20240102", start=0, close=10.2, exchange="SH"):
    return [dict(ts_code=f"{600000 + start + i:06d}.{exchange}", trade_date=day, open=10.0, high=10.5,
                 low=9.9, close=close, pre_close=10.0, change=0.2, pct_chg=2.0, vol=1000.5, amount=1020.3)
            for i in range(n)]


def staged_paths(config, task_type=None):
    names = [task_type] if task_type else config.datasets.names
    return [p for name in names for p in staging.sealed_files(config.staging_dir / name)]


def staged_rows(config, task_type):
    rows = []
    for path in staged_paths(config, task_type):
        rows += pq.read_table(path).to_pylist()
    return rows


def staged_keys(config, task_type="stock_daily"):
    return {(r["ts_code"], r["trade_date"]) for r in staged_rows(config, task_type)}


def deadletters(config):
    return list(read_records(config.deadletter_dir))


def d(s):
    return dt.datetime.strptime(s, "%Y%m%d").date()
