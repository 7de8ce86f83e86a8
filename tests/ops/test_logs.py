"""Logs: human-readable by default, one JSON object per line with --log-format json, never a secret."""

import json
import logging
import signal
import sys

from duckstage import logs
from stager import TaskType
from duckstage.config import load_config
from tests.helpers import wait_for, write_config
from tests.stager.helpers import daily_rows

REQUIRED = {"timestamp", "level", "process", "pid", "thread", "logger", "event", "message"}


def record(msg, *args, **extra):
    rec = logging.LogRecord("duckstage.stager", logging.WARNING, __file__, 1, msg, args, None)
    rec.__dict__.update(extra)
    return rec


def test_json_lines_carry_context_and_figures_and_mask_secrets():
    line = logs.JsonFormatter("stager").format(record(
        "task %s failed: token=abc123 password: 'hunter2'", "t-1", event="dead_lettered", task_type="income",
        task_id="t-1", rows=3, params={"ts_code": "600000.SH", "token": "abc123"}))
    body = json.loads(line)
    assert REQUIRED <= set(body) and body["process"] == "stager" and body["level"] == "WARNING"
    assert body["event"] == "dead_lettered" and body["task_type"] == "income" and body["task_id"] == "t-1"
    assert body["figures"] == {"rows": 3, "params": {"ts_code": "600000.SH", "token": "***"}}
    assert "abc123" not in line and "hunter2" not in line
    text = logs.TextFormatter().format(record("calling with api_key=XYZ987 and ts_code=600000.SH"))
    assert "XYZ987" not in text and "ts_code=600000.SH" in text


def test_both_processes_log_json_lines_with_the_file_and_task(tmp_path, spawn, producer):
    path = write_config(tmp_path, stager={"batch_timeout": 0.2, "status_interval": 0.1},
                        loader={"rescan_interval": 0.2, "idle_release": 0})
    config = load_config(path)
    stager = spawn("stager", path, "--log-format", "json", "run")
    loader = spawn("loader", path, "--log-format", "json", "run")
    bad = daily_rows(1, start=9)
    bad[0]["close"] = "abc"
    task = producer(config)(TaskType.STOCK_DAILY, daily_rows(2) + bad, token="tok-SECRET-123")
    wait_for(lambda: '"event": "loaded"' in loader.log(), message="the loader logged a load")
    stager.signal(signal.SIGTERM)
    assert stager.wait() == 0 and loader.stop() == 0

    for proc, name in ((stager, "stager"), (loader, "loader")):
        lines = [json.loads(line) for line in proc.log().splitlines() if line.strip()]
        assert lines and all(REQUIRED <= set(line) and line["process"] == name for line in lines)
        assert "tok-SECRET-123" not in proc.log()
    events = {}
    for line in map(json.loads, stager.log().splitlines() + loader.log().splitlines()):
        events.setdefault(line["event"], []).append(line)
    [sealed] = events["sealed"]
    assert sealed["task_type"] == "stock_daily" and sealed["file"].endswith(".parquet")
    assert sealed["figures"]["rows"] == 2 and sealed["thread"] == "sealer"
    [dead] = events["dead_lettered"]
    assert dead["task_id"] == task.id and dead["figures"]["rows"] == 1
    [loaded] = events["loaded"]
    assert loaded["file"] == sealed["file"] and loaded["figures"]["inserted"] == 2


def test_an_unknown_log_format_is_refused(tmp_path):
    import subprocess

    path = write_config(tmp_path)
    result = subprocess.run([sys.executable, "-m", "loader", "--config", str(path), "--log-format", "xml",
                             "status"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "log-format" in result.stderr
