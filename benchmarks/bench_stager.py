"""Stager throughput and memory: enqueued 1000-row tasks -> sealed Parquet files.

    python benchmarks/bench_stager.py --rows 1000000

Enqueues ``rows`` rows of stock_daily as 1000-row tasks (lists of dicts, as a
producer sends them) into a fresh SqliteHuey file, then runs ``stager run`` as
a subprocess and times it from start until every row is sealed. Prints rows
per second, the stager's peak resident memory, and, measured in the same run,
the rates of the path's parts on their own (SqliteHuey read + unpickle, rows to
Arrow, Parquet write) as a baseline.
"""

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from duckstage import staging  # noqa: E402
from stager import TaskType  # noqa: E402
from duckstage.config import load_config  # noqa: E402
from stager.results import to_rows  # noqa: E402
from stager.tasks import build_huey  # noqa: E402


def task_rows(i, n):
    day = f"2024{1 + i // 28 % 12:02d}{1 + i % 28:02d}"
    return [dict(ts_code=f"{600000 + j:06d}.SH", trade_date=day, open=10.0 + j % 7, high=11.0 + j % 7,
                 low=9.0 + j % 7, close=10.5 + j % 7, pre_close=10.1, change=0.4, pct_chg=3.96,
                 vol=1000.5 + j, amount=1020.3 + j) for j in range(n)]


def peak_rss(proc, stop_when):
    peak, p = 0, psutil.Process(proc.pid)
    while not stop_when():
        try:
            peak = max(peak, p.memory_info().rss)
        except psutil.NoSuchProcess:
            break
        time.sleep(0.05)
    return peak


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--task-rows", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=100_000)
    ap.add_argument("--workers", type=int, default=4)
    args = ap.parse_args()
    tasks = args.rows // args.task_rows

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cfg_path = tmp / "duckstage.yaml"
        cfg_path.write_text(yaml.safe_dump({
            "data_dir": str(tmp / "data"), "datasets": str(REPO / "config" / "datasets.yaml"),
            "log_level": "WARNING",
            "stager": {"batch_size": args.batch_size, "worker_threads": args.workers, "batch_timeout": 5}}))
        config = load_config(cfg_path)
        huey, enqueue = build_huey(config)
        t0 = time.perf_counter()
        for i in range(tasks):
            enqueue(TaskType.STOCK_DAILY, task_rows(i, args.task_rows))
        print(f"enqueued {tasks} tasks x {args.task_rows} rows in {time.perf_counter() - t0:.1f}s "
              f"(producer side, incl. the conversion of row dicts to Arrow; not counted below)")

        # Baseline parts, measured here on the same data.
        sample = huey.storage.enqueued_items(limit=min(tasks, 200))
        t0 = time.perf_counter()
        decoded = [huey.deserialize_task(bytes(d)) for d in sample]
        read_rate = len(sample) * args.task_rows / (time.perf_counter() - t0)
        raw = [task_rows(i, args.task_rows) for i in range(min(tasks, 200))]
        t0 = time.perf_counter()
        tables = [to_rows(r) for r in raw]
        arrow_rate = len(tables) * args.task_rows / (time.perf_counter() - t0)
        big = pa.concat_tables(tables)
        t0 = time.perf_counter()
        pq.write_table(big, tmp / "x.parquet", compression="zstd", row_group_size=len(big))
        parquet_rate = len(big) / (time.perf_counter() - t0)
        del decoded, tables, big, sample, raw

        queued = huey.storage.queue_size()
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "stager", "--config", str(cfg_path), "run"],
                                cwd=tmp)

        def done():
            if proc.poll() is not None:
                return True
            return huey.storage.queue_size() == 0 and huey.storage.lease_count() == 0

        peak = peak_rss(proc, done)
        elapsed = time.perf_counter() - t0
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        files = [p for t in config.datasets.names for p in staging.sealed_files(config.staging_dir / t)]
        sealed_rows = sum(pq.read_metadata(p).num_rows for p in files)
        assert queued == tasks
        print(f"stager: {sealed_rows:,} rows in {len(files)} files, {elapsed:.2f}s (incl. ~0.5s start-up) "
              f"-> {sealed_rows / elapsed:,.0f} rows/s; peak RSS {peak / 2**20:.0f} MiB "
              f"({args.workers} workers, batch_size {args.batch_size:,})")
        print(f"baseline parts, one thread: row dicts to Arrow (producer side) {arrow_rate:,.0f} rows/s, "
              f"SqliteHuey read+unpickle {read_rate:,.0f} rows/s, Parquet write {parquet_rate:,.0f} rows/s")
        print(f"ratio stager / (read+unpickle then Parquet write, serial): "
              f"{sealed_rows / elapsed / (1 / (1 / read_rate + 1 / parquet_rate)):.2f}")
        huey.storage.close()
        if os.environ.get("BENCH_STRICT") and sealed_rows != tasks * args.task_rows:
            sys.exit("rows missing")


if __name__ == "__main__":
    main()
