"""End to end: enqueued 1000-row tasks -> committed warehouse rows, and the design it replaces.

    python benchmarks/bench_e2e.py                       # 1M rows, 5 baseline batches
    python benchmarks/bench_e2e.py --rows 200000 --baseline-batches 3

1. Enqueues ``--rows`` stock_daily rows as tasks of exactly ``--task-rows``
   (1000) rows into a fresh SqliteHuey file (not timed). The rows are the
   synthetic producer's whole-market daily bars (``generate(...,
   task_types=["stock_daily"])``: realistic prices, volumes, NaN-free), cut
   into tasks of exactly 1000 rows rather than one fetch per trade date, so
   every task has the size the goal is stated for. Every key (ts_code,
   trade_date) is new: an initial load into an empty warehouse.
2. Starts ``stager run`` and ``loader run`` as subprocesses, on
   config/duckstage.yaml as shipped (its data in a temporary folder;
   ``--batch-size`` and ``--workers`` override), and times from
   their start to the moment every row is committed: a sealed file is
   archived only after the transaction that merged it has committed, so the
   rows of the archived files' footers are the committed rows. Both
   processes' resident memory is sampled with psutil every 50 ms. Afterwards
   the warehouse and the manifest are checked to hold every row.
3. The baseline, in the same run: a fresh DuckDB file with the same table
   (declared columns, PRIMARY KEY (ts_code, trade_date)) and each 1000-row
   batch upserted by ``executemany("INSERT ... ON CONFLICT DO UPDATE SET
   ...")`` in its own transaction, with values already typed (dates as dates,
   NaN as NULL), so the baseline is not charged for cleaning. It is too slow
   to run on all rows: ``--baseline-batches`` batches are timed and the rate
   is extrapolated.

Prints rows per second for both, the ratio and the peak memory. Not a test:
nothing is asserted on timing; the figures depend on the machine and its load.
"""

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from stager import TaskType  # noqa: E402
from duckstage.config import load_config  # noqa: E402
from stager.demo import Child  # noqa: E402
from stager.produce import generate  # noqa: E402
from stager.tasks import build_huey  # noqa: E402
from tests.oracle import clean  # noqa: E402
from loader import lake  # noqa: E402

GOAL = 200_000  # rows/s end to end on 2 cores, 1000-row tasks (issue 4)


def daily_tasks(rows, task_rows, seed=0, stocks=5400):
    """``rows`` generated stock_daily rows in lists of exactly ``task_rows`` (the last may be short)."""
    days = rows // int(stocks * 0.95) + 2  # a few stocks are suspended on any day
    pending, left = [], rows
    for batch in generate(stocks=stocks, days=days, seed=seed, task_types=[TaskType.STOCK_DAILY]):
        pending.extend(batch.row_dicts())
        while len(pending) >= task_rows and left:
            n = min(task_rows, left)
            yield pending[:n]
            del pending[:n]
            left -= n
        if not left:
            return
    raise RuntimeError(f"generated fewer than {rows} rows")


def check(child):
    if not child.alive():
        sys.exit(f"{child.name} exited ({child.proc.returncode}); see {child.log_path}:\n"
                 + child.log_path.read_text(errors="replace")[-2000:])


class Committed:
    """Rows committed so far: the footer row counts of the archived files."""

    def __init__(self, folder):
        self.folder, self.seen, self.rows = folder, set(), 0

    def poll(self):
        for path in self.folder.rglob("*.parquet"):
            if path not in self.seen:
                self.seen.add(path)
                self.rows += pq.read_metadata(path).num_rows
        return self.rows


def write_config(work, batch_size=None, workers=None, loader=None, batch_max_rows=None, huey=None):
    """config/duckstage.yaml as shipped, with its data in ``work``/data; (path, configuration).

    ``batch_size``, ``workers`` and ``batch_max_rows`` override the stager's
    values, ``loader`` the loader section (a DuckLake, say), ``huey`` the huey
    section (Redis, say), when given.
    """
    body = yaml.safe_load((REPO / "config" / "duckstage.yaml").read_text())
    body.update({"data_dir": str(Path(work) / "data"), "datasets": str(REPO / "config" / "datasets.yaml")})
    for key, value in (("batch_size", batch_size), ("worker_threads", workers), ("batch_max_rows", batch_max_rows)):
        if value is not None:
            body["stager"][key] = value
    if loader:
        body["loader"] = loader
    if huey:
        body["huey"] = huey
    config_path = Path(work) / "duckstage.yaml"
    config_path.parent.mkdir(parents=True, exist_ok=True)
    config_path.write_text(yaml.safe_dump(body))
    return config_path, load_config(config_path)


def enqueue_rows(config, rows, task_rows, sample_tasks=0):
    """Enqueue ``rows`` stock_daily rows as tasks of ``task_rows``; return the rows and the first tasks."""
    huey, enqueue = build_huey(config)
    started = time.perf_counter()
    tasks = total = 0
    sample = []
    try:
        for batch in daily_tasks(rows, task_rows):
            enqueue(TaskType.STOCK_DAILY, batch)
            tasks += 1
            total += len(batch)
            if len(sample) < sample_tasks:
                sample.append(batch)
    finally:
        huey.storage.close()
    print(f"producer: generated and enqueued {total:,} rows as {tasks:,} tasks of {task_rows} rows in "
          f"{time.perf_counter() - started:.1f} s (not timed below)")
    return total, sample


def run_duckstage(config_path, config, total, work):
    stager = Child("stager", config_path, work, cwd=work)
    loader = Child("loader", config_path, work, cwd=work)
    started = time.perf_counter()
    committed = Committed(config.archive_dir / "stock_daily")
    huey, _ = build_huey(config)
    sealed_at = None
    try:
        while committed.poll() < total:
            check(stager)
            check(loader)
            if sealed_at is None and huey.storage.queue_size() == 0 and huey.storage.lease_count() == 0:
                sealed_at = time.perf_counter() - started  # every task sealed and acknowledged
            time.sleep(0.05)
        elapsed = time.perf_counter() - started
    finally:
        huey.storage.close()
        codes = stager.stop(), loader.stop()
    if codes != (0, 0):
        sys.exit(f"stager/loader exit codes {codes}; see the logs in {work}")
    return elapsed, sealed_at, stager.peak, loader.peak


def verify(config, total):
    """Check that the warehouse and its manifest hold every row; return the number of files merged."""
    con = lake.connect(config.loader.database, read_only=True)
    try:
        rows = con.execute("SELECT count(*) FROM stock_daily").fetchone()[0]
        files, manifest_rows = con.execute(
            "SELECT count(*), sum(rows) FROM _duckstage_manifest WHERE task_type = 'stock_daily'").fetchone()
    finally:
        con.close()
    if rows != total or manifest_rows != total:
        sys.exit(f"warehouse holds {rows:,} rows, manifest {manifest_rows:,}; {total:,} were enqueued")
    return files


def baseline(dataset, batches, path):
    """Seconds to upsert each batch with executemany(INSERT ... ON CONFLICT DO UPDATE), one transaction each."""
    con = duckdb.connect(str(path))
    try:
        cols = [c.name for c in dataset.columns]
        defs = ", ".join(f'"{c.name}" {c.type}' + ("" if c.nullable else " NOT NULL") for c in dataset.columns)
        pk = ", ".join(f'"{c}"' for c in dataset.primary_key)
        con.execute(f"CREATE TABLE stock_daily ({defs}, PRIMARY KEY ({pk}))")
        updates = ", ".join(f'"{c}" = excluded."{c}"' for c in cols if c not in dataset.primary_key)
        sql = (f"INSERT INTO stock_daily VALUES ({', '.join('?' * len(cols))}) "
               f"ON CONFLICT ({pk}) DO UPDATE SET {updates}")
        typed = [[tuple(r[c] for c in cols) for r in clean(rows, dataset).to_pylist()] for rows in batches]
        started = time.perf_counter()
        for rows in typed:
            con.execute("BEGIN TRANSACTION")
            con.executemany(sql, rows)
            con.execute("COMMIT")
        seconds = time.perf_counter() - started
        stored = con.execute("SELECT count(*) FROM stock_daily").fetchone()[0]
    finally:
        con.close()
    if stored != sum(len(b) for b in batches):
        sys.exit(f"baseline stored {stored} rows")
    return seconds


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000, help="rows enqueued (default 1,000,000)")
    ap.add_argument("--task-rows", type=int, default=1000, help="rows per task (default 1000)")
    ap.add_argument("--baseline-batches", type=int, default=5,
                    help="1000-row batches timed for the executemany baseline (default 5; ~2 s each)")
    ap.add_argument("--batch-size", type=int, help="stager.batch_size (default: config/duckstage.yaml's)")
    ap.add_argument("--workers", type=int, help="stager.worker_threads (default: config/duckstage.yaml's)")
    ap.add_argument("--batch-max-rows", type=int,
                    help="stager.batch_max_rows (default: config/duckstage.yaml's; 1000 rotates as before it existed)")
    ap.add_argument("--keep", action="store_true", help="keep the data folder and print where it is")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench_e2e-"))
    try:
        config_path, config = write_config(work, args.batch_size, args.workers, batch_max_rows=args.batch_max_rows)
        batch = config.stager.batch
        print(f"{os.cpu_count()} CPUs, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}; "
              f"duckdb {duckdb.__version__}; config/duckstage.yaml: stager batch_size {batch.batch_size:,},"
              f" batch_max_rows {batch.batch_max_rows:,}, {config.stager.worker_threads} workers")
        total, sample = enqueue_rows(config, args.rows, args.task_rows, args.baseline_batches)

        elapsed, sealed_at, stager_peak, loader_peak = run_duckstage(config_path, config, total, work)
        files = verify(config, total)
        rate = total / elapsed
        sealed = f"{sealed_at:.2f} s" if sealed_at is not None else "n/a"
        print(f"duckstage end to end: {total:,} rows committed in {elapsed:.2f} s -> {rate:,.0f} rows/s "
              f"(from starting both processes, start-up included; every task sealed at {sealed}; "
              f"{files} files merged)")
        print(f"peak RSS: stager {stager_peak / 2**20:,.0f} MiB, loader {loader_peak / 2**20:,.0f} MiB")

        seconds = baseline(config.datasets["stock_daily"], sample, work / "baseline.duckdb")
        base_rows = sum(len(b) for b in sample)
        base_rate = base_rows / seconds
        print(f"baseline: executemany(INSERT ... ON CONFLICT DO UPDATE) per {args.task_rows}-row batch, one "
              f"transaction each: {len(sample)} batches, {base_rows:,} rows in {seconds:.2f} s -> "
              f"{base_rate:,.0f} rows/s (extrapolated: {total:,} rows would take {total / base_rate / 60:,.0f} min)")
        print(f"ratio duckstage / baseline: {rate / base_rate:,.0f}x")
        print(f"goal >= {GOAL:,} rows/s end to end: {'met' if rate >= GOAL else 'NOT met'} on this run")
    finally:
        if args.keep:
            print(f"data kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
