"""The two commands, ``stager`` and ``loader``, as real subprocesses: options, errors, exit statuses, status."""

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import yaml

from stager import TaskType
from duckstage.config import load_config
from tests.helpers import CONFIG_DIR, queue_state, wait_for, write_config
from tests.stager.helpers import daily_rows, staged_paths

COMMANDS = ("stager", "loader")


def cli(module, *args, cwd=None, env=None, timeout=60):
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=timeout,
                          cwd=str(cwd) if cwd else None, env={**os.environ, **(env or {})})


def one_line_error(out, code=2):
    """The command failed with ``code`` and said why in one line, with no traceback."""
    assert out.returncode == code, (out.returncode, out.stderr)
    assert "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    return out.stderr.strip()


def snapshot(config, name):
    try:
        return json.loads((config.run_dir / name).read_text())
    except (OSError, ValueError):
        return None


def edit(path, **sections):
    body = yaml.safe_load(path.read_text())
    for section, values in sections.items():
        body.setdefault(section, {}).update(values)
    path.write_text(yaml.safe_dump(body))


# -- options before and after the command, -h, one way of failing ---------------------


@pytest.mark.parametrize("module", COMMANDS)
def test_help_works_on_both_commands_and_their_subcommands(module):
    for args in (["-h"], ["--help"], ["run", "-h"], ["status", "-h"]):
        out = cli(module, *args)
        assert out.returncode == 0, out.stderr
        assert out.stdout.startswith(f"Usage: {module} ") and "--config" in out.stdout
        assert "--log-format" in out.stdout


def test_config_and_log_format_are_taken_after_the_subcommand_too(tmp_path, spawn):
    path = write_config(tmp_path, huey={"fsync": False}, stager={"status_interval": 0.2})
    config = load_config(path)
    for module in COMMANDS:
        before = cli(module, "--config", str(path), "status", "--json", cwd=tmp_path)
        after = cli(module, "status", "--json", "--config", str(path), cwd=tmp_path)
        assert before.returncode == after.returncode == 0, after.stderr
        assert json.loads(before.stdout)["configuration"]["source"] == str(path)
        assert json.loads(after.stdout)["configuration"]["source"] == str(path)

    # --log-format after the command: the process logs JSON lines.
    proc = subprocess.Popen([sys.executable, "-m", "stager", "run", "--config", str(path), "--log-format", "json"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=str(tmp_path))
    try:
        wait_for(lambda: (snapshot(config, "stager.json") or {}).get("state") == "running", message="stager running")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    records = [json.loads(line) for line in err.splitlines()]
    assert records and all(r["process"] == "stager" for r in records)

    # Given on both sides, the subcommand's wins; a reload of nothing still says so in one line.
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "datasets.yaml").write_text((CONFIG_DIR / "datasets.yaml").read_text())
    out = cli("loader", "--log-format", "text", "reload", "missing-*.parquet", "--log-format", "json",
              cwd=tmp_path, env={"DUCKSTAGE_CONFIG": ""})
    assert out.returncode == 2, out.stderr
    warning, error = out.stderr.strip().splitlines()
    assert json.loads(warning)["event"] == "config_defaults"  # no file here: the defaults, said in JSON
    assert error.startswith("loader: ") and "no such file" in error


@pytest.mark.parametrize("module", COMMANDS)
def test_both_commands_fail_the_same_way(tmp_path, module):
    path = write_config(tmp_path)
    line = one_line_error(cli(module, "status", "--config", str(path), "--bogus"))
    assert line.startswith(f"{module}: ") and "--bogus" in line and f"{module} status -h" in line
    line = one_line_error(cli(module, "--config", str(path), "nonsense"))
    assert line.startswith(f"{module}: ") and "nonsense" in line
    line = one_line_error(cli(module, "run", "--log-format", "xml", "--config", str(path)))
    assert line.startswith(f"{module}: ") and "xml" in line
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"data_dir": str(tmp_path / "data"), "datasets": str(CONFIG_DIR / "datasets.yaml"),
                                   "loader": {"max_retries": -1}}))
    line = one_line_error(cli(module, "run", "--config", str(bad)))
    assert line.startswith(f"{module}: configuration refused: {bad}: loader.max_retries: expected an integer >= 0")


def test_loader_rebuild_refuses_an_unknown_task_type_with_exit_2(tmp_path):
    path = write_config(tmp_path)
    line = one_line_error(cli("loader", "rebuild", "--task-type", "stock_dialy", "--config", str(path)))
    assert line.startswith("loader: --task-type: ") and "'stock_dialy'" in line and "stock_daily" in line


@pytest.mark.parametrize("module", COMMANDS)
def test_an_unusable_data_dir_names_the_file_and_the_key(tmp_path, module):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    path = write_config(tmp_path, data_dir=str(blocker / "data"))
    line = one_line_error(cli(module, "run", "--config", str(path)))
    assert f"{path}: data_dir: expected a folder" in line and str(blocker) in line


def test_modules_run_the_command_only_as_a_program():
    out = subprocess.run([sys.executable, "-c", "import stager.__main__, loader.__main__; print('imported')"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout == "imported\n", out.stderr


# -- a start-up refusal, and status with a refused edit ------------------------------


def test_a_refused_configuration_names_every_invalid_key_at_start(tmp_path):
    datasets = yaml.safe_load((CONFIG_DIR / "datasets.yaml").read_text())
    datasets["datasets"]["stock_daily"]["primary_key"] = ["ts_code", "nope"]
    datasets["datasets"]["income"]["columns"][1]["type"] = "MONEY"
    (tmp_path / "datasets.yaml").write_text(yaml.safe_dump(datasets, allow_unicode=True))
    path = write_config(tmp_path, datasets=str(tmp_path / "datasets.yaml"),
                        stager={"batch_size": "lots", "bach_timeout": 3}, loader={"retry_delay": -1})
    for module in COMMANDS:
        line = one_line_error(cli(module, "run", "--config", str(path)))
        for key in ("stager.batch_size", "stager.bach_timeout", "loader.retry_delay",
                    "datasets.stock_daily.primary_key", "datasets.income.columns[1].type"):
            assert key in line, key
        assert str(path) in line and str(tmp_path / "datasets.yaml") in line


def test_status_of_both_shows_a_refused_edit_beside_the_running_values(tmp_path, spawn):
    path = write_config(tmp_path, huey={"fsync": False},
                        stager={"batch_size": 500, "batch_timeout": 300, "status_interval": 0.2},
                        loader={"retry_delay": 2, "rescan_interval": 0.2})
    config = load_config(path)
    procs = [spawn(module, path, "run") for module in COMMANDS]
    wait_for(lambda: (snapshot(config, "stager.json") or {}).get("state") == "running", message="stager running")
    wait_for(lambda: (snapshot(config, "loader.json") or {}).get("state") == "idle", message="loader idle")

    edit(path, stager={"batch_size": "lots"}, loader={"retry_delay": "soon", "max_retries": -2})
    for name in ("stager.json", "loader.json"):
        wait_for(lambda name=name: ((snapshot(config, name) or {}).get("config") or {}).get("error"),
                 message=f"the edit refused by {name}")

    for module, running in (("stager", {"stager.batch_size": 500}),
                            ("loader", {"loader.retry_delay": 2, "loader.max_retries": 3})):
        out = cli(module, "status", "--json", "--config", str(path))
        assert out.returncode == 0, out.stderr
        report = json.loads(out.stdout)["configuration"]
        assert {p["key"] for p in report["problems"]} == {"stager.batch_size", "loader.retry_delay",
                                                          "loader.max_retries"}
        assert all(key in report["refused"] for key in ("stager.batch_size", "loader.retry_delay"))
        assert running.items() <= report["running_values"].items()
        human = cli(module, "status", "--config", str(path))
        assert human.returncode == 0, human.stderr
        assert f"the running {module} keeps its values" in human.stdout
        for key, value in running.items():
            assert f"{key}: running with {value!r}" in human.stdout
        assert human.stdout.count("stager.batch_size: expected") == 1  # said once, not once per source
    assert [p.stop() for p in procs] == [0, 0]

    # Stopped, status still works and says the processes would not start with this file.
    for module in COMMANDS:
        human = cli(module, "status", "--config", str(path))
        assert human.returncode == 0, human.stderr
        assert f"`{module} run` would not start" in human.stdout and "loader.retry_delay" in human.stdout


# -- status figures ------------------------------------------------------------------


def test_status_says_when_it_checked_in_utc_and_counts_with_thousands_separators(tmp_path, producer):
    path = write_config(tmp_path, huey={"fsync": False}, stager={"batch_size": 5000})
    config = load_config(path)
    enqueue = producer(config)
    for i in range(1234):
        enqueue(TaskType.STOCK_DAILY, daily_rows(1, start=i))
    for module in COMMANDS:
        out = cli(module, "status", "--json", "--config", str(path))
        assert out.returncode == 0, out.stderr
        stamp = json.loads(out.stdout)["checked_at"]
        assert dt.datetime.fromisoformat(stamp.replace("Z", "+00:00")).utcoffset() == dt.timedelta(0)
        human = cli(module, "status", "--config", str(path))
        assert f"checked at {stamp[:13]}" in human.stdout  # the same ISO 8601 form (same hour, at least)
        if module == "stager":
            assert "1,234 queued" in human.stdout

    # The 1,234 rows sealed in one file, waiting for the loader.
    from stager.service import Stager

    stager = Stager(config)
    try:
        stager.prepare()
        while stager.stage_next(0.0):
            pass
        stager.seal_all()
    finally:
        stager.huey.storage.close()
    assert len(staged_paths(config, "stock_daily")) == 1
    human = cli("loader", "status", "--config", str(path))
    assert human.returncode == 0, human.stderr
    row = next(line for line in human.stdout.splitlines() if line.startswith("stock_daily"))
    assert row.split()[1:3] == ["1", "1,234"]


# -- shutdown within each process's own timeout ---------------------------------------


SLOW_RULES = textwrap.dedent("""\
    import time

    def slow(table):
        time.sleep(600)
        return table
    """)


def test_a_stager_thread_that_does_not_stop_in_time_exits_1(tmp_path, producer, spawn):
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "duckstage_slow_rules.py").write_text(SLOW_RULES)
    datasets = yaml.safe_load((CONFIG_DIR / "datasets.yaml").read_text())
    datasets["datasets"]["stock_daily"]["processor"] = "duckstage_slow_rules:slow"
    (tmp_path / "datasets.yaml").write_text(yaml.safe_dump(datasets, allow_unicode=True))
    path = write_config(tmp_path, datasets=str(tmp_path / "datasets.yaml"), huey={"fsync": False},
                        stager={"shutdown_timeout": 1, "status_interval": 0.2})
    config = load_config(path)
    proc = spawn("stager", path, "run", env={"PYTHONPATH": str(tmp_path / "plugins")})
    wait_for(lambda: (snapshot(config, "stager.json") or {}).get("state") == "running", message="stager running")
    producer(config)(TaskType.STOCK_DAILY, daily_rows(2))
    wait_for(lambda: queue_state(config)[1] > 0, message="the task in the slow processor")
    started = time.monotonic()
    proc.signal(signal.SIGTERM)
    assert proc.wait(90) == 1
    assert time.monotonic() - started < 60  # shutdown_timeout 1 s (with room for a loaded machine), not 600
    assert "stager: threads still running after stager.shutdown_timeout (1s)" in proc.log()


HANGING_LOADER = textwrap.dedent("""\
    import sys
    import threading

    import duckdb

    def connect(*args, **kwargs):  # a database that never answers (a stalled network file system)
        print("connecting", file=sys.stderr, flush=True)
        threading.Event().wait()

    duckdb.connect = connect
    from loader.cli import main

    main(sys.argv[1:], prog_name="loader")
    """)


def test_the_loader_stops_within_its_own_shutdown_timeout_and_exits_1_when_a_thread_hangs(tmp_path):
    from tests.loader.helpers import Stage, daily

    path = write_config(tmp_path, stager={"shutdown_timeout": 120}, loader={"shutdown_timeout": 1})
    config = load_config(path)
    Stage(config)("stock_daily", [daily("000001.SZ", 2, 10.0)])  # something to load: the loader connects
    script = tmp_path / "hanging_loader.py"
    script.write_text(HANGING_LOADER)
    log = tmp_path / "loader.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, str(script), "run", "--config", str(path)], stdout=out,
                                stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: "connecting" in log.read_text(), message="the loader stuck in connect")
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(90) == 1
        # loader.shutdown_timeout (1 s, with room for a loaded machine), not the stager's 120 s
        assert time.monotonic() - started < 60
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert "loader: threads still running after loader.shutdown_timeout (1s)" in log.read_text()


# -- processors are the stager's alone ------------------------------------------------


def test_the_loader_runs_without_the_processor_package_and_the_stager_refuses_it(tmp_path, spawn):
    datasets = yaml.safe_load((CONFIG_DIR / "datasets.yaml").read_text())
    datasets["datasets"]["stock_daily"]["processor"] = "duckstage_not_installed_xyz.rules:check"
    (tmp_path / "datasets.yaml").write_text(yaml.safe_dump(datasets, allow_unicode=True))
    path = write_config(tmp_path, datasets=str(tmp_path / "datasets.yaml"), loader={"rescan_interval": 0.2})
    config = load_config(path)

    loader = spawn("loader", path, "run")
    wait_for(lambda: (snapshot(config, "loader.json") or {}).get("state") == "idle", message="loader idle")
    out = cli("loader", "status", "--config", str(path))
    assert out.returncode == 0, out.stderr
    assert loader.stop() == 0

    line = one_line_error(cli("stager", "run", "--config", str(path)))
    assert f"{tmp_path / 'datasets.yaml'}: datasets.stock_daily.processor: expected an importable" in line
    assert "duckstage_not_installed_xyz" in line


def test_reading_the_configuration_imports_no_processor(tmp_path):
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "duckstage_loud_rules.py").write_text("def check(table):\n    return table\n")
    datasets = yaml.safe_load((CONFIG_DIR / "datasets.yaml").read_text())
    datasets["datasets"]["stock_daily"]["processor"] = "duckstage_loud_rules:check"
    (tmp_path / "datasets.yaml").write_text(yaml.safe_dump(datasets, allow_unicode=True))
    path = write_config(tmp_path, datasets=str(tmp_path / "datasets.yaml"))
    probe = textwrap.dedent(f"""\
        import sys
        from duckstage.config import load_config
        from loader.status import collect

        config = load_config({str(path)!r})
        assert config.datasets["stock_daily"].processor == "duckstage_loud_rules:check"
        collect(config)
        print(sorted(m for m in sys.modules if m in ("stager.processors", "duckstage_loud_rules")))
        """)
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": str(tmp_path / "plugins")})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


# -- a FIFO where a dead-letter file should be never hangs the stager's commands ---------


def test_a_fifo_in_the_dead_letter_neither_hangs_status_nor_is_requeued(tmp_path):
    path = write_config(tmp_path)
    folder = tmp_path / "data" / "deadletter" / "stock_daily"
    folder.mkdir(parents=True)
    record = {"task_type": "stock_daily", "task_id": "t1", "reason": "bad", "row": {"ts_code": "x"}, "params": {}}
    (folder / "stock_daily-20240102-aaaaaaaa.jsonl").write_text(json.dumps(record) + "\n")
    fifo = folder / "stock_daily-20240102-bbbbbbbb.jsonl"
    os.mkfifo(fifo)

    out = cli("stager", "status", "--json", "--config", str(path), timeout=30)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["disk"]["stock_daily"]["deadletter_rows"] == 1

    message = one_line_error(cli("stager", "requeue", str(fifo), "--config", str(path), timeout=30))
    assert "not a regular file" in message
    assert fifo.exists() and not (folder / "replayed").exists()
