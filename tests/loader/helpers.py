"""The loader tests' material: configurations, sealed files, rows, queries, and the loader as a subprocess.

Staged files are made the way the stager makes them (``duckstage.staging.seal``
with the dataset's Arrow schema and footer), without the stager's service.
"""

import datetime as dt
import os
import signal
import subprocess
import sys
from pathlib import Path

import duckdb
import pyarrow as pa

from duckstage import staging
from duckstage.config import from_mapping
from duckstage.staging import StagedFile
from loader.load import reload, resolve_paths
from loader.warehouse import Warehouse
from tests.helpers import CONFIG_DIR, eventually, write_config

BASE = dt.datetime(2025, 1, 6, 8, 0, tzinfo=dt.timezone.utc)
FAST = {"retry_delay": 0.05, "retry_max_delay": 0.2, "idle_release": 0, "rescan_interval": 0.2}


def fetched(minutes):
    """A _fetched_at value: UTC naive, ``minutes`` after BASE."""
    return (BASE + dt.timedelta(minutes=minutes)).replace(tzinfo=None)


def daily(code, day, close, minutes=0, task="task-1", **extra):
    """One stock_daily row (day = day of January 2025)."""
    row = {"ts_code": code, "trade_date": dt.date(2025, 1, day), "open": close - 0.5, "high": close + 1,
           "low": close - 1, "close": close, "pre_close": None, "change": None, "pct_chg": None,
           "vol": 100.0, "amount": 1000.0, "ah_vol": None, "ah_amount": None,
           "_task_id": task, "_fetched_at": fetched(minutes)}
    row.update(extra)
    return row


class Stage:
    """Seal files into ``staging/<task_type>/`` in seal order (one second apart)."""

    def __init__(self, config):
        self.config = config
        self.seq = 0

    def __call__(self, task_type, rows=None, table=None, instance="t1", name=None):
        self.seq += 1
        dataset = self.config.datasets[task_type]
        if table is None:
            table = pa.Table.from_pylist(rows, schema=dataset.arrow_schema)
        sf = StagedFile.new(task_type, instance, self.seq, now=BASE + dt.timedelta(seconds=self.seq))
        folder = self.config.staging_dir / (name or task_type)
        meta = staging.footer_metadata(dataset, len(table), {"task-1"}, instance, sf.created_at, 1)
        return staging.seal(table, folder / sf.name, meta)


def loader_config(tmp_path, **loader):
    """A configuration in memory (data in tmp_path/data) with quick loader retries and scans."""
    return from_mapping({"loader": {**FAST, **loader}}, "<test>", CONFIG_DIR, tmp_path)


def write_loader_config(tmp_path, **loader):
    """The YAML twin of ``loader_config``, for subprocesses; returns its path."""
    return write_config(tmp_path, log_level="INFO", loader={**FAST, **loader})


def query(config, sql, params=None):
    # Same configuration as the loader's, so it shares the loader's open database in this process.
    con = duckdb.connect(str(config.loader.database), config={"storage_compatibility_version": "v1.5.0"})
    try:
        return con.execute(sql, params or []).fetchall()
    finally:
        con.close()


def table(config, name, cols="*", order="ts_code, trade_date"):
    return query(config, f"SELECT {cols} FROM {name} ORDER BY {order}")


def files_in(folder, pattern="*.parquet"):
    return sorted(p.name for p in Path(folder).rglob(pattern))


def reload_files(config, patterns, force=False):
    """``reload`` of the files the patterns name, into the configuration's warehouse: the outcome."""
    wh = Warehouse(config.loader.database).open()
    try:
        return reload(wh, config, resolve_paths(config, [str(p) for p in patterns]), force=force)
    finally:
        wh.close()


def loader_cmd(config_path, *args):
    return [sys.executable, "-m", "loader", "--config", str(config_path), *args]


def run_cli(config_path, *args, timeout=60):
    return subprocess.run(loader_cmd(config_path, *args), capture_output=True, text=True, timeout=timeout,
                          cwd=str(config_path.parent))


def kill_9_lives(config_path, staging_dir, rng, lives, first=(0.5, 1.0)):
    """``loader run``, killed with SIGKILL at random moments, life after life, until staging/ is empty.

    Returns how many kills landed mid-work (some files loaded, some not).
    """
    mid_work = 0
    for life in range(lives):
        before = len(files_in(staging_dir))
        if not before:
            break
        proc = subprocess.Popen(loader_cmd(config_path, "run"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # Lives grow longer so the run always ends, whatever the machine's speed.
        eventually(lambda: proc.poll() is not None, rng.uniform(*first) + 0.1 * life)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        mid_work += 0 < len(files_in(staging_dir)) < before
    return mid_work
