"""Latency when the queue is quiet: enqueue -> committed for a lone task and for the daily update.

    python benchmarks/bench_latency.py                  # 5,400 tasks, as fast as the producer goes
    python benchmarks/bench_latency.py --rate 50        # a producer paced at 50 tasks a second

``stager run`` and ``loader run`` run on config/duckstage.yaml as shipped (only
``data_dir`` moves to a temporary folder). First a lone task (three rows of
``pro_bar``) is enqueued into the idle pipeline: it waits for
``stager.batch_timeout``, then for the loader. Then the daily update a
downloader makes after the close: one small ``pro_bar`` (qfq) task per stock,
``--stocks`` tasks of 1 to 5 rows, enqueued at ``--rate`` tasks a second (0:
as fast as the producer can).

A task is committed when the file holding it reaches ``archive/``, which the
loader moves it to only after the transaction that merged it has committed;
the archive is polled every 20 ms, and the file's footer names the tasks it
holds. Prints the median, p90, p99 and largest enqueue -> committed time, and
the files they came in. Not a test: nothing is asserted on timing.
"""

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from bench_e2e import write_config  # noqa: E402
from duckstage import staging  # noqa: E402
from market import Market  # noqa: E402
from stager.demo import Child  # noqa: E402
from stager.tasks import build_huey  # noqa: E402


class Commits:
    """Task id -> when the file holding it was first seen in the archive."""

    def __init__(self, archive):
        self.archive, self.seen, self.at, self.files = archive, set(), {}, 0

    def poll(self):
        now = time.time()
        for path in self.archive.rglob("*.parquet"):
            if path not in self.seen:
                self.seen.add(path)
                self.files += 1
                for task_id in staging.read_footer(path)["task_ids"]:
                    self.at.setdefault(task_id, now)


def pro_bar(market, i, rows, rng):
    """A small pro_bar(adj='qfq') fetch of stock ``i``: its last ``rows`` trade dates, newest first."""
    days = market.ymd[-rows:][::-1]
    close = np.round(rng.uniform(3, 80, rows), 2)
    return pa.table({"ts_code": pa.array([market.codes[i]] * rows), "trade_date": pa.array(days),
                     "open": close, "high": close * 1.01, "low": close * 0.99, "close": close,
                     "pre_close": close, "change": np.zeros(rows), "pct_chg": np.zeros(rows),
                     "vol": rng.uniform(1e3, 1e6, rows), "amount": rng.uniform(1e3, 1e6, rows),
                     "adj_factor": np.ones(rows)}), str(days[0])


def wait(commits, ids, children, timeout):
    deadline = time.monotonic() + timeout
    while not all(i in commits.at for i in ids):
        for child in children:
            if not child.alive():
                sys.exit(f"{child.name} exited ({child.proc.returncode}); see {child.log_path}")
        if time.monotonic() > deadline:
            sys.exit(f"{sum(i not in commits.at for i in ids)} task(s) not committed after {timeout:.0f} s")
        time.sleep(0.02)
        commits.poll()


def percentile(values, p):
    return float(np.percentile(values, p))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stocks", type=int, default=5400, help="tasks of the daily update, one per stock (default 5,400)")
    ap.add_argument("--rate", type=float, default=0, help="tasks enqueued a second (default 0: as fast as it can)")
    ap.add_argument("--no-lone", action="store_true", help="skip the lone task (it waits batch_timeout)")
    args = ap.parse_args()
    if args.stocks < 1 or args.rate < 0:
        ap.error("--stocks is positive and --rate is 0 or more")

    work = Path(tempfile.mkdtemp(prefix="bench_latency-"))
    market = Market(args.stocks, years=0.05)
    rng = np.random.default_rng(0)
    try:
        config_path, config = write_config(work)
        print(f"{os.cpu_count()} CPUs, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}; duckdb"
              f" {duckdb.__version__}; config/duckstage.yaml as shipped (batch_size {config.stager.batch.batch_size:,},"
              f" batch_timeout {config.stager.batch.batch_timeout:g} s)")
        huey, enqueue = build_huey(config)
        stager = Child("stager", config_path, work, cwd=work)
        loader = Child("loader", config_path, work, cwd=work)
        commits = Commits(config.archive_dir)
        try:
            time.sleep(3)  # both started and idle
            if not args.no_lone:
                table, end = pro_bar(market, 0, 3, rng)
                at = time.time()
                task_id = enqueue("daily_bar_qfq", table, ts_code=market.codes[0], end_date=end).id
                wait(commits, [task_id], (stager, loader), 300)
                print(f"a lone task: committed {commits.at[task_id] - at:.1f} s after its enqueue"
                      f" (batch_timeout {config.stager.batch.batch_timeout:g} s, then the loader)")
            enqueued, files_before = {}, commits.files
            started = time.time()
            for i in range(args.stocks):
                if args.rate:
                    time.sleep(max(0.0, started + i / args.rate - time.time()))
                table, end = pro_bar(market, i, int(rng.integers(1, 6)), rng)
                enqueued[enqueue("daily_bar_qfq", table, ts_code=market.codes[i], end_date=end).id] = time.time()
                if i % 50 == 0:
                    commits.poll()
            produced = time.time() - started
            wait(commits, list(enqueued), (stager, loader), 600)
        finally:
            codes = stager.stop(), loader.stop()
            huey.storage.close()
        if codes != (0, 0):
            sys.exit(f"stager/loader exit codes {codes}; see the logs in {work}")
        lat = [commits.at[i] - t for i, t in enqueued.items()]
        done = max(commits.at[i] for i in enqueued) - started
        print(f"daily update: {len(enqueued):,} pro_bar tasks of 1-5 rows enqueued in {produced:.1f} s"
              f" ({len(enqueued) / produced:,.0f} tasks/s), all committed {done:.1f} s after the first enqueue,"
              f" in {commits.files - files_before} files")
        print(f"enqueue -> committed: median {statistics.median(lat):.2f} s, p90 {percentile(lat, 90):.2f} s,"
              f" p99 {percentile(lat, 99):.2f} s, max {max(lat):.2f} s")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
