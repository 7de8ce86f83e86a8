"""Shared fixtures: real SqliteHuey files, real data folders, real subprocesses."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO / "config"


def write_config(tmp_path, **sections):
    """Write a duckstage.yaml under tmp_path with data in tmp_path/data; return its path."""
    body = {"data_dir": str(tmp_path / "data"), "datasets": str(CONFIG_DIR / "datasets.yaml")}
    for key, value in sections.items():
        if isinstance(value, dict):
            body.setdefault(key, {}).update(value)
        else:
            body[key] = value
    path = tmp_path / "duckstage.yaml"
    path.write_text(yaml.safe_dump(body))
    return path


def wait_for(predicate, timeout=20.0, interval=0.05, message="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message}")


class Process:
    """A duckstage process (``python -m stager|loader``) as a real subprocess."""

    def __init__(self, module, config_path, *args, env=None):
        self.log_path = Path(config_path).parent / f"{module}-{time.monotonic_ns()}.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", module, "--config", str(config_path), *args],
            stdout=self._log, stderr=subprocess.STDOUT, cwd=str(Path(config_path).parent),
            env={**os.environ, **(env or {})})

    def log(self):
        return self.log_path.read_text(errors="replace")

    def signal(self, sig):
        self.proc.send_signal(sig)

    def kill9(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self._log.close()

    def wait(self, timeout=30):
        try:
            return self.proc.wait(timeout)
        finally:
            self._log.close()

    def stop(self, timeout=30):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()


@pytest.fixture
def spawn():
    started = []

    def _spawn(module, config_path, *args, env=None):
        p = Process(module, config_path, *args, env=env)
        started.append(p)
        return p

    yield _spawn
    for p in started:
        p.close()


@pytest.fixture
def producer():
    """The producer side: process_fetched_data bound to a config's Huey file (closed after the test)."""
    from stager.tasks import build_huey

    opened = []

    def _producer(config):
        huey, task = build_huey(config)
        opened.append(huey)
        return task

    yield _producer
    for huey in opened:
        huey.storage.close()


def duckdb_cli():
    """The duckdb CLI installed beside this Python (pip duckdb-cli)."""
    import shutil

    found = shutil.which("duckdb", path=os.path.dirname(sys.executable)) or shutil.which("duckdb")
    if not found:
        pytest.fail("the duckdb CLI (pip duckdb-cli) is not installed next to this Python")
    return found


def hold_database(path, attempts=5):
    """The real duckdb CLI holding ``path`` open, as a person would; proven by a query.

    Retried: a CLI that starts while someone else has the file open cannot take
    it and would otherwise sit on an in-memory database.
    """
    import select

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    probe = f"SELECT count(*) || '-held' FROM duckdb_databases() WHERE path LIKE '%{Path(path).name}';\n"
    for _ in range(attempts):
        proc = subprocess.Popen([duckdb_cli(), "-csv", "-noheader", str(path)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        proc.stdin.write(probe)
        proc.stdin.flush()
        ready, _, _ = select.select([proc.stdout], [], [], 20)
        if ready and proc.stdout.readline().strip() == "1-held":
            return proc
        proc.kill()
        proc.wait(10)
        time.sleep(0.2)
    raise AssertionError(f"the duckdb CLI could not hold {path}")


def release(proc):
    proc.stdin.close()
    proc.wait(10)
    proc.stdout.close()
