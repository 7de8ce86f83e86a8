"""The producer's side of the contract: a task type datasets.yaml does not know is refused at enqueue."""

import subprocess
import sys

import pytest
import yaml
from huey.api import group

from stager import TaskType, UnknownTaskType
from duckstage.config import load_config
from stager.service import Stager
from tests.helpers import CONFIG_DIR, write_config
from tests.stager.helpers import daily_rows, deadletters, staged_keys

DECLARED = ["stock_basic", "stock_daily", "daily_bar_qfq", "daily_bar_none", "balancesheet", "income", "cashflow"]


def queued(enqueue):
    return enqueue.huey.storage.queue_size()


@pytest.mark.parametrize("call, left_queued", [
    (lambda task: task("stock_dialy", daily_rows(2), trade_date="20240102"), 0),
    (lambda task: task(task_type="stock_dialy", data=daily_rows(2)), 0),
    (lambda task: task.schedule(("stock_dialy", daily_rows(2)), delay=60), 0),
    (lambda task: task.huey.enqueue(group([task.s("stock_daily", daily_rows(1)), task.s("stock_dialy", [])])), 0),
    # map is Huey's loop of single enqueues: the good task before the bad one is queued
    (lambda task: task.map([("stock_daily", daily_rows(1)), ("stock_dialy", daily_rows(1))]), 1),
], ids=["positional", "keyword", "schedule", "group", "map"])
def test_a_misspelt_task_type_is_refused_at_enqueue_and_nothing_is_enqueued(make_config, producer, call,
                                                                            left_queued):
    _, config = make_config()
    enqueue = producer(config)
    with pytest.raises(UnknownTaskType) as refused:
        call(enqueue)
    message = str(refused.value)
    assert "unknown task type 'stock_dialy' (did you mean 'stock_daily'?)" in message
    assert ", ".join(DECLARED) in message and "nothing was enqueued" in message
    assert isinstance(refused.value, ValueError) and refused.value.known == DECLARED
    assert queued(enqueue) == left_queued
    enqueue(TaskType.STOCK_DAILY, daily_rows(1))  # the producer goes on
    enqueue("stock_daily", daily_rows(1))
    assert queued(enqueue) == left_queued + 2


@pytest.mark.parametrize("task_type", [None, 42, "STOCK_DAILY", ""])
def test_task_types_that_are_not_a_declared_name_are_refused(make_config, producer, task_type):
    _, config = make_config()
    enqueue = producer(config)
    with pytest.raises(UnknownTaskType):
        enqueue(task_type, daily_rows(1))
    assert queued(enqueue) == 0


def test_a_producer_using_the_configured_task_gets_the_error_where_it_called(tmp_path):
    """The producer's own process, with ``stager.tasks.process_fetched_data`` from $DUCKSTAGE_CONFIG."""
    path = write_config(tmp_path)
    script = (
        "from stager import UnknownTaskType\n"
        "from stager.tasks import process_fetched_data\n"
        "try:\n"
        "    process_fetched_data('stock_dialy', [{'ts_code': '600000.SH'}])\n"
        "except UnknownTaskType as exc:\n"
        "    print('refused:', exc)\n"
        "from stager.tasks import huey\n"
        "print('queued:', huey.storage.queue_size())\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                         cwd=tmp_path, env={"DUCKSTAGE_CONFIG": str(path), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert "refused: unknown task type 'stock_dialy' (did you mean 'stock_daily'?)" in out.stdout
    assert "queued: 0" in out.stdout and "Traceback" not in out.stderr


def config_before(tmp_path, config):
    """The same queue and data, with a datasets file that still declares stock_weekly."""
    datasets = yaml.safe_load((CONFIG_DIR / "datasets.yaml").read_text())
    datasets["datasets"]["stock_weekly"] = datasets["datasets"]["stock_daily"]
    folder = tmp_path / "before"
    folder.mkdir()
    (folder / "datasets.yaml").write_text(yaml.safe_dump(datasets, allow_unicode=True))
    return load_config(write_config(folder, data_dir=str(config.data_dir), datasets=str(folder / "datasets.yaml")))


def test_a_task_type_removed_after_its_task_was_enqueued_is_dead_lettered(make_config, producer, tmp_path):
    _, config = make_config()
    before = config_before(tmp_path, config)
    weekly = producer(before)("stock_weekly", daily_rows(2))
    unreadable = producer(config)(TaskType.INCOME, 42)
    stager = Stager(config)
    stager.prepare()
    while stager.stage_next():
        pass
    by_task = {}
    for rec in deadletters(config):
        by_task.setdefault(rec["task_id"], []).append(rec)
    assert len(by_task[weekly.id]) == 2 and "unknown task type 'stock_weekly'" in by_task[weekly.id][0]["reason"]
    assert (config.deadletter_dir / "_unknown_task_type").is_dir()
    assert "not int" in by_task[unreadable.id][0]["reason"] and by_task[unreadable.id][0]["row"] == {"value": "42"}
    assert stager.huey.storage.queue_size() == 0 and stager.huey.storage.lease_count() == 0


def test_requeue_of_a_still_unknown_task_type_is_refused_whole_until_it_is_declared(make_config, producer,
                                                                                   tmp_path):
    path, config = make_config()
    before = config_before(tmp_path, config)
    producer(config)(TaskType.STOCK_DAILY, [dict(daily_rows(1)[0], close="abc")])
    producer(before)("stock_weekly", daily_rows(2))
    stager = Stager(config)
    stager.prepare()
    while stager.stage_next():
        pass
    stager.huey.storage.close()
    [unknown] = (config.deadletter_dir / "_unknown_task_type").glob("*.jsonl")

    def requeue(config_path):
        return subprocess.run([sys.executable, "-m", "stager", "--config", str(config_path), "requeue",
                               str(unknown)], capture_output=True, text=True, timeout=60)

    out = requeue(path)
    assert out.returncode == 2 and "Traceback" not in out.stderr and out.stderr.count("\n") == 1
    assert "unknown task type 'stock_weekly'" in out.stderr and str(unknown) in out.stderr
    assert unknown.exists()  # not moved, and nothing enqueued
    assert producer(config).huey.storage.queue_size() == 0

    out = requeue(before.source)  # stock_weekly declared again
    assert out.returncode == 0, out.stderr
    weekly = Stager(before)
    weekly.prepare()
    while weekly.stage_next():
        pass
    weekly.seal_all()
    assert len(staged_keys(before, "stock_weekly")) == 2
