"""Soak across hosts: two stagers and two loaders on one Redis queue and one DuckLake, killed at random.

Two "hosts", each a configuration with its own data folder (host A runs a
stager and a loader on its folder, host B likewise), share what several
machines would share: the Redis queue and the DuckLake, its catalog in
PostgreSQL and its data files in one folder. The producer of
``tests/test_soak.py`` enqueues without pause, and every batch of restated
statements goes in as two tasks, the originals (``update_flag`` '0') and
the corrections, in turn one order and the other: the two may meet in any
order on any host, and the correction must win. Every 0.3 to 4 s one or two
of the four processes, or a whole host, are killed with ``kill -9`` (each
given up to 2 s to have work in hand) and restarted; once, mid-run, Redis itself is killed or restarted (append-only
file, ``appendfsync always``), and the producer waits and enqueues again. A
reader queries the DuckLake in a loop all along. At the end:

- the reader never saw a key twice or a file's transaction half-applied;
- the warehouse equals ``expected_rows`` of every batch enqueued, row for row;
- the queue holds no task, lease, result or schedule; neither host has a
  file left in staging or in quarantine;
- every dead-lettered row (in either host's dead letter) was injected as bad,
  every injected one is there; every archived file, on either host, is in the
  manifest and the other way round; both hosts staged and loaded.

    DUCKSTAGE_SOAK_SECONDS=300 pytest -m slow tests/test_soak_hosts.py -s

``DUCKSTAGE_SOAK_SEED`` replays the same kill schedule, ``DUCKSTAGE_SOAK_RATE``
sets the rows enqueued per second (both as in tests/test_soak.py).
"""

import dataclasses
import json
import random
import time
from collections import Counter

import pytest

from stager.produce import STATEMENTS, Batch
from stager.tasks import build_huey
from tests.helpers import eventually, queue_state, wait_for
from tests.oracle import (assert_archive_is_the_manifest, assert_deadletter_is_injected, assert_nothing_left,
                          assert_warehouse_equals, expected_rows, files_under, huey_state, injected_bad_rows)
from tests.stager.helpers import redis_host, stager_status
from tests.test_soak import RATE, SECONDS, SEED, Producer, Reader, sealed_waiting

# A dead stager's tasks come back this long after its last heartbeat. Long enough for a live
# stager on a loaded 2-core machine to renew its heartbeat (three times per timeout) in time.
LEASE_TIMEOUT = 3
STAGER = {"batch_size": 1500, "batch_timeout": 1.0, "worker_threads": 2, "queue_check_interval": 0.05,
          "shutdown_timeout": 60, "status_interval": 0.2}
LOADER = {"rescan_interval": 0.5, "idle_release": 0.5, "retry_delay": 0.1, "retry_max_delay": 1.0,
          "maintenance_interval": 5}
ORIGINAL_FIRST, CORRECTION_FIRST = "original first", "correction first"


class RestatingProducer(Producer):
    """test_soak's producer, with each batch holding restated statements enqueued as two tasks.

    The generator sends a restated report's original row and its correction in
    one batch; here the originals (``update_flag`` '0') and the rest of the
    batch go as two tasks, in turn originals first and corrections first.
    ``orders`` counts the pairs enqueued in each order.
    """

    def __init__(self, config, rate):
        super().__init__(config, rate)
        self.orders = Counter()

    def batches(self):
        for batch in super().batches():
            rows = batch.row_dicts()
            originals = [i for i, row in enumerate(rows) if row.get("update_flag") == "0"]
            if batch.task_type not in STATEMENTS or not originals:
                yield batch
                continue
            taken = set(originals)
            rest = [i for i in range(len(rows)) if i not in taken]
            order = ORIGINAL_FIRST if sum(self.orders.values()) % 2 == 0 else CORRECTION_FIRST
            for part in (originals, rest) if order == ORIGINAL_FIRST else (rest, originals):
                yield part_of(batch, rows, part)
            self.orders[order] += 1  # the generator resumes once the second task is enqueued


def part_of(batch, rows, indexes):
    """The rows of ``batch`` at ``indexes``, as a batch of their own with its bad rows renumbered."""
    position = {i: n for n, i in enumerate(indexes)}
    bad = tuple(dataclasses.replace(b, index=position[b.index]) for b in batch.bad_rows if b.index in position)
    return Batch(batch.task_type, [rows[i] for i in indexes], dict(batch.params), bad, "list")


def pick_victims(rng, names):
    """One process (half the time), two, or a whole host: its stager and its loader."""
    kind = rng.choice(("one", "one", "two", "host"))
    if kind == "host":
        host = rng.choice(sorted({host for host, _ in names}))
        return [(host, "stager"), (host, "loader")]
    return rng.sample(names, 1 if kind == "one" else 2)


def leased_by(config, proc):
    """Tasks held on Redis by the stager ``proc`` of the host ``config`` (0 before it reports its instance)."""
    status = stager_status(config)
    if not status or status.get("pid") != proc.proc.pid:
        return 0
    huey, _ = build_huey(config)
    try:
        return sum(s["leased"] for s in huey.storage.stagers() if s["instance"] == status["instance"])
    finally:
        huey.storage.close()


def wait_reporting(config, module, proc):
    """Until the process writes its status snapshot (run/<module>.json): its signal handlers are set by then."""
    def reporting():
        try:
            return json.loads((config.run_dir / f"{module}.json").read_text()).get("pid") == proc.proc.pid
        except (OSError, ValueError):
            return False
    wait_for(reporting, timeout=60, message=f"{module} pid {proc.proc.pid} to report itself")


def test_huey_state_counts_what_redis_still_holds(tmp_path, redis_db, producer):
    # The soak's last word on the queue: on Redis a leased task has left the queue for a lease hash.
    _, config = redis_host(tmp_path, "host", redis_db.url)
    enqueue = producer(config)
    for day in ("20240102", "20240103"):
        enqueue("stock_daily", [{"ts_code": "600000.SH", "trade_date": day}])
    huey, _ = build_huey(config)
    try:
        (lease_id, _), = huey.storage.lease("gone", limit=1)
        assert huey_state(config) == {"tasks": 1, "leases": 1, "results": 0, "scheduled": 0}
        huey.storage.ack([lease_id])
        huey.storage.lease("gone", limit=1)
        huey.storage.conn.srem(huey.storage.stagers_key, "gone")  # a lease hash no stager is registered for
        assert huey_state(config) == {"tasks": 0, "leases": 1, "results": 0, "scheduled": 0}
    finally:
        huey.storage.close()


def kill_at_random(rng, spawn, hosts, procs, producer, redis_server):
    """Every 0.3 to 4 s kill -9 one or two processes, or a host, and restart them; once, Redis instead.

    Returns the kills by (module, host), the kills that found work in hand by
    module (a stager holding leased tasks, a loader sealed files to load), and
    how Redis went down and for how long.
    """
    kills, mid_work, redis_outage = Counter(), Counter(), None
    started = time.monotonic()
    redis_at = started + SECONDS * rng.uniform(0.3, 0.7)
    while time.monotonic() < started + SECONDS:
        time.sleep(rng.uniform(0.3, 4.0))
        assert producer.error is None, producer.error
        for (host, module), p in procs.items():
            assert p.proc.poll() is None, f"{module} {host} exited by itself ({p.proc.returncode}):\n{p.log()[-3000:]}"
        if redis_outage is None and time.monotonic() >= redis_at:
            how = rng.choice(("kill -9", "restart"))
            down = time.monotonic()
            if how == "kill -9":
                redis_server.kill()  # only what the append-only file holds comes back
                time.sleep(rng.uniform(0.5, 3.0))
                redis_server.start()
            else:
                redis_server.restart()  # SIGTERM: Redis finishes its append-only file, then starts again
            redis_outage = (how, time.monotonic() - down)
            continue
        victims = pick_victims(rng, sorted(procs))
        for host, module in victims:
            p, config = procs[(host, module)], hosts[host][1]
            # Give it up to 2 s to have work in hand: the kills worth making.
            in_hand = (lambda: leased_by(config, p)) if module == "stager" else (lambda: sealed_waiting(config))
            busy = eventually(in_hand, timeout=rng.uniform(0.0, 2.0), interval=0.1)
            p.kill9()
            kills[module, host] += 1
            mid_work[module] += busy
        time.sleep(rng.uniform(0.0, 1.0))
        for host, module in victims:
            procs[(host, module)] = spawn(module, hosts[host][0], "run")
    return kills, mid_work, redis_outage


def drain(hosts, procs):
    """Stage every task, stop the stagers (they seal every buffer), load every sealed file, stop the loaders."""
    config = next(iter(hosts.values()))[1]
    # Nothing queued and nothing leased: what a killed stager held came back and was staged.
    wait_for(lambda: queue_state(config) == (0, 0), timeout=300, interval=0.5,
             message="the stagers to stage and acknowledge every task")
    for host, (_, config) in hosts.items():
        stager = procs[(host, "stager")]
        wait_reporting(config, "stager", stager)  # one restarted just now may not handle SIGTERM yet
        assert stager.stop(120) == 0, stager.log()[-3000:]  # SIGTERM: seal every buffer, ack what was sealed
    for host, (_, config) in hosts.items():
        wait_for(lambda config=config: sealed_waiting(config) == 0, timeout=300, interval=0.5,
                 message=f"host {host}'s loader to commit every sealed file")
        loader = procs[(host, "loader")]
        wait_reporting(config, "loader", loader)
        assert loader.stop(60) == 0, loader.log()[-3000:]


@pytest.mark.slow
@pytest.mark.timeout(SECONDS + 900)
def test_soak_two_hosts_on_redis_and_ducklake_kill_9_at_random(tmp_path, spawn, redis_server, redis_db, postgres_db):
    loader = {**LOADER, "database": "ducklake:postgres:" + postgres_db.conninfo, "data_path": str(tmp_path / "lake")}
    hosts = {host: redis_host(tmp_path, f"host-{host}", redis_db.url, lease_timeout=LEASE_TIMEOUT,
                              stager=STAGER, loader=loader) for host in ("a", "b")}
    config = hosts["a"][1]  # the queue and the warehouse are the same from either host
    procs = {(host, module): spawn(module, path, "run") for host, (path, _) in hosts.items()
             for module in ("stager", "loader")}
    producer, reader = RestatingProducer(config, RATE), Reader(config)
    producer.start()
    reader.start()
    try:
        kills, mid_work, redis_outage = kill_at_random(random.Random(SEED), spawn, hosts, procs, producer,
                                                       redis_server)
        assert redis_outage is not None, "the run ended before Redis was restarted"
        producer.stop()
        assert producer.error is None, producer.error
        stopped = time.monotonic()
        drain(hosts, procs)
        drained = time.monotonic() - stopped
    finally:
        producer.stopped.set()
        reader.stopped.set()
        reader.join(30)
    assert not reader.is_alive(), "the reader did not stop"

    batches = producer.enqueued
    injected = injected_bad_rows(batches)
    killed = ", ".join(f"{module} {host} {n}" for (module, host), n in sorted(kills.items()))
    print(f"\nsoak across hosts: seed {SEED}, {SECONDS:.0f}s, {producer.rows:,} rows in {len(batches):,} tasks, "
          f"{sum(injected[0].values())} bad rows injected; restated statements enqueued "
          f"{producer.orders[ORIGINAL_FIRST]} times original first, {producer.orders[CORRECTION_FIRST]} times "
          f"correction first\nsoak across hosts: kill -9: {killed} ({mid_work['stager']} stager and "
          f"{mid_work['loader']} loader kills mid-work); Redis {redis_outage[0]}, back after {redis_outage[1]:.1f}s, "
          f"{producer.unavailable} enqueue(s) refused meanwhile and made again; drained {drained:.0f}s after the "
          f"producer stopped\nsoak across hosts: a reader queried the DuckLake {reader.queries} times while it loaded")
    assert reader.queries > 10 and not reader.problems, (reader.queries, reader.problems[:5], reader.errors[-3:])
    assert producer.orders[ORIGINAL_FIRST] and producer.orders[CORRECTION_FIRST], producer.orders
    assert mid_work["stager"] and mid_work["loader"], "no kill landed while there was work in hand"
    both = [config for _, config in hosts.values()]
    assert all(files_under(c.archive_dir) for c in both), "a host staged and loaded nothing: not two hosts at work"
    assert_warehouse_equals(config, expected_rows(batches, config.datasets))
    assert_nothing_left(both)
    assert_deadletter_is_injected(both, injected, exactly=False)
    assert_archive_is_the_manifest(both)
