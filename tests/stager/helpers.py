import datetime as dt
import json

import pyarrow.parquet as pq

from duckstage import staging
from stager.deadletter import read_records
from tests.helpers import wait_for


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


def redis_host(root, name, redis_url, lease_timeout=2, **sections):
    """A configuration for one "host" on a shared Redis queue: ``(path, config)``, data in ``root/name/data``.

    Several of them, each with its own data folder, are several stagers on several hosts.
    """
    from duckstage.config import load_config
    from tests.helpers import write_config

    huey = {"backend": "redis", "url": redis_url, "lease_timeout": lease_timeout, **sections.pop("huey", {})}
    path = write_config(root / name, huey=huey, **sections)
    return path, load_config(path)


def stager_status(config):
    """The running stager's status snapshot (data/run/stager.json), or None."""
    try:
        return json.loads((config.run_dir / "stager.json").read_text())
    except (OSError, ValueError):
        return None


def wait_running(config, proc):
    """Until the stager reports itself running (its signal handlers are installed by then); its snapshot."""
    def running():
        status = stager_status(config)
        return status if status and status["pid"] == proc.proc.pid and status["state"] == "running" else None
    return wait_for(running, timeout=30, message="stager running")
