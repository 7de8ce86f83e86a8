"""Real stager processes on one real Redis queue: several hosts, a host killed, Redis itself killed.

Each "host" is a configuration with its own data folder (tests.stager.helpers.redis_host),
as two machines would have; only the Redis queue is shared.
"""

import collections
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from stager import QueueUnavailable, TaskType
from stager.tasks import build_huey
from tests.helpers import queue_state, wait_for
from tests.stager.helpers import daily_rows, redis_host, staged_paths, stager_status, wait_running

# Rows stay in the stagers' buffers (leased, not sealed) until a stop seals them: what a
# kill then leaves is known.
HOLD = {"batch_size": 100_000, "batch_timeout": 300, "worker_threads": 2, "queue_check_interval": 0.05,
        "status_interval": 0.2}


def stagers_on(config):
    """{instance: (alive, leased)} of every stager registered on the configuration's Redis queue."""
    huey, _ = build_huey(config)
    try:
        return {s["instance"]: (s["alive"], s["leased"]) for s in huey.storage.stagers()}
    finally:
        huey.storage.close()


def staged_key_counts(*configs):
    """How many times each (ts_code, trade_date) is staged, across every host's staging folder."""
    counts = collections.Counter()
    for config in configs:
        for path in staged_paths(config, "stock_daily"):
            counts.update((r["ts_code"], r["trade_date"].strftime("%Y%m%d")) for r in pq.read_table(path).to_pylist())
    return counts


def test_a_host_killed_mid_work_its_leased_tasks_are_staged_once_by_the_other_host(tmp_path, redis_db, spawn,
                                                                                   producer):
    path_a, host_a = redis_host(tmp_path, "host-a", redis_db.url, stager=HOLD)
    path_b, host_b = redis_host(tmp_path, "host-b", redis_db.url, stager=HOLD)
    enqueue = producer(host_a)
    a, b = spawn("stager", path_a, "run"), spawn("stager", path_b, "run")
    instance_a, instance_b = wait_running(host_a, a)["instance"], wait_running(host_b, b)["instance"]

    expected, n = set(), 0

    def both_hold_tasks():
        nonlocal n
        rows = daily_rows(10, day=f"2024{1 + n // 28 % 12:02d}{1 + n % 28:02d}", start=10 * (n // 336))
        enqueue(TaskType.STOCK_DAILY, rows)
        expected.update((r["ts_code"], r["trade_date"]) for r in rows)
        n += 1
        held = stagers_on(host_a)
        return n >= 20 and all(held.get(i, (False, 0))[1] for i in (instance_a, instance_b))

    wait_for(both_hold_tasks, timeout=60, interval=0.05, message="both stagers holding tasks")
    wait_for(lambda: queue_state(host_a) == (0, n), message="every task leased")
    lost = stagers_on(host_a)[instance_b][1]

    b.kill9()  # its rows were only in its buffers: nothing of them is sealed
    assert staged_paths(host_b) == []
    # About lease_timeout later, the live stager returns them to the queue and takes them itself.
    wait_for(lambda: stagers_on(host_a) == {instance_a: (True, n)}, timeout=30,
             message=f"the {lost} task(s) of the killed stager taken over by the other")
    assert a.stop() == 0, a.log()

    counts = staged_key_counts(host_a, host_b)
    assert set(counts) == expected  # none missing, nothing invented
    assert set(counts.values()) == {1}, "a row was staged twice"
    assert staged_paths(host_b) == [] and queue_state(host_a) == (0, 0)
    assert f"returned {lost} task(s) or result(s) of stager {instance_b}" in a.log()


@pytest.mark.parametrize("outage", ["kill -9", "stop"])
def test_redis_going_down_mid_run_loses_no_leased_or_acknowledged_task(tmp_path, redis_server, redis_db, spawn,
                                                                       producer, outage):
    # 50 rows seal a file: of twelve tasks of ten rows, ten are sealed and acknowledged, two stay leased.
    path, config = redis_host(tmp_path, "host", redis_db.url, stager=dict(HOLD, batch_size=50))
    enqueue = producer(config)
    stager = spawn("stager", path, "run")
    wait_running(config, stager)
    for i in range(12):
        enqueue(TaskType.STOCK_DAILY, daily_rows(10, day=f"202401{1 + i:02d}"))
    wait_for(lambda: queue_state(config) == (0, 2), message="ten tasks acknowledged, two leased")
    assert len(staged_paths(config)) == 2

    if outage == "kill -9":
        redis_server.kill()  # only what the append-only file holds survives
    else:
        redis_server.stop()  # SIGTERM: Redis finishes its append-only file and exits
    try:
        enqueue(TaskType.STOCK_DAILY, daily_rows(10, day="20240201"))
        raise AssertionError("enqueued with Redis down")
    except QueueUnavailable as exc:
        assert redis_db.url in str(exc)
    waiting = wait_for(lambda: (stager_status(config) or {}).get("backlog", {}).get("error"), timeout=30,
                       message="the stager's status to say what it waits for")
    assert "connecting to 127.0.0.1" in waiting
    redis_server.start()

    # The leases came back with the server, and the acknowledgements too: nothing runs twice.
    assert queue_state(config) == (0, 2)
    for i in range(10):
        enqueue(TaskType.STOCK_DAILY, daily_rows(10, day=f"202402{1 + i:02d}"))
    wait_for(lambda: queue_state(config)[0] == 0, timeout=60, message="the stager leasing again")
    assert stager.stop() == 0, stager.log()

    counts = staged_key_counts(config)
    assert len(counts) == 220 and set(counts.values()) == {1}
    assert queue_state(config) == (0, 0)


def test_a_stager_started_while_redis_is_down_waits_and_then_works(tmp_path, redis_server, redis_db, spawn,
                                                                  producer):
    path, config = redis_host(tmp_path, "host", redis_db.url, stager=dict(HOLD, batch_timeout=0.5))
    redis_server.stop()
    try:
        stager = spawn("stager", path, "run")
        snapshot = wait_running(config, stager)
        assert snapshot["state"] == "running"
        wait_for(lambda: "database_connection" in ((stager_status(config) or {}).get("errors") or {}),
                 timeout=30, message="the stager counting its failed attempts")
        out = subprocess.run([sys.executable, "-m", "stager", "status", "--config", str(path)],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert f"huey queue 'duckstage' (redis) at {redis_db.url}: cannot be read" in out.stdout
        assert "the stager waits for the queue and retries with backoff" in out.stdout
    finally:
        redis_server.start()
    enqueue = producer(config)
    enqueue(TaskType.STOCK_DAILY, daily_rows(10))
    wait_for(lambda: staged_paths(config, "stock_daily"), timeout=60, message="staged once Redis is back")
    assert stager.stop() == 0, stager.log()
    assert "Traceback" not in stager.log()
    assert len(staged_key_counts(config)) == 10 and queue_state(config) == (0, 0)


def test_status_shows_the_backend_and_url_without_its_password(tmp_path):
    from tests.helpers import free_port

    url = f"redis://:s3cret@127.0.0.1:{free_port()}/3"  # nothing listens there
    path, _ = redis_host(tmp_path, "host", url)
    out = subprocess.run([sys.executable, "-m", "stager", "status", "--config", str(path)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "(redis) at redis://:***@127.0.0.1:" in out.stdout and "cannot be read" in out.stdout
    assert "s3cret" not in out.stdout + out.stderr


def test_a_redis_backend_without_its_url_is_refused_in_one_line(tmp_path):
    from tests.helpers import write_config

    path = write_config(tmp_path, huey={"backend": "redis"})
    out = subprocess.run([sys.executable, "-m", "stager", "--config", str(path), "run"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr
    assert "huey.url: expected a Redis URL, redis://HOST:PORT/DB (required with huey.backend: redis)" in out.stderr


def test_stager_produce_with_redis_down_says_so_in_one_line(tmp_path):
    from tests.helpers import free_port

    path, _ = redis_host(tmp_path, "host", f"redis://127.0.0.1:{free_port()}/0")
    out = subprocess.run([sys.executable, "-m", "stager", "--config", str(path), "produce", "--stocks", "2",
                          "--days", "1"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr
    assert "cannot take the task (ConnectionError" in out.stderr and "nothing was enqueued" in out.stderr
