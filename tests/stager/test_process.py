"""The stager as a real subprocess: signals, restarts, the age timer and kill -9."""

import json
import random
import signal
import time

import pyarrow.parquet as pq

from duckstage import staging
from stager import TaskType
from stager.tasks import build_huey
from tests.helpers import queue_state, wait_for
from tests.stager.helpers import daily_rows, deadletters, staged_keys, staged_paths, wait_running


def leased_since(config, moment):
    """Tasks leased (claimed, not yet acknowledged) at or after the wall-clock ``moment``."""
    huey, _ = build_huey(config)
    try:
        return huey.storage.sql("select count(*) from duckstage_lease where leased_at >= ?", (moment,),
                                results=True)[0][0]
    finally:
        huey.storage.close()


def test_sigterm_seals_partly_filled_buffers_and_a_restart_restages_nothing(make_queue_config, producer, spawn):
    path, config = make_queue_config(stager={"batch_size": 1000, "batch_timeout": 300})
    enqueue = producer(config)
    enqueue(TaskType.STOCK_DAILY, daily_rows(3))
    enqueue(TaskType.STOCK_BASIC, [dict(ts_code="600000.SH", symbol="600000", name="浦发银行")])
    enqueue(TaskType.INCOME, [dict(ts_code="600000.SH", end_date="20231231", report_type="1")])
    proc = spawn("stager", path, "run")
    wait_for(lambda: queue_state(config) == (0, 3), message="all three tasks leased and buffered")
    assert staged_paths(config) == []  # nothing is due yet: rows are only in buffers
    proc.signal(signal.SIGTERM)
    assert proc.wait(60) == 0, proc.log()  # the stop sealed them: batch_timeout (300 s) is far off
    assert {p.parent.name for p in staged_paths(config)} == {"stock_daily", "stock_basic", "income"}
    assert queue_state(config) == (0, 0)
    files = sorted(staged_paths(config))

    again = spawn("stager", path, "run")
    wait_running(config, again)
    time.sleep(1.5)
    again.signal(signal.SIGINT)
    assert again.wait(30) == 0, again.log()
    assert sorted(staged_paths(config)) == files


def test_age_trigger_in_a_running_stager(make_config, producer, spawn):
    path, config = make_config(stager={"batch_timeout": 1.0, "batch_size": 1000})
    enqueue = producer(config)
    proc = spawn("stager", path, "run")
    wait_running(config, proc)
    enqueued = time.monotonic()
    enqueue(TaskType.STOCK_BASIC, [dict(ts_code="600000.SH", symbol="600000", name="浦发银行")])
    # Sealed while running, with batch_size far off: only the age can have sealed it. Not before
    # batch_timeout; the upper bound leaves room for a loaded machine.
    wait_for(lambda: staged_paths(config, "stock_basic"), timeout=30, interval=0.02, message="the lone row sealed")
    elapsed = time.monotonic() - enqueued
    assert 0.9 <= elapsed < 1.0 + 10, elapsed
    assert proc.stop() == 0


def test_kill_9_at_random_moments_loses_nothing(make_config, producer, spawn):
    """Tasks keep arriving while the stager is killed at random moments: while it
    starts, claims, cleans, buffers, writes or acknowledges."""
    rng = random.Random(7)
    path, config = make_config(stager={"batch_size": 130, "batch_timeout": 1.5, "worker_threads": 3,
                                       "queue_check_interval": 0.02})
    enqueue = producer(config)
    expected, bad, task_no = set(), 0, 0

    def enqueue_some(n):
        nonlocal bad, task_no
        for _ in range(n):
            i = task_no
            task_no += 1
            rows = daily_rows(25, day=f"2024{1 + i // 28 % 12:02d}{1 + i % 28:02d}", start=25 * (i // 336))
            if i % 17 == 0:
                rows[3]["close"] = "abc"
                bad += 1
            task_type = TaskType.STOCK_DAILY if i % 3 else TaskType.DAILY_BAR_NONE
            enqueue(task_type, rows)
            expected.update((task_type.value, r["ts_code"], r["trade_date"]) for r in rows if r["close"] != "abc")

    mid_work = 0  # kills that found this life holding tasks it had claimed and not yet acknowledged
    for life in range(8):
        enqueue_some(60)
        born = time.time()  # the storage stamps leases with wall-clock time
        proc = spawn("stager", path, "run")
        # Start-up takes ~0.5 s: some kills land in it. Lives grow longer so that, however
        # slow the machine, later ones reach the work.
        time.sleep(rng.uniform(0.3, 1.6) + 0.1 * life)
        mid_work += leased_since(config, born) > 0
        proc.kill9()
    assert mid_work >= 1, "no kill landed while the stager held leased tasks"
    final = spawn("stager", path, "run")
    wait_running(config, final)
    wait_for(lambda: queue_state(config) == (0, 0), timeout=60, message="queue drained")
    assert final.stop() == 0, final.log()

    staged = set()
    for task_type in ("stock_daily", "daily_bar_none"):
        for p in staged_paths(config, task_type):
            table = pq.read_table(p)  # every sealed file is complete
            assert int(staging.read_footer(p)["row_count"]) == table.num_rows
            staged |= {(task_type, r["ts_code"], r["trade_date"].strftime("%Y%m%d")) for r in table.to_pylist()}
    assert staged == expected  # none missing, nothing invented
    refused = {(r["task_type"], r["row"]["ts_code"], r["row"]["trade_date"]) for r in deadletters(config)}
    assert len(refused) == bad and all(r["reason"].startswith("close: 'abc'") for r in deadletters(config))
    leftovers = [p for p in config.staging_dir.rglob("*") if staging.is_temporary(p)]
    assert leftovers == []


def test_live_config_edit_is_applied_and_a_bad_edit_refused(make_config, producer, spawn):
    path, config = make_config(stager={"batch_size": 1000, "batch_timeout": 300, "status_interval": 0.2,
                                       "worker_threads": 4})
    proc = spawn("stager", path, "run")
    wait_running(config, proc)

    def status():
        return json.loads((config.run_dir / "stager.json").read_text())

    text = path.read_text()
    path.write_text(text.replace("batch_size: 1000", "batch_size: 3").replace("worker_threads: 4", "worker_threads: 2"))
    wait_for(lambda: status()["batch"]["stock_daily"]["batch_size"] == 3, message="batch_size applied live")
    producer(config)(TaskType.STOCK_DAILY, daily_rows(3))
    wait_for(lambda: staged_paths(config, "stock_daily"), message="sealed by the new batch_size")

    path.write_text(path.read_text().replace("batch_size: 3", "batch_size: lots"))
    wait_for(lambda: status()["config_error"], message="bad edit reported")
    assert "stager.batch_size" in status()["config_error"]
    assert status()["batch"]["stock_daily"]["batch_size"] == 3  # old values stay
    assert proc.stop() == 0
    assert "need a restart to take effect: stager.worker_threads" in proc.log()


def test_producer_running_its_own_huey_consumer(make_queue_config, producer, spawn, tmp_path):
    """run_huey_consumer: false — Huey's own consumer executes the task in the producer's
    deployment, results land in the result store, the stager claims and stages them."""
    import os
    import subprocess
    import sys

    path, config = make_queue_config(stager={"run_huey_consumer": False, "batch_size": 1000, "batch_timeout": 0.5})
    enqueue = producer(config)
    ids = [enqueue(TaskType.STOCK_DAILY, daily_rows(20, start=20 * i)).id for i in range(5)]
    consumer = subprocess.Popen(
        [sys.executable, "-m", "huey.bin.huey_consumer", "stager.tasks.huey", "-w", "2", "-k", "thread"],
        env={**os.environ, "DUCKSTAGE_CONFIG": str(path)}, cwd=tmp_path,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        huey, _ = build_huey(config)
        try:
            wait_for(lambda: huey.storage.result_store_size() == 5, message="results stored by Huey's consumer")
            huey.put("other-app-key", {"not": "ours"})
        finally:
            huey.storage.close()
    finally:
        consumer.terminate()
        consumer.wait(30)
    stager = spawn("stager", path, "run")
    wait_running(config, stager)
    wait_for(lambda: len(staged_keys(config)) == 100, message="all results staged")
    assert stager.stop() == 0, stager.log()
    huey, _ = build_huey(config)
    try:
        keys = {k for k, _ in huey.storage.scan_results(None, 100)[0]}
    finally:
        huey.storage.close()
    assert keys == {"other-app-key"}  # ours deleted after the seal, the other application's kept
    footers = [staging.read_footer(p) for p in staged_paths(config)]
    assert sorted(t for f in footers for t in f["task_ids"]) == sorted(ids)
