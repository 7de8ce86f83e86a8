"""Live configuration of the running processes: file edits, SIGHUP, refused edits, restart-only keys."""

import json
import os
import signal
import time

import yaml

from stager import TaskType
from duckstage.config import load_config
from tests.helpers import wait_for, write_config
from tests.stager.helpers import daily_rows, staged_paths


def snapshot(config, name):
    try:
        return json.loads((config.run_dir / name).read_text())
    except (OSError, ValueError):
        return None


def edit(path, keep_mtime=False, **sections):
    """Change keys of a YAML config; with keep_mtime only SIGHUP can tell the process."""
    before = os.stat(path)
    body = yaml.safe_load(path.read_text())
    for section, values in sections.items():
        if isinstance(values, dict):
            body.setdefault(section, {}).update(values)
        else:
            body[section] = values
    path.write_text(yaml.safe_dump(body))
    if keep_mtime:
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


def test_loader_applies_live_keys_refuses_a_bad_edit_and_reloads_on_sighup(tmp_path, spawn):
    path = write_config(tmp_path, loader={"rescan_interval": 0.2, "max_retries": 3, "retry_delay": 1,
                                          "idle_release": 0})
    config = load_config(path)
    proc = spawn("loader", path, "run")

    def cfg():
        st = snapshot(config, "loader.json")
        return st and st.get("config")

    wait_for(lambda: cfg() and snapshot(config, "loader.json")["state"] == "idle", message="loader idle")
    edit(path, log_level="DEBUG", loader={"max_retries": 7, "retry_delay": 0.5})
    wait_for(lambda: cfg()["live"]["max_retries"] == 7, message="max_retries applied live")
    assert cfg()["live"]["retry_delay"] == 0.5 and cfg()["log_level"] == "DEBUG" and cfg()["error"] is None

    edit(path, loader={"retry_delay": "soon"})
    wait_for(lambda: cfg()["error"], message="bad edit reported")
    assert "loader.retry_delay" in cfg()["error"] and "soon" in cfg()["error"]
    assert cfg()["live"]["retry_delay"] == 0.5  # the old values stay

    edit(path, keep_mtime=True, loader={"retry_delay": 2, "max_retries": 9, "database": "other.duckdb"})
    time.sleep(1.5)
    assert cfg()["live"]["max_retries"] == 7  # same mtime: not seen without SIGHUP
    proc.signal(signal.SIGHUP)
    wait_for(lambda: cfg()["live"]["max_retries"] == 9, message="SIGHUP applied the edit")
    st = snapshot(config, "loader.json")
    assert st["config"]["error"] is None and st["config"]["live"]["retry_delay"] == 2
    assert st["config"]["restart_required"] == ["loader.database"]
    assert st["database"] == str(config.loader.database)  # a restart key keeps its running value
    assert proc.stop() == 0
    log = proc.log()
    assert "configuration edit refused, keeping the running values" in log
    assert "need a restart to take effect: loader.database" in log


def test_stager_reloads_on_sighup_alone(tmp_path, spawn, producer):
    path = write_config(tmp_path, stager={"batch_size": 1000, "batch_timeout": 300, "status_interval": 0.1})
    config = load_config(path)
    proc = spawn("stager", path, "run")
    wait_for(lambda: (snapshot(config, "stager.json") or {}).get("state") == "running", message="stager running")
    edit(path, keep_mtime=True, stager={"batch_size": 2})
    proc.signal(signal.SIGHUP)
    wait_for(lambda: snapshot(config, "stager.json")["batch"]["stock_daily"]["batch_size"] == 2,
             message="batch_size applied on SIGHUP")
    assert snapshot(config, "stager.json")["config"]["reloads"] == 1
    producer(config)(TaskType.STOCK_DAILY, daily_rows(2))
    wait_for(lambda: staged_paths(config, "stock_daily"), message="sealed at the new batch_size")
    assert proc.stop() == 0
