"""A full-history backfill of the A-share market, enqueue to committed, on the shipped configuration.

    make bench-backfill                                  # the whole market since 1990: ~55M rows
    make bench-backfill BACKFILL_ARGS="--years 2"        # a quick run: the last two years
    python benchmarks/bench_backfill.py --years 1 --no-dlt

What a user does first: download everything (benchmarks/market.py says what
and in which order: ``daily`` per trade date, ``pro_bar`` qfq and unadjusted
per stock, the three statements per stock) while ``stager run`` and ``loader
run`` run on config/duckstage.yaml as shipped (only ``data_dir`` moves to a
temporary folder). The producer enqueues as fast as it can generate, holding
at most ``--max-queued`` tasks in the queue, as a downloader paced by its
data source would; the clock runs from its first enqueue until the last row
is committed.

Prints, every ``--interval`` seconds, the rows committed in that interval and
the loader's MERGE rate in it (rows per second of merge transactions), with
the table rows so far, so a MERGE that slows as the tables grow shows; then
the total time and rate, the stager's and the loader's peak RSS, the size of
the warehouse and of the archive. Then, in the same run: the seed design
(executemany upsert per 1,000-row batch, one transaction each) on a sample,
extrapolated, and dlt's Parquet merge into DuckDB of the archived files (in a
virtual environment of its own, created on first use outside the repository;
``--no-dlt`` skips it, and it is skipped with the reason when dlt cannot be
installed). Not a test: nothing is asserted on timing.

On the 2-core development machine the whole market takes tens of minutes
(docs/benchmarks.md has the figures); ``--years`` sizes it down, and the
producer keeps the queue small, so the disk holds about the warehouse plus the
archive (a few GB for the whole market).
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import duckdb

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

from bench_e2e import baseline, write_config  # noqa: E402
from market import BAR_TASK_TYPES, STATEMENT_TASK_TYPES, Market  # noqa: E402
from stager.demo import Child  # noqa: E402
from stager.tasks import build_huey  # noqa: E402

TASK_TYPES = BAR_TASK_TYPES + STATEMENT_TASK_TYPES
DLT_VENV = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "duckstage-bench" / "dlt"
MiB = 2**20


class Producer(threading.Thread):
    """Enqueues the market's tasks, keeping at most ``max_queued`` waiting."""

    def __init__(self, config, market, task_types, max_queued):
        super().__init__(name="producer", daemon=True)
        self.config, self.market, self.task_types, self.max_queued = config, market, task_types, max_queued
        self.tasks = self.rows = 0
        self.started_at = self.done_at = None
        self.error = None
        self.sample = []  # the first stock_daily rows, for the seed design's baseline

    def run(self):
        huey, enqueue = build_huey(self.config)
        try:
            for task_type, table, params in self.market.tasks(self.task_types):
                while huey.storage.queue_size() >= self.max_queued:
                    time.sleep(0.02)
                if self.started_at is None:
                    self.started_at = time.perf_counter()
                enqueue(task_type, table, **params)
                self.tasks += 1
                self.rows += table.num_rows
                if task_type == "stock_daily" and len(self.sample) < 5000:
                    self.sample += table.slice(0, 5000 - len(self.sample)).to_pylist()
            self.done_at = time.perf_counter()
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread, which stops the run
            self.error = exc
        finally:
            huey.storage.close()


def loader_status(config):
    try:
        return json.loads((config.run_dir / "loader.json").read_text())
    except (OSError, ValueError):
        return None


def rss(child):
    try:
        return child._ps.memory_info().rss
    except Exception:  # noqa: BLE001 - it just exited
        return 0


def folder_size(folder):
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


def run_pipeline(config_path, config, market, task_types, args, work):
    """Both processes and the producer; returns the figures of the run."""
    total = market.rows(task_types)
    stager = Child("stager", config_path, work, cwd=work)
    loader = Child("loader", config_path, work, cwd=work)
    producer = Producer(config, market, task_types, args.max_queued)
    producer.start()
    minutes = []  # (elapsed, rows committed in the interval, merge rows/s in it, stager RSS, loader RSS)
    last_at, last_rows, last_merge = None, 0, (0, 0.0)
    committed = 0
    print(f"{'elapsed':>8} {'committed':>12} {'rows/s':>9} {'merge rows/s':>12} {'stager':>8} {'loader':>8}")
    try:
        while True:
            for child in (stager, loader):
                if not child.alive():
                    sys.exit(f"{child.name} exited ({child.proc.returncode}); see {child.log_path}:\n"
                             + child.log_path.read_text(errors="replace")[-2000:])
            if producer.error is not None:
                raise producer.error
            status = loader_status(config)
            if status:
                committed = status["since_start"]["rows"]
            now = time.perf_counter()
            if producer.started_at is not None and last_at is None:
                last_at = producer.started_at
            if last_at is not None and (now - last_at >= args.interval or committed >= total):
                merged = _merge_totals(status)
                rate = (committed - last_rows) / (now - last_at)
                merge_rate = ((merged[0] - last_merge[0]) / (merged[1] - last_merge[1])
                              if merged[1] > last_merge[1] else 0.0)
                minutes.append((now - producer.started_at, committed - last_rows, rate, merge_rate))
                print(f"{now - producer.started_at:7.0f}s {committed:12,} {rate:9,.0f} {merge_rate:12,.0f}"
                      f" {rss(stager) / MiB:6,.0f}Mi {rss(loader) / MiB:6,.0f}Mi", flush=True)
                last_at, last_rows, last_merge = now, committed, merged
            if committed >= total and producer.done_at is not None:
                break
            time.sleep(0.2)
        elapsed = time.perf_counter() - producer.started_at
    finally:
        codes = stager.stop(), loader.stop()
        producer.join(5)
    if codes != (0, 0):
        sys.exit(f"stager/loader exit codes {codes}; see the logs in {work}")
    return {"total": total, "elapsed": elapsed, "tasks": producer.tasks, "minutes": minutes,
            "produced_in": producer.done_at - producer.started_at, "stager_peak": stager.peak,
            "loader_peak": loader.peak, "sample": producer.sample}


def _merge_totals(status):
    """(rows, seconds) the loader spent in merge transactions since it started, from its status."""
    if not status:
        return 0, 0.0
    since = status["since_start"]
    return since["rows"], since.get("merge_seconds", 0.0)


def verify(config, task_types, market):
    """Rows per table and files merged; exits when a table lacks rows."""
    con = duckdb.connect(str(config.loader.database), read_only=True)
    try:
        tables = {name for (name,) in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
        # A short --years may hold no report of a statement: its table is never created.
        counts = {t: con.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] if t in tables else 0
                  for t in task_types}
        files = con.execute("SELECT count(*) FROM _duckstage_manifest").fetchone()[0]
    finally:
        con.close()
    expected = {t: market.rows([t]) for t in task_types}
    if counts != expected:
        sys.exit(f"the warehouse holds {counts}, {expected} were enqueued")
    return counts, files


# -- the comparisons ---------------------------------------------------------------------


def dlt_python(venv):
    """The Python of a virtual environment with dlt (made on first use), or (None, why not)."""
    python = venv / "bin" / "python"
    if python.exists() and subprocess.run([python, "-c", "import dlt"], capture_output=True).returncode == 0:
        return python, None
    print(f"dlt: creating {venv} (once; outside the repository) ...", flush=True)
    steps = [[sys.executable, "-m", "venv", str(venv)],
             [str(python), "-m", "pip", "install", "--quiet", "dlt[duckdb,parquet]", f"duckdb=={duckdb.__version__}"]]
    for step in steps:
        done = subprocess.run(step, capture_output=True, text=True)
        if done.returncode:
            return None, f"`{' '.join(step)}` failed: {(done.stderr or done.stdout).strip().splitlines()[-1:]}"
    return python, None


def run_dlt(config, task_types, args, work):
    """dlt's merge of the archived files (the same rows, cleaned) into a new DuckDB file."""
    python, why = dlt_python(Path(args.dlt_venv))
    if python is None:
        print(f"dlt: SKIPPED: {why}")
        return None
    tables, rows = {}, 0
    for t in task_types:
        files = sorted((config.archive_dir / t).rglob("*.parquet"), key=lambda p: p.name)
        picked = []
        for f in files:
            if args.dlt_rows and rows >= args.dlt_rows:
                break
            picked.append(str(f))
            rows += _rows(f)
        if picked:
            tables[t] = {"primary_key": list(config.datasets[t].primary_key), "files": picked}
    spec = work / "dlt.json"
    spec.write_text(json.dumps({"database": str(work / "dlt.duckdb"), "pipelines_dir": str(work / "dlt-state"),
                                "rows_per_run": config.loader.max_rows_per_transaction, "tables": tables}))
    done = subprocess.run([str(python), str(HERE / "dlt_merge.py"), str(spec)], capture_output=True, text=True)
    if done.returncode:
        print(f"dlt: FAILED: {done.stderr.strip()[-2000:]}")
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


def _rows(path):
    import pyarrow.parquet as pq

    return pq.read_metadata(path).num_rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--years", type=float, help="the last YEARS years only (default: since 1990-12-19)")
    ap.add_argument("--stocks", type=int, default=5400, help="stocks in the market (default 5,400)")
    ap.add_argument("--task-types", default=",".join(TASK_TYPES), help=f"comma-separated (default {','.join(TASK_TYPES)})")
    ap.add_argument("--max-queued", type=int, default=64, help="tasks the producer lets wait in the queue (default 64)")
    ap.add_argument("--interval", type=float, default=60, help="seconds between progress lines (default 60)")
    ap.add_argument("--baseline-batches", type=int, default=3, help="1,000-row batches for the seed design (default 3)")
    ap.add_argument("--no-dlt", action="store_true", help="leave dlt out")
    ap.add_argument("--dlt-venv", default=str(DLT_VENV), help=f"dlt's virtual environment (default {DLT_VENV})")
    ap.add_argument("--dlt-rows", type=int, default=0, help="rows dlt merges (default 0: all), from the first files")
    ap.add_argument("--keep", action="store_true", help="keep the data folder and print where it is")
    args = ap.parse_args()
    task_types = [t.strip() for t in args.task_types.split(",") if t.strip()]
    unknown = sorted(set(task_types) - set(TASK_TYPES))
    if unknown or args.stocks < 1 or (args.years is not None and args.years <= 0):
        ap.error(f"--task-types takes {', '.join(TASK_TYPES)}; --stocks and --years are positive"
                 + (f" (unknown: {', '.join(unknown)})" if unknown else ""))

    market = Market(args.stocks, args.years)
    work = Path(tempfile.mkdtemp(prefix="bench_backfill-"))
    try:
        config_path, config = write_config(work)
        print(f"{os.cpu_count()} CPUs, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}; duckdb"
              f" {duckdb.__version__}; config/duckstage.yaml as shipped (batch_size"
              f" {config.stager.batch.batch_size:,}, batch_max_rows {config.stager.batch.batch_max_rows:,},"
              f" {config.stager.worker_threads} workers, max_rows_per_transaction"
              f" {config.loader.max_rows_per_transaction:,})")
        print(f"market: {args.stocks:,} stocks, {len(market.days):,} trade dates from {market.days[0]} to"
              f" {market.days[-1]}; {market.rows(task_types):,} rows of {', '.join(task_types)}")
        run = run_pipeline(config_path, config, market, task_types, args, work)
        counts, files = verify(config, task_types, market)
        db = sum(p.stat().st_size for p in config.loader.database.path.parent.glob(
            config.loader.database.path.name + "*"))
        archive = folder_size(config.archive_dir)
        total, elapsed = run["total"], run["elapsed"]
        rate = total / elapsed
        rates = [r for _, _, r, _ in run["minutes"]]
        merges = [m for *_, m in run["minutes"] if m]
        print(f"duckstage: {total:,} rows ({run['tasks']:,} tasks) enqueued and committed in {elapsed / 60:.1f} min"
              f" -> {rate:,.0f} rows/s (the producer finished after {run['produced_in'] / 60:.1f} min);"
              f" {files:,} files merged")
        if rates:
            # The MERGE rate follows the file size first: compare intervals of large files (the bars)
            # with each other to see whether it falls as the tables grow.
            large = [m for _, rows, _, m in run["minutes"] if m and rows >= 1_000_000]
            print(f"per interval: rows/s min {min(rates):,.0f}, max {max(rates):,.0f}; MERGE rows/s in the"
                  f" intervals that committed >= 1M rows (large files, the tables growing): "
                  + (f"first {large[0]:,.0f}, last {large[-1]:,.0f}" if large else "none")
                  + f"; in the interval last of all {merges[-1] if merges else 0:,.0f}")
        print(f"peak RSS: stager {run['stager_peak'] / MiB:,.0f} MiB, loader {run['loader_peak'] / MiB:,.0f} MiB")
        print(f"on disk: warehouse {db / MiB:,.0f} MiB ({sum(counts.values()):,} rows), archive {archive / MiB:,.0f}"
              f" MiB")

        if run["sample"] and args.baseline_batches:
            batches = [run["sample"][i:i + 1000] for i in range(0, 1000 * args.baseline_batches, 1000)]
            batches = [b for b in batches if b]
            seconds = baseline(config.datasets["stock_daily"], batches, work / "baseline.duckdb")
            base_rate = sum(map(len, batches)) / seconds
            print(f"seed design: executemany upsert per 1,000-row batch, one transaction each: {base_rate:,.0f}"
                  f" rows/s on {len(batches)} batches; extrapolated {total / base_rate / 3600:,.1f} h for the"
                  f" backfill; duckstage {rate / base_rate:,.0f}x faster")
        if not args.no_dlt:
            got = run_dlt(config, task_types, args, work)
            if got:
                dlt_rate = got["rows"] / got["seconds"]
                share = "" if got["rows"] >= total else (
                    f" (on the first {got['rows']:,} rows; extrapolated {total / dlt_rate / 60:,.1f} min for all)")
                print(f"dlt {got['dlt']} (duckdb {got['duckdb']}): merge of the archived Parquet files,"
                      f" {got['runs']} pipeline.run calls of ~{config.loader.max_rows_per_transaction:,} rows:"
                      f" {got['rows']:,} rows in {got['seconds'] / 60:.1f} min -> {dlt_rate:,.0f} rows/s{share};"
                      f" peak RSS {got['peak_rss'] / MiB:,.0f} MiB, database {got['size'] / MiB:,.0f} MiB;"
                      f" duckstage end to end {rate / dlt_rate:.1f}x its rate")
    finally:
        if args.keep:
            print(f"data kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
