"""The loader's waits and what it says of them: the backoff it keeps while the
database is held (or a DuckLake's catalog is down), ``loading`` in status, a step
that makes no progress, a clean stop.

Real processes where the behaviour is the process's (``loader run`` with a
person holding the database in the duckdb CLI, or with the PostgreSQL catalog
stopped; SIGTERM); a ``Loader`` in this
process, its database open held back by a slow ``connect``, where the test
must see a step in the middle.
"""

import datetime as dt
import json
import threading
import time

import duckdb
import pytest

from loader import Loader
from tests.helpers import eventually, free_port, get, get_json, hold_database, release
from tests.loader.helpers import (DUCKDB, HELD_FILE, LAKE_POSTGRES, Stage, daily, files_in, loader_config,
                                  run_cli, write_loader_config)



def _snapshot(config):
    try:
        return json.loads((config.run_dir / "loader.json").read_text())
    except (OSError, ValueError):
        return {}


def _held_back(gate):
    """``connect`` for a database that opens only once ``gate`` is set: a step held in the middle."""
    def connect(*args, **kwargs):
        gate.wait(30)
        return duckdb.connect(*args, **kwargs)

    return connect


def _events(log_path, event):
    """(timestamp, figures) of each JSON log line of ``event``, in order."""
    out = []
    for line in log_path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("event") == event:
            stamp = dt.datetime.fromisoformat(record["timestamp"].replace("Z", "+00:00"))
            out.append((stamp, record.get("figures", {})))
    return out


class Sealer:
    """Seals a stock_daily file every ``every`` seconds from a thread, as a busy stager would."""

    def __init__(self, stage, every):
        self.stage, self.every = stage, every
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name="test-sealer")
        self.count = 0

    def _run(self):
        while not self.stopped.wait(self.every):
            self.count += 1
            self.stage("stock_daily", [daily(f"{self.count:06d}.SZ", 2, float(self.count))])

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stopped.set()
        self.thread.join(10)


def _sealing_while_unavailable_keeps_the_backoff(tmp_path, spawn, make_unavailable, make_available):
    """``loader run`` while the warehouse cannot be opened and files keep being sealed: the
    backoff runs its course, and the loader resumes soon after the warehouse is back."""
    # retry_max_delay far above the rest: a loader that waits it out after release is plainly late.
    path = write_loader_config(tmp_path, max_retries=2, retry_delay=1.0, retry_max_delay=30, idle_release=0,
                               rescan_interval=0.5)
    config = loader_config(tmp_path)
    stage = Stage(config)
    stage("stock_daily", [daily("600000.SH", 2, 8.0)])
    make_unavailable(config)
    try:
        loader = spawn("loader", path, "--log-format", "json", "run")
        with Sealer(stage, every=0.2):
            assert eventually(lambda: len(_events(loader.log_path, "database_busy")) >= 3, 30), loader.log()
            time.sleep(1.0)  # more files sealed into the slow wait after max_retries
            attempts = _events(loader.log_path, "database_busy")
        make_available()
        released_at = time.monotonic()
        assert eventually(lambda: files_in(config.staging_dir) == [], 25), loader.log()
        resumed_after = time.monotonic() - released_at
    finally:
        make_available()
    assert loader.stop() == 0

    # Attempts 1, 2, 3 at the backoff's 1 s and 2 s, then slowly: the sealed files woke nothing.
    assert [f["attempts"] for _, f in attempts] == [1, 2, 3], loader.log()
    gaps = [(b - a).total_seconds() for (a, _), (b, _) in zip(attempts, attempts[1:])]
    assert gaps[0] >= 0.8 and gaps[1] >= 1.6, gaps
    assert attempts[-1][1]["delay"] == 30
    # Resumed within retry_delay of the release (with room for a loaded machine), not after 30 s.
    assert resumed_after < 15, resumed_after
    assert _events(loader.log_path, "recovered")


@pytest.mark.backends(DUCKDB, reason=HELD_FILE)
def test_files_sealed_while_the_database_is_held_do_not_cut_the_backoff_short(tmp_path, spawn):
    holders = []

    def release_once():
        if holders and holders[0].poll() is None:
            release(holders[0])

    _sealing_while_unavailable_keeps_the_backoff(
        tmp_path, spawn, lambda config: holders.append(hold_database(config.loader.database)), release_once)


@pytest.mark.backends(LAKE_POSTGRES, reason="the catalog is a server that can be down")
def test_files_sealed_while_the_catalog_is_down_do_not_cut_the_backoff_short(tmp_path, spawn, postgres_server):
    _sealing_while_unavailable_keeps_the_backoff(tmp_path, spawn, lambda config: postgres_server.stop(),
                                                 postgres_server.start)


def test_status_says_loading_while_a_load_runs(tmp_path):
    path = write_loader_config(tmp_path)
    config = loader_config(tmp_path)
    stage = Stage(config)
    staged = [stage("stock_daily", [daily(f"00000{i}.SZ", 2, 10.0)]) for i in (1, 2)]
    gate = threading.Event()
    loader = Loader(config, connect=_held_back(gate)).start()
    try:
        assert eventually(lambda: _snapshot(config).get("state") == "loading", 10)
        st = json.loads(run_cli(path, "status", "--json").stdout)
        assert st["loader"]["state"] == "loading"
        assert st["loading"]["task_type"] == "stock_daily" and st["loading"]["files"] == 2
        human = run_cli(path, "status").stdout
        assert "loader: loading" in human and "loading stock_daily: 0 of 2 file(s) since" in human
        gate.set()
        assert eventually(lambda: files_in(config.archive_dir) == sorted(p.name for p in staged), 10)
        assert eventually(lambda: _snapshot(config).get("state") == "idle", 10)
    finally:
        gate.set()
        assert loader.stop(10)
    assert _snapshot(config)["loading"] is None


def test_a_step_that_makes_no_progress_fails_healthz_and_status_says_so(tmp_path):
    port = free_port()
    path = write_loader_config(tmp_path)
    config = loader_config(tmp_path, metrics_port=port)
    # Derived from the transaction's bound: 1,000,000 rows at 2,000 rows/s; never under 120 s.
    assert Loader(config).stuck_limit == 500
    assert Loader(config.with_loader(max_rows_per_transaction=10_000)).stuck_limit == 120
    Stage(config)("stock_daily", [daily("000001.SZ", 2, 10.0)])
    gate = threading.Event()
    loader = Loader(config, connect=_held_back(gate), stuck_after=0.5).start()
    try:
        assert eventually(lambda: get(port, "/healthz")[0] == 503, 10)
        code, body = get_json(port, "/healthz")
        assert code == 503 and any("no progress" in r and "stock_daily" in r for r in body["reasons"]), body
        st = json.loads(run_cli(path, "status", "--json").stdout)
        assert st["stuck"] is not None and st["stuck"] >= 0
        assert "stuck: the load step has made no progress" in run_cli(path, "status").stdout
        gate.set()
        assert eventually(lambda: files_in(config.archive_dir) != [], 10)
        assert eventually(lambda: get(port, "/healthz")[0] == 200, 10)
        assert json.loads(run_cli(path, "status", "--json").stdout)["stuck"] is None
    finally:
        gate.set()
        assert loader.stop(10)


def test_a_clean_stop_logs_no_error_while_files_are_moving(tmp_path, spawn):
    path = write_loader_config(tmp_path)
    config = loader_config(tmp_path)
    stage = Stage(config)
    for _ in range(3):  # the watcher's stop raced events in most runs: three catch it
        proc = spawn("loader", path, "run")
        assert eventually(lambda: _snapshot(config).get("pid") == proc.proc.pid, 20), proc.log()
        archived = len(files_in(config.archive_dir))
        with Sealer(stage, every=0.02):  # sealed and archived all through the stop
            assert eventually(lambda: len(files_in(config.archive_dir)) > archived + 3, 20), proc.log()
            assert proc.stop() == 0
        log = proc.log()
        assert "loader stopped" in log
        assert not [line for line in log.splitlines() if " ERROR " in line or "Traceback" in line], log
