"""What the tests share: configuration files, waits, real subprocesses, the duckdb CLI, HTTP probes.

Plain functions and classes, imported by name (``from tests.helpers import ...``);
the fixtures built on them live in the conftest files.
"""

import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO / "config"


def write_config(tmp_path, **sections):
    """Write a duckstage.yaml under tmp_path with data in tmp_path/data; return its path.

    Each keyword is a top-level key; a dict value is merged into that section.
    """
    body = {"data_dir": str(tmp_path / "data"), "datasets": str(CONFIG_DIR / "datasets.yaml")}
    for key, value in sections.items():
        if isinstance(value, dict):
            body.setdefault(key, {}).update(value)
        else:
            body[key] = value
    path = tmp_path / "duckstage.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(body))
    return path


# -- waiting for observable state ---------------------------------------------------
# Two contracts, two names: wait_for fails the test itself, eventually leaves the
# verdict (and the message, often a process's log) to the caller's assert.

def wait_for(predicate, timeout=20.0, interval=0.05, message="condition"):
    """The predicate's first truthy value; AssertionError naming ``message`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message}")


def eventually(predicate, timeout=10.0, interval=0.05):
    """Whether the predicate held within ``timeout`` seconds (checked once more at the deadline)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def queue_state(config):
    """(tasks queued, tasks leased) in the configuration's Huey file."""
    from stager.tasks import build_huey

    huey, _ = build_huey(config)
    try:
        return huey.storage.queue_size(), huey.storage.lease_count()
    finally:
        huey.storage.close()


# -- the two processes as real subprocesses -----------------------------------------

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


# -- the real duckdb CLI --------------------------------------------------------------

def duckdb_cli():
    """The duckdb CLI installed beside this Python (pip duckdb-cli)."""
    found = shutil.which("duckdb", path=os.path.dirname(sys.executable)) or shutil.which("duckdb")
    if not found:
        pytest.fail("the duckdb CLI (pip duckdb-cli) is not installed next to this Python")
    return found


def hold_database(path, attempts=5):
    """The real duckdb CLI holding ``path`` open, as a person would; proven by a query.

    Retried: a CLI that starts while someone else has the file open cannot take
    it and would otherwise sit on an in-memory database.
    """
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


# -- the ops endpoint: free ports, HTTP requests, Prometheus text ---------------------

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(port, path, timeout=10):
    """(status code, body text) of a real HTTP GET to 127.0.0.1:port."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def get_json(port, path):
    code, body = get(port, path)
    return code, json.loads(body)


def answers(port, path="/healthz"):
    try:
        return get(port, path, timeout=2)[0] == 200
    except OSError:
        return False


def samples(text):
    """{(sample name, frozenset of labels): value} of a /metrics body."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(text_or_samples, name, **labels):
    got = samples(text_or_samples) if isinstance(text_or_samples, str) else text_or_samples
    return got.get((name, frozenset(labels.items())), 0.0)
