"""Loader throughput: MERGE staged files into a stock_daily table that already holds rows.

Prints rows per second and peak memory for the loader as configured (several
large files per transaction), then, in the same run, the baseline of one
1k-row file per transaction, batched 1k-row files, and the ratio.

    python benchmarks/bench_loader.py                 # 2M-row table, 1M rows merged
    python benchmarks/bench_loader.py --rows 200000   # small and quick

Half of the merged rows update existing keys (with a newer _fetched_at), half
insert new keys. Not a test: the figures depend on the machine.
"""

import argparse
import datetime as dt
import resource
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import duckdb
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from loader import Loader  # noqa: E402
from loader.warehouse import STORAGE_COMPATIBILITY, Warehouse  # noqa: E402
from duckstage import staging  # noqa: E402
from duckstage.config import from_mapping  # noqa: E402
from duckstage.staging import StagedFile  # noqa: E402

CODES = 5000
T0 = dt.datetime(2025, 1, 6, tzinfo=dt.timezone.utc)


def rows_sql(start, count, fetched):
    """stock_daily rows for key numbers start..start+count: (code, day) = (i % CODES, i // CODES)."""
    return f"""
        SELECT printf('%06d.SZ', i % {CODES}) AS ts_code, (DATE '2000-01-01' + (i // {CODES})::INTEGER) AS trade_date,
               10.0 + i % 7 AS open, 11.0 + i % 7 AS high, 9.0 + i % 7 AS low, 10.5 + i % 7 AS close,
               NULL::DOUBLE AS pre_close, NULL::DOUBLE AS change, NULL::DOUBLE AS pct_chg,
               100.0 + i % 13 AS vol, 1000.0 + i % 17 AS amount, NULL::DOUBLE AS ah_vol, NULL::DOUBLE AS ah_amount,
               'bench' AS _task_id, TIMESTAMP '{fetched}' AS _fetched_at
        FROM range({start}, {start + count}) t(i)"""


def build_table(config, rows):
    wh = Warehouse(config.loader.database).open()
    wh.create_table(config.datasets["stock_daily"])
    wh.con.execute(f"INSERT INTO stock_daily {rows_sql(0, rows, '2025-01-01 00:00:00')}")
    wh.close()


def stage_files(config, merge_rows, file_rows, table_rows, instance, first_seq=1):
    """Files of ``file_rows``: the first half of the keys exist (updates), the second half are new.

    Their sequence numbers start at ``first_seq``, so files staged by later calls sort after
    these and have names of their own. Returns the number of files.
    """
    dataset = config.datasets["stock_daily"]
    con = duckdb.connect()
    start = table_rows - merge_rows // 2
    seq = first_seq - 1
    for offset in range(0, merge_rows, file_rows):
        seq += 1
        count = min(file_rows, merge_rows - offset)
        table = con.sql(rows_sql(start + offset, count, "2025-01-02 00:00:00")).to_arrow_table()
        table = table.cast(dataset.arrow_schema)
        sf = StagedFile.new("stock_daily", instance, seq, now=T0 + dt.timedelta(milliseconds=seq))
        meta = staging.footer_metadata(dataset, count, {"bench"}, instance, sf.created_at, 1)
        staging.seal(table, config.staging_dir / "stock_daily" / sf.name, meta)
    con.close()
    return seq - first_seq + 1


class PeakRSS:
    """Samples this process's resident memory every 20 ms."""

    def __init__(self):
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        proc = psutil.Process()
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, proc.memory_info().rss)

    def __enter__(self):
        self.peak = psutil.Process().memory_info().rss
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def measure(label, base_db, work, file_rows, merge_rows, table_rows, max_rows):
    config = from_mapping({"data_dir": str(work / label), "loader": {"max_rows_per_transaction": max_rows,
                                                                   "idle_release": 60}},
                          "<bench>", ROOT / "config", work)
    config.loader.database.path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(base_db, config.loader.database.path)
    files = stage_files(config, merge_rows, file_rows, table_rows, "bench")
    loader = Loader(config)
    with PeakRSS() as rss:
        started = time.perf_counter()
        while loader.run_once():
            pass
        seconds = time.perf_counter() - started
    loader.stop()
    con = duckdb.connect(str(config.loader.database), config={"storage_compatibility_version": STORAGE_COMPATIBILITY})
    total, updated = con.execute("SELECT count(*), count(*) FILTER (WHERE _fetched_at > TIMESTAMP '2025-01-01')"
                                 " FROM stock_daily").fetchall()[0]
    con.close()
    assert total == table_rows + merge_rows - merge_rows // 2, (total, table_rows, merge_rows)
    assert updated == merge_rows, (updated, merge_rows)
    rate = merge_rows / seconds
    print(f"{label:<34} {files:>6} files {merge_rows:>10,} rows {seconds:8.2f} s {rate:>12,.0f} rows/s"
          f"   peak RSS {rss.peak / 2**20:,.0f} MiB")
    return rate


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=2_000_000, help="rows already in the table (default 2M)")
    ap.add_argument("--merge-rows", type=int, help="rows merged (default rows/2: half updates, half inserts)")
    ap.add_argument("--file-rows", type=int, default=100_000, help="rows per staged file (default 100k)")
    ap.add_argument("--max-rows", type=int, default=1_000_000, help="loader.max_rows_per_transaction")
    ap.add_argument("--baseline-rows", type=int, default=100_000,
                    help="rows merged from 1k-row files for the baselines (default 100k)")
    args = ap.parse_args()
    merge_rows = args.merge_rows or args.rows // 2
    baseline_rows = min(args.baseline_rows, merge_rows)
    work = Path(tempfile.mkdtemp(prefix="bench_loader-"))
    try:
        base = from_mapping({"data_dir": str(work / "base")}, "<bench>", ROOT / "config", work)
        started = time.perf_counter()
        build_table(base, args.rows)
        print(f"duckdb {duckdb.__version__}; table stock_daily with {args.rows:,} rows (as the loader"
              f" creates it: no key constraint) built in {time.perf_counter() - started:.1f} s; half updates, half inserts")
        rate = measure(f"loader: {args.file_rows:,}-row files", base.loader.database, work, args.file_rows,
                       merge_rows, args.rows, args.max_rows)
        batched = measure("loader: 1k-row files, batched", base.loader.database, work, 1000,
                          baseline_rows, args.rows, args.max_rows)
        single = measure("baseline: 1k-row file per txn", base.loader.database, work, 1000,
                         baseline_rows, args.rows, 1000)
        print(f"ratio loader / one-transaction-per-1k-file baseline: {rate / single:.1f}x"
              f" (batched 1k-row files: {batched / single:.1f}x)")
        print(f"peak RSS of the whole run (ru_maxrss): "
              f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MiB")
        print("target >= 500,000 rows/s: " + ("met" if rate >= 500_000 else "NOT met"))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
