"""/metrics, /healthz and /readyz of the two real processes, over real HTTP."""

import json
import shutil
import signal
import socket
import subprocess
import sys
import time

from stager import TaskType
from duckstage.config import load_config
from stager.tasks import build_huey
from tests.helpers import (answers, free_port, get, get_json, hold_database, release, samples, value, wait_for,
                           write_config)
from tests.stager.helpers import daily_rows


def status_json(module, path):
    result = subprocess.run([sys.executable, "-m", module, "--config", str(path), "status", "--json"],
                            capture_output=True, text=True, timeout=60, cwd=str(path.parent))
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_rows_through_both_processes_move_the_metrics_and_status_agrees(tmp_path, spawn):
    sp, lp = free_port(), free_port()
    path = write_config(tmp_path, stager={"batch_size": 1000, "batch_timeout": 0.3, "status_interval": 0.1,
                                          "metrics_port": sp},
                        loader={"metrics_port": lp, "rescan_interval": 0.2, "idle_release": 0})
    config = load_config(path)
    stager = spawn("stager", path, "run")
    loader = spawn("loader", path, "run")
    wait_for(lambda: answers(sp) and answers(lp), message="both processes serving /healthz")

    assert get_json(sp, "/healthz") == (200, {"process": "stager", "status": "ok", "reasons": []})
    assert get_json(lp, "/readyz")[0] == 200 and get_json(sp, "/readyz")[0] == 200
    before_s, before_l = samples(get(sp, "/metrics")[1]), samples(get(lp, "/metrics")[1])

    enqueued_at = time.time()
    huey, enqueue = build_huey(config)
    try:
        bad = daily_rows(2, start=100)
        for r in bad:
            r["close"] = "abc"
        enqueue(TaskType.STOCK_DAILY, daily_rows(7) + bad)
        enqueue(TaskType.STOCK_DAILY, daily_rows(3, start=50))
    finally:
        huey.storage.close()

    def loaded():
        got = samples(get(lp, "/metrics")[1])
        done = value(got, "duckstage_loader_rows_inserted_total", task_type="stock_daily") >= 10 \
            and value(got, "duckstage_loader_state", state="idle") == 1
        return got if done else None

    after_l = wait_for(loaded, message="10 rows inserted by the loader")
    after_s = samples(get(sp, "/metrics")[1])

    def delta(after, before, name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    sd = {"task_type": "stock_daily"}
    assert delta(after_s, before_s, "duckstage_stager_tasks_total", **sd) == 2
    assert delta(after_s, before_s, "duckstage_stager_rows_in_total", **sd) == 12
    assert delta(after_s, before_s, "duckstage_stager_rows_staged_total", **sd) == 10
    assert delta(after_s, before_s, "duckstage_stager_rows_deadlettered_total", reason="invalid_value", **sd) == 2
    assert value(after_s, "duckstage_stager_seals_total", result="ok", **sd) == \
        value(after_s, "duckstage_stager_files_sealed_total", **sd) >= 1
    assert value(after_s, "duckstage_stager_seal_lag_seconds_count", **sd) >= 1
    assert value(after_s, "duckstage_huey_queue_tasks", state="queued") == 0
    assert value(after_s, "duckstage_stager_thread_state", thread="sealer", state="idle") + \
        value(after_s, "duckstage_stager_thread_state", thread="sealer", state="working") == 1

    files = value(after_s, "duckstage_stager_files_sealed_total", **sd)
    assert delta(after_l, before_l, "duckstage_loader_files_loaded_total", **sd) == files
    assert delta(after_l, before_l, "duckstage_loader_rows_inserted_total", **sd) == 10
    assert value(after_l, "duckstage_loader_rows_updated_total", **sd) == 0
    assert value(after_l, "duckstage_loader_batches_total", result="ok", **sd) >= 1
    assert value(after_l, "duckstage_loader_last_load_timestamp_seconds", **sd) > 0
    # End to end: enqueued during this test, committed by now (however slow the machine).
    assert value(after_l, "duckstage_loader_lag_seconds_count", **sd) == files
    lag = value(after_l, "duckstage_loader_last_lag_seconds", edge="oldest", **sd)
    assert 0 <= lag <= time.time() - enqueued_at + 1, lag
    assert value(after_l, "duckstage_loader_pending_files", **sd) == 0

    # The status commands read the same numbers.
    st = status_json("stager", path)["process"]
    scraped = samples(get(sp, "/metrics")[1])
    for field, metric in (("rows_in", "duckstage_stager_rows_in_total"), ("tasks", "duckstage_stager_tasks_total"),
                          ("rows_staged", "duckstage_stager_rows_staged_total"),
                          ("rows_deadlettered", None)):
        expected = st["task_types"]["stock_daily"][field]
        if metric is None:
            got = sum(v for (name, labels), v in scraped.items()
                      if name == "duckstage_stager_rows_deadlettered_total" and ("task_type", "stock_daily") in labels)
        else:
            got = value(scraped, metric, **sd)
        assert got == expected, field
    assert st["metrics_address"] == f"127.0.0.1:{sp}"
    lst = status_json("loader", path)
    scraped = samples(get(lp, "/metrics")[1])
    assert lst["task_types"]["stock_daily"]["inserted"] == value(scraped, "duckstage_loader_rows_inserted_total", **sd)
    assert lst["task_types"]["stock_daily"]["files_loaded"] == \
        value(scraped, "duckstage_loader_files_loaded_total", **sd)
    assert lst["manifest"]["stock_daily"]["rows"] == 10

    assert stager.stop() == 0 and loader.stop() == 0
    assert not answers(sp) and not answers(lp)


def test_readyz_says_why_a_process_cannot_work(tmp_path, spawn):
    sp, lp = free_port(), free_port()
    path = write_config(tmp_path, stager={"metrics_port": sp, "status_interval": 0.1},
                        loader={"metrics_port": lp, "idle_release": 0, "rescan_interval": 0.2,
                                "retry_delay": 0.1, "retry_max_delay": 0.2})
    config = load_config(path)

    # Staging replaced by a file: the stager cannot seal there.
    stager = spawn("stager", path, "run")
    wait_for(lambda: answers(sp, "/readyz"), message="stager ready")
    moved = config.staging_dir.with_name("staging.moved")
    config.staging_dir.rename(moved)
    config.staging_dir.write_text("not a folder")
    try:
        code, body = get_json(sp, "/readyz")
        assert code == 503 and any(r.startswith("staging:") for r in body["reasons"]), body
        assert get(sp, "/healthz")[0] == 200, get(sp, "/healthz")  # alive all the same
    finally:
        config.staging_dir.unlink()
        moved.rename(config.staging_dir)
    assert get(sp, "/readyz")[0] == 200
    stager.signal(signal.SIGTERM)
    assert stager.wait() == 0

    # A person holds the database in the duckdb CLI: the loader cannot load.
    loader = spawn("loader", path, "run")
    wait_for(lambda: answers(lp, "/readyz"), message="loader ready")
    holder = hold_database(config.loader.database)
    try:
        code, body = get_json(lp, "/readyz")
        assert code == 503 and any("database not openable" in r for r in body["reasons"]), body
        assert get(lp, "/healthz")[0] == 200, get(lp, "/healthz")
    finally:
        release(holder)
    wait_for(lambda: get(lp, "/readyz")[0] == 200, message="loader ready again")
    assert get(lp, "/nope")[0] == 404
    loader.signal(signal.SIGTERM)
    assert loader.wait() == 0


def test_a_taken_metrics_port_is_refused_in_one_line(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        path = write_config(tmp_path, loader={"metrics_port": port}, stager={"metrics_port": port})
        for module in ("loader", "stager"):
            result = subprocess.run([sys.executable, "-m", module, "--config", str(path), "run"],
                                    capture_output=True, text=True, timeout=60, cwd=str(tmp_path))
            assert result.returncode == 2, result.stderr
            assert f"{module}.metrics_port" in result.stderr and "Traceback" not in result.stderr
    shutil.rmtree(tmp_path / "data", ignore_errors=True)


def test_metrics_port_out_of_range_is_refused_at_start(tmp_path):
    path = write_config(tmp_path, loader={"metrics_port": 70000})
    result = subprocess.run([sys.executable, "-m", "loader", "--config", str(path), "run"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "loader.metrics_port" in result.stderr
