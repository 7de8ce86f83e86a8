"""Soak: the producer, the stager and the loader run for minutes while both
processes are killed with ``kill -9`` and restarted at random.

A producer thread in this process enqueues ``generate(...)`` batches without
pause (several seeds and start dates in turn, so keys are fetched again with
other values and later fetches must win), paced at ``DUCKSTAGE_SOAK_RATE``
rows/s. The stager and the loader are real subprocesses; every 0.3 to 4 s one
or both are killed with SIGKILL and restarted after a random pause. Then the
killing stops, the producer stops, the stager drains the queue and is stopped
with SIGTERM (it seals every buffer), the loader commits every sealed file and
is stopped. At the end:

- the warehouse equals ``expected_rows`` of every batch enqueued (the
  producer's data deduplicated by key and version), row for row;
- the Huey queue, its leases, its result store and its schedule are empty;
- nothing is left in staging (no sealed file, no ``.tmp``), nothing quarantined;
- every dead-lettered row is one the producer injected as bad (a task re-run
  after a kill may dead-letter its rows twice), and every injected row is there.

It runs on the DuckDB file and on a DuckLake on PostgreSQL; on the DuckLake a
reader queries in a loop all along and never sees a key twice or a file's
transaction half-applied.

    DUCKSTAGE_SOAK_SECONDS=600 pytest -m slow tests/test_soak.py -s

``DUCKSTAGE_SOAK_SEED`` replays the same kill schedule (timing still varies).
"""

import os
import random
import threading
import time
from collections import Counter

import pytest

from duckstage import staging
from duckstage.config import load_config
from stager import QueueUnavailable
from stager.produce import generate, produce
from stager.tasks import build_huey
from tests.helpers import queue_state, wait_for, write_config
from tests.oracle import (assert_archive_is_the_manifest, assert_deadletter_is_injected, assert_nothing_left,
                          assert_warehouse_equals, expected_rows, injected_bad_rows)

SECONDS = float(os.environ.get("DUCKSTAGE_SOAK_SECONDS", "120"))
RATE = float(os.environ.get("DUCKSTAGE_SOAK_RATE", "2000"))  # rows/s enqueued
SEED = int(os.environ.get("DUCKSTAGE_SOAK_SEED", random.randrange(1 << 30)))

# Start dates in turn: plain days, and the end of each disclosure season
# (whole-market statement fetches, restatements).
STARTS = ("20240425", "20240102", "20240822", "20241028", "20240701")


class Producer(threading.Thread):
    """Enqueues generated batches until stopped; ``enqueued`` lists them in enqueue order."""

    def __init__(self, config, rate):
        super().__init__(name="soak-producer", daemon=True)
        self.config, self.rate = config, rate
        self.stopped = threading.Event()
        self.enqueued, self.rows, self.error = [], 0, None
        self.unavailable = 0  # enqueues refused with the queue out of reach (a Redis restart), then made again

    def batches(self):
        chunk = 0
        while True:
            for batch in generate(stocks=200, days=10, seed=chunk, bad_share=0.005,
                                  start=STARTS[chunk % len(STARTS)]):
                if self.stopped.is_set():
                    return
                yield batch
            chunk += 1

    def run(self):
        huey, task = build_huey(self.config)
        self.started = time.monotonic()

        def enqueue(*args, **params):
            # As a downloader does when the queue is out of reach: wait and enqueue again
            # (the same fetch time, so the batch keeps its place in the version order).
            while True:
                try:
                    return task(*args, **params)
                except QueueUnavailable:
                    self.unavailable += 1
                    if self.stopped.wait(0.2):
                        raise

        try:
            # One produce() call: fetch times rise across every batch, the
            # order expected_rows assumes.
            produce(enqueue, self.batches(), progress=self._enqueued)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc
        finally:
            huey.storage.close()

    def _enqueued(self, batch, _counts):
        self.enqueued.append(batch)
        self.rows += batch.rows
        ahead = self.rows / self.rate - (time.monotonic() - self.started)
        if ahead > 0:
            self.stopped.wait(ahead)

    def stop(self):
        self.stopped.set()
        self.join(60)
        assert not self.is_alive(), "the producer did not stop"


def sealed_waiting(config):
    return sum(len(staging.sealed_files(config.staging_dir / name)) for name in config.datasets.names)


class Reader(threading.Thread):
    """A researcher querying a DuckLake in a loop while it is loaded: never a key twice, never a
    transaction half-applied (a file's rows are all in the table once its manifest row is)."""

    def __init__(self, config):
        super().__init__(name="soak-reader", daemon=True)
        self.config = config
        self.stopped = threading.Event()
        self.queries, self.problems, self.errors = 0, [], []

    def run(self):
        from loader import lake

        while not self.stopped.wait(0.2):
            try:
                con = lake.connect(self.config.loader.database, read_only=True)
            except Exception as exc:  # noqa: BLE001 - the catalog not created yet, or busy for a moment
                self.errors.append(str(exc))
                continue
            try:
                con.execute("BEGIN")  # one snapshot for the three queries
                doubled = con.execute(
                    "SELECT count(*) - count(DISTINCT (ts_code, trade_date)) FROM stock_daily").fetchall()[0][0]
                loaded = con.execute("SELECT coalesce(sum(inserted), 0) FROM _duckstage_manifest"
                                     " WHERE task_type = 'stock_daily'").fetchall()[0][0]
                rows = con.execute("SELECT count(*) FROM stock_daily").fetchall()[0][0]
                con.execute("COMMIT")
                self.queries += 1
                if doubled:
                    self.problems.append(f"{doubled} key(s) twice in stock_daily")
                if rows != loaded:
                    self.problems.append(f"stock_daily holds {rows} rows, its manifest says {loaded} were inserted")
            except Exception as exc:  # noqa: BLE001 - tables not created yet
                if "does not exist" not in str(exc):
                    self.problems.append(f"query failed: {exc}")
            finally:
                con.close()


@pytest.mark.slow
@pytest.mark.timeout(SECONDS + 600)
@pytest.mark.parametrize("backend", ["duckdb", "ducklake-postgres"])
def test_soak_kill_9_both_processes_at_random(tmp_path, spawn, request, backend):
    database = {}
    if backend == "ducklake-postgres":
        database = {"database": "ducklake:postgres:" + request.getfixturevalue("postgres_db").conninfo,
                    "maintenance_interval": 5}
    path = write_config(
        tmp_path,
        stager={"batch_size": 1500, "batch_timeout": 1.0, "worker_threads": 2, "queue_check_interval": 0.05,
                "shutdown_timeout": 60},
        loader={"rescan_interval": 0.5, "idle_release": 0.5, "retry_delay": 0.1, "retry_max_delay": 1.0,
                **database})
    config = load_config(path)
    rng = random.Random(SEED)
    procs = {name: spawn(name, path, "run") for name in ("stager", "loader")}
    producer = Producer(config, RATE)
    producer.start()
    reader = Reader(config)
    if config.loader.database.is_lake:
        reader.start()
    kills = Counter()
    mid_work = Counter()  # kills that found the stager holding leased tasks, the loader sealed files to load

    deadline = time.monotonic() + SECONDS
    while time.monotonic() < deadline:
        time.sleep(rng.uniform(0.3, 4.0))
        assert producer.error is None, producer.error
        for name, p in procs.items():
            assert p.proc.poll() is None, f"{name} exited by itself ({p.proc.returncode}):\n{p.log()[-3000:]}"
        victims = rng.choice((["stager"], ["loader"], ["stager", "loader"]))
        busy = {"stager": queue_state(config)[1] > 0, "loader": sealed_waiting(config) > 0}
        for name in victims:
            procs[name].kill9()
            kills[name] += 1
            mid_work[name] += busy[name]
        time.sleep(rng.uniform(0.0, 1.0))
        for name in victims:
            procs[name] = spawn(name, path, "run")

    producer.stop()
    assert producer.error is None, producer.error
    stager, loader = procs["stager"], procs["loader"]
    wait_for(lambda: queue_state(config)[0] == 0, timeout=300, interval=0.5, message="the stager to lease every task")
    assert stager.stop(120) == 0, stager.log()[-3000:]  # SIGTERM: seal every buffer, ack what was sealed
    wait_for(lambda: sealed_waiting(config) == 0, timeout=300, interval=0.5,
             message="the loader to commit every sealed file")
    assert loader.stop(60) == 0, loader.log()[-3000:]
    reader.stopped.set()
    if reader.is_alive():
        reader.join(30)
        assert reader.queries > 10 and not reader.problems, (reader.queries, reader.problems[:5], reader.errors[-3:])

    batches = producer.enqueued
    injected = injected_bad_rows(batches)
    print(f"\nsoak: seed {SEED}, {SECONDS:.0f}s, {producer.rows:,} rows in {len(batches):,} tasks, "
          f"{sum(injected[0].values())} bad rows injected, kill -9: stager {kills['stager']}, "
          f"loader {kills['loader']} ({mid_work['stager']} and {mid_work['loader']} of them mid-work)")
    assert mid_work["stager"] and mid_work["loader"], "no kill landed while there was work in hand"
    if reader.queries:
        print(f"soak: a reader queried the DuckLake {reader.queries} times while it loaded: no key twice,"
              " no transaction half-applied")
    assert_warehouse_equals(config, expected_rows(batches, config.datasets))
    assert_nothing_left(config)
    assert_deadletter_is_injected(config, injected, exactly=False)
    assert_archive_is_the_manifest(config)
