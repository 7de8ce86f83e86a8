"""File sizes follow the queue: batch_size when it is quiet, up to batch_max_rows under a backlog.

In-process steps on a real SqliteHuey file (a lease takes up to 8 tasks), then
the real ``stager run`` process. Time never moves in the step tests, so no
file here can have been sealed by its age.
"""

import threading

import pyarrow.parquet as pq
import pytest

from duckstage.config import from_mapping
from duckstage.exceptions import ConfigError
from stager import TaskType
from stager.service import Stager
from tests.helpers import REPO, queue_state, wait_for
from tests.stager.helpers import daily_rows, staged_keys, staged_paths

TASK_ROWS = 400


def enqueue_tasks(enqueue, tasks, first=0, task_rows=TASK_ROWS):
    """``tasks`` stock_daily tasks of ``task_rows`` rows, each with keys of its own; the keys."""
    keys = set()
    for i in range(first, first + tasks):
        rows = daily_rows(task_rows, day=f"2024{1 + i // 28 % 12:02d}{1 + i % 28:02d}", start=task_rows * (i // 336))
        enqueue(TaskType.STOCK_DAILY, rows)
        keys |= {(r["ts_code"], r["trade_date"]) for r in rows}
    return keys


def file_rows(config):
    return [pq.read_metadata(p).num_rows for p in sorted(staged_paths(config, "stock_daily"))]


def started(config):
    stager = Stager(config, clock=lambda: 0.0)
    stager.prepare()
    return stager


def test_a_backlog_grows_files_to_batch_max_rows(make_config, producer):
    # 44 tasks wait: leases of 8, 8, 8, 8, 8 (full: a backlog) and 4 (short: the backlog is over).
    _, config = make_config(stager={"batch_size": 1000, "batch_max_rows": 5000, "batch_timeout": 300})
    keys = enqueue_tasks(producer(config), 44)
    stager = started(config)
    while stager.stage_next(now=0.0):
        pass
    # The first full lease alone proves nothing (it may have taken all there was): batch_size.
    # A full lease of 3,200 rows is a backlog of more than a file (batch_size 1,000).
    # From the second one on, files grow to batch_max_rows (13 tasks of 400 rows); the short
    # lease ends the backlog: what was held is sealed with its first task, the rest at batch_size.
    assert file_rows(config) == [1200, 1200, 5200, 5200, 3600, 1200]
    assert len(staged_keys(config)) == len(keys) == 44 * TASK_ROWS
    assert queue_state(config) == (0, 0)  # every task sealed and acknowledged


def test_a_quiet_queue_keeps_batch_size(make_config, producer):
    # Fewer tasks than a lease takes, again and again: never a backlog, every file at batch_size.
    _, config = make_config(stager={"batch_size": 1000, "batch_max_rows": 5000, "batch_timeout": 300})
    enqueue = producer(config)
    stager = started(config)
    for round_ in range(4):
        enqueue_tasks(enqueue, 3, first=3 * round_)
        stager.stage_next(now=0.0)
        assert file_rows(config) == [1200] * (round_ + 1)  # sealed in the step that staged it
    assert stager.buffers["stock_daily"].rows == 0


def test_a_backlog_of_tiny_tasks_is_no_backlog_of_rows_and_keeps_batch_size(make_config, producer):
    # 48 tasks of 10 rows wait: full leases, but of 80 rows, less than a file (batch_size 100).
    # Growing the files would only hold the rows back (a daily update: one small task per stock).
    _, config = make_config(stager={"batch_size": 100, "batch_max_rows": 5000, "batch_timeout": 300})
    enqueue_tasks(producer(config), 48, task_rows=10)
    stager = started(config)
    while stager.stage_next(now=0.0):
        pass
    assert file_rows(config) == [100] * 4 and stager.buffers["stock_daily"].rows == 80


def test_the_end_of_a_backlog_seals_what_it_held_without_waiting_for_the_age(make_config, producer):
    # 48 tasks: six full leases, then an empty claim. The rows held for a bigger file are
    # sealed by that claim's step, not 300 s later by batch_timeout.
    _, config = make_config(stager={"batch_size": 1000, "batch_max_rows": 5000, "batch_timeout": 300})
    enqueue_tasks(producer(config), 48)
    stager = started(config)
    for _ in range(6):
        assert stager.stage_next(now=0.0)
    assert stager.buffers["stock_daily"].rows >= 1000  # held: the backlog went on to the last lease
    assert stager.run_once(now=0.0) == 0  # the queue is empty: the claim comes back short
    assert stager.buffers["stock_daily"].rows == 0
    assert sum(file_rows(config)) == 48 * TASK_ROWS and max(file_rows(config)) == 5200


def test_tasks_claimed_in_a_backlog_are_not_sealed_one_by_one_when_another_worker_ends_it(make_config, producer):
    # Leases of 8, 8 and 3 tasks of 1,000 rows (= batch_size). A worker holds the second lease
    # (taken in the backlog) while another takes the short third one, which ends the backlog.
    _, config = make_config(stager={"batch_size": 1000, "batch_max_rows": 100_000, "batch_timeout": 300})
    enqueue_tasks(producer(config), 19, task_rows=1000)
    stager = started(config)
    stager.stage(stager.claims.claim(), now=0.0)  # one full lease proves no backlog: 8 files
    claimed, go = threading.Event(), threading.Event()

    def worker():
        claims = stager.claims.claim()
        claimed.set()
        go.wait(30)
        stager.stage(claims, now=0.0)

    thread = threading.Thread(target=worker)
    thread.start()
    assert claimed.wait(30)
    stager.stage(stager.claims.claim(), now=0.0)  # the short lease: quiet again, 3 files
    go.set()
    thread.join(30)
    assert stager.buffers["stock_daily"].rows == 8000  # the backlog's tasks went on growing their file
    assert stager.seal_due(now=0.0) == 1  # and the sealer takes them together, not after batch_timeout
    assert file_rows(config) == [1000] * 11 + [8000]


def test_batch_bytes_still_bounds_a_file_under_a_backlog(make_config, producer):
    _, config = make_config(stager={"batch_size": 1000, "batch_max_rows": 1_000_000, "batch_bytes": 4096,
                                    "batch_timeout": 300})
    enqueue_tasks(producer(config), 24)
    stager = started(config)
    while stager.stage_next(now=0.0):
        pass
    assert file_rows(config) == [TASK_ROWS] * 24  # each 400-row task alone is over 4 KiB


def test_batch_max_rows_below_batch_size_means_batch_size(make_config, producer):
    _, config = make_config(stager={"batch_size": 1000, "batch_max_rows": 10, "batch_timeout": 300})
    enqueue_tasks(producer(config), 24)
    stager = started(config)
    while stager.stage_next(now=0.0):
        pass
    assert file_rows(config) == [1200] * 8


def test_batch_max_rows_is_validated_and_may_be_set_per_task_type(tmp_path):
    config = from_mapping({"stager": {"batch_max_rows": 20000, "task_types": {"income": {"batch_max_rows": 50}}}},
                          "<test>", REPO / "config", tmp_path)
    assert config.stager.batch_for("stock_daily").batch_max_rows == 20000
    assert config.stager.batch_for("income").batch_max_rows == 50
    with pytest.raises(ConfigError) as err:
        from_mapping({"stager": {"batch_max_rows": 0}}, "<test>", REPO / "config", tmp_path)
    assert "stager.batch_max_rows: expected a positive number of rows, got 0" in str(err.value)


def test_a_running_stager_grows_files_under_a_backlog_and_rotates_at_batch_size_when_quiet(
        make_config, producer, spawn):
    # Tasks of batch_size rows: whatever a backlog leaves in a buffer is a file's worth when it ends.
    path, config = make_config(stager={"batch_size": 1000, "batch_max_rows": 20000, "batch_timeout": 300,
                                       "worker_threads": 2})
    enqueue = producer(config)
    enqueue_tasks(enqueue, 60, task_rows=1000)  # 60,000 rows wait before the stager starts
    proc = spawn("stager", path, "run")
    wait_for(lambda: queue_state(config) == (0, 0), timeout=60, message="the backlog sealed and acknowledged")
    backlog = file_rows(config)
    assert sum(backlog) == 60_000
    # At batch_size they would be 60 files; the first full leases may still rotate at batch_size.
    assert len(backlog) <= 20 and max(backlog) >= 20_000, backlog
    # Quiet again: three tasks are sealed as one 1,200-row file as soon as they are staged,
    # long before batch_timeout (300 s).
    enqueue_tasks(enqueue, 3, first=60)
    wait_for(lambda: len(file_rows(config)) == len(backlog) + 1, timeout=60, message="the quiet tasks sealed")
    assert sorted(file_rows(config)) == sorted(backlog + [1200])
    assert proc.stop() == 0, proc.log()
