"""Where the configuration is found, and where its relative paths point, for every process.

A producer, the stager and ``status`` started from different working
directories with the same configuration file must use the same queue.
"""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import yaml

from tests.helpers import CONFIG_DIR, wait_for

PRODUCER = textwrap.dedent("""\
    import logging
    import sys

    logging.basicConfig(level=logging.DEBUG, stream=sys.stderr)
    from stager import TaskType
    from stager.tasks import huey, process_fetched_data

    process_fetched_data(TaskType.STOCK_DAILY, [dict(ts_code="600000.SH", trade_date="20240102", open=10.0,
                         high=10.5, low=9.9, close=10.2, pre_close=10.0, change=0.2, pct_chg=2.0, vol=1000.5,
                         amount=1020.3)])
    huey.storage.close()
    print("enqueued")
    """)


def shared_layout(root, **sections):
    """config/ with duckstage.yaml (data_dir: ../data, datasets beside it) under ``root``; returns the file."""
    folder = root / "config"
    folder.mkdir(parents=True)
    shutil.copy(CONFIG_DIR / "datasets.yaml", folder / "datasets.yaml")
    body = {"data_dir": "../data", "datasets": "datasets.yaml", "huey": {"fsync": False}, **sections}
    path = folder / "duckstage.yaml"
    path.write_text(yaml.safe_dump(body))
    return path


def run(args, cwd, env=None, timeout=60):
    return subprocess.run([sys.executable, *args], cwd=str(cwd), capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def test_a_producer_started_elsewhere_enqueues_into_the_queue_the_stager_reads(tmp_path):
    config_path = shared_layout(tmp_path / "shared", stager={"batch_timeout": 0.5, "status_interval": 0.2})
    queue = tmp_path / "shared" / "data" / "huey.db"
    producer_dir, operator_dir, service_dir = (tmp_path / name for name in ("producer", "operator", "service"))
    for folder in (producer_dir, operator_dir, service_dir):
        folder.mkdir()
    (producer_dir / "producer.py").write_text(PRODUCER)
    env = {"DUCKSTAGE_CONFIG": str(config_path)}

    produced = run(["producer.py"], producer_dir, env)
    assert produced.returncode == 0 and "enqueued" in produced.stdout, produced.stderr
    assert f"in {queue}" in produced.stderr  # the producer's debug log says where its tasks went
    assert not (producer_dir / "data").exists()

    status = run(["-m", "stager", "status", "--json"], operator_dir, env)
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    assert report["queue"]["path"] == str(queue) and report["queue"]["queued_tasks"] == 1
    human = run(["-m", "stager", "status"], operator_dir, env)
    assert str(queue) in human.stdout and "1 queued" in human.stdout

    log = open(tmp_path / "stager.log", "wb")
    stager = subprocess.Popen([sys.executable, "-m", "stager", "run"], cwd=str(service_dir), stdout=log,
                              stderr=subprocess.STDOUT, env={**os.environ, **env})
    try:
        staging = tmp_path / "shared" / "data" / "staging" / "stock_daily"
        wait_for(lambda: staging.is_dir() and any(staging.glob("*.parquet")), timeout=30,
                 message="the producer's task staged by a stager started elsewhere")
        stager.terminate()
        assert stager.wait(30) == 0
    finally:
        if stager.poll() is None:
            stager.kill()
            stager.wait(10)
        log.close()
    assert str(queue) in (tmp_path / "stager.log").read_text()  # the queue's absolute path, logged at start
    assert not (service_dir / "data").exists() and not (operator_dir / "data").exists()


def test_without_a_configuration_file_the_defaults_are_used_and_the_files_looked_for_named(tmp_path):
    (tmp_path / "config").mkdir()
    shutil.copy(CONFIG_DIR / "datasets.yaml", tmp_path / "config" / "datasets.yaml")
    env = {"DUCKSTAGE_CONFIG": ""}
    out = run(["-m", "stager", "status", "--json"], tmp_path, env)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["queue"]["path"] == str(tmp_path / "data" / "huey.db")
    assert "no configuration file" in out.stderr and str(tmp_path / "config" / "duckstage.yaml") in out.stderr
    assert "$DUCKSTAGE_CONFIG" in out.stderr and "using the defaults" in out.stderr
    assert "Traceback" not in out.stderr


def test_a_named_configuration_file_that_does_not_exist_is_an_error_naming_it(tmp_path):
    missing = tmp_path / "nowhere.yaml"
    for module in ("stager", "loader"):
        out = run(["-m", module, "status"], tmp_path, {"DUCKSTAGE_CONFIG": str(missing)})
        assert out.returncode == 2
        assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr
        assert str(missing) in out.stderr and "$DUCKSTAGE_CONFIG" in out.stderr
        out = run(["-m", module, "run", "--config", "nowhere.yaml"], tmp_path)
        assert out.returncode == 2 and out.stderr.count("\n") == 1
        assert str(missing) in out.stderr and "--config" in out.stderr


def test_a_producer_with_a_refused_configuration_gets_a_config_error_that_says_why(tmp_path):
    (tmp_path / "producer.py").write_text(PRODUCER)
    missing = tmp_path / "nowhere.yaml"
    out = run(["producer.py"], tmp_path, {"DUCKSTAGE_CONFIG": str(missing)})
    assert out.returncode == 1
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("duckstage.exceptions.ConfigError: ") and str(missing) in last
    assert "duckstage/config.py" not in out.stderr  # the loader's frames would only bury the message

    bad = shared_layout(tmp_path / "bad", stager={"batch_size": 0, "bach_timeout": 3})
    out = run(["producer.py"], tmp_path, {"DUCKSTAGE_CONFIG": str(bad)})
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith(f"duckstage.exceptions.ConfigError: {bad}: ")
    assert "stager.batch_size: expected a positive number of rows, got 0" in last and "stager.bach_timeout" in last
    assert "duckstage/config.py" not in out.stderr
