"""The stager: a thin lifecycle over the parts that claim, stage, seal and count.

``Stager(config)`` is the embedding API (``start()``, ``stop()``,
``get_status()``); the ``stager run`` command is a thin layer over it. Each
loop exposes one step for tests: ``stage_next()`` claims and stages the tasks
of one lease batch (up to 8), ``seal_due(now)`` seals the buffers that are
full or old, and ``run_once`` does both.

The parts, each in its own module: ``Claims`` (stager.claims) holds the Huey
work and lets it go, ``Intake`` (stager.intake) cleans claims into buffers and
the dead letter, ``Sealer`` (stager.sealer) turns buffers into staged files,
and ``Statistics`` (stager.stats) counts. Acknowledgement rule (guarantee 1):
a claim is acknowledged only after every row of it is in a sealed file or in
the (fsynced) dead letter.

Operations: ``get_status()`` is the one source of the numbers; the status
snapshot (``data/run/stager.json``, read by ``stager status``) and, when
``stager.metrics_port`` is set, ``/metrics`` (stager.metrics) are both built
from it.
"""

import logging
import os
import secrets
import threading
import time

from duckstage import staging
from duckstage.backoff import Backoff
from duckstage.config import ConfigWatcher
from duckstage.exceptions import ResourceError
from duckstage.ops import OpsServer, StatusCollector, writable, write_snapshot

from . import processors
from .buffer import Buffer
from .claims import Claims
from .deadletter import DeadLetter
from .intake import Intake
from .queue import STORAGE_ERRORS
from .sealer import Sealer
from .sources import QueueSource, ResultSource
from .stats import Statistics
from .tasks import build_huey

log = logging.getLogger(__name__)


class Stager:
    def __init__(self, config, clock=time.monotonic, fsync=None):
        self.config = config
        self.clock = clock
        fsync = fsync or os.fsync
        # Users' functions are imported here, by the stager alone (ConfigError for a typo), before anything opens.
        self.processors = processors.for_datasets(config.datasets)  # task type -> processors.Registered
        self.instance = secrets.token_hex(4)
        self.huey, _ = build_huey(config, synchronous="NORMAL" if config.huey.fsync else None)
        source_class = QueueSource if config.stager.run_huey_consumer else ResultSource
        self.source = source_class(self.huey, self.instance)
        self.deadletter = DeadLetter(config.deadletter_dir, self.instance, fsync)
        self.buffers = {d.name: Buffer(d) for d in config.datasets}
        self.stopped_event = threading.Event()  # set: workers stop claiming
        self._halt = threading.Event()  # set: timer threads stop
        self.stats = Statistics(self.buffers, clock)
        self.claims = Claims(self.source, self.stats)
        self.sealer = Sealer(self.buffers, config.staging_dir, config.datasets.schema_version, self.instance,
                             self.claims, self.stats, self._batch_for, self._halt, fsync)
        self.intake = Intake(self.buffers, self.processors, self.deadletter, self.claims, self.sealer, self.stats,
                             self._batch_for)
        self._threads = []
        self._thread_state = {}
        self.started_at = None
        self.state = "new"
        self.watcher = ConfigWatcher(config, own_sections=("stager", "huey"))
        self.reload_requested = self.watcher.reload_requested  # SIGHUP sets it
        self.ops = None  # the /metrics, /healthz, /readyz server when metrics_port is set

    def _batch_for(self, task_type):
        return self.config.stager.batch_for(task_type)  # the live settings: self.config changes on reload

    # --- lifecycle --------------------------------------------------------

    def prepare(self):
        """Start-up work before any thread runs: folders, leftovers, orphaned leases."""
        for folder in (self.config.staging_dir, self.config.deadletter_dir, self.config.run_dir):
            folder.mkdir(parents=True, exist_ok=True)
        for path in staging.remove_leftovers(self.config.staging_dir):
            log.warning("removed leftover temporary file %s (its task is re-run)", path)
        try:
            self.claims.recover()
        except STORAGE_ERRORS as exc:  # huey.db locked, or Redis out of reach: the workers retry
            self.stats.error("database_connection")
            log.warning("Huey storage %s: %s; recovering leases when it answers", self.config.huey.location, exc)
        self.started_at = time.time()
        self.state = "running"

    def start(self):
        """Serve the ops endpoint (if configured), prepare, start the threads.

        Raises PortUnavailable when the metrics port cannot be bound, and OSError when the
        data folders cannot be made, before any thread runs.
        """
        if self.config.stager.metrics_port:
            from .metrics import families

            self.ops = OpsServer(self.config.stager.metrics_host, self.config.stager.metrics_port,
                                 StatusCollector(self.get_status, families), self.health, self.ready,
                                 "stager").start()
        self.prepare()
        for i in range(self.config.stager.worker_threads):
            self._spawn(f"worker-{i}", self._work_loop)
        self._spawn("sealer", self._seal_loop)
        self._spawn("status", self._status_loop)
        if self.huey.storage.beat_interval:  # Redis: leases live as long as this heartbeat
            self._spawn("heartbeat", self._heartbeat_loop)
        log.info("stager %s started: %d worker threads, source=%s, data_dir=%s", self.instance,
                 self.config.stager.worker_threads, self.source.kind, self.config.data_dir,
                 extra={"event": "started", "instance": self.instance})
        for name, reg in self.processors.items():
            log.info("%s: processor %s (from %s)", name, reg.spec, reg.origin,
                     extra={"event": "processor", "task_type": name})
        return self

    def stop(self, timeout=None):
        """Finish in-flight tasks, seal every non-empty buffer, acknowledge, stop threads."""
        timeout = self.config.stager.shutdown_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        self.state = "stopping"
        self.stopped_event.set()
        for t in self._threads:
            if t.name.startswith("worker"):
                t.join(max(0.0, deadline - time.monotonic()))
        sealed = self.seal_all(deadline=deadline)
        self._halt.set()
        for t in self._threads:
            t.join(max(0.1, deadline - time.monotonic()))
        alive = [t.name for t in self._threads if t.is_alive()]
        self.state = "stopped" if not alive else "stopped-with-stragglers"
        self.write_status()
        if self.ops is not None:
            self.ops.stop()
        self.huey.storage.close()
        log.info("stager %s stopped: sealed %d file(s) at shutdown%s", self.instance, sealed,
                 f"; threads still running: {alive}" if alive else "",
                 extra={"event": "stopped", "files": sealed})
        return not alive

    def _spawn(self, name, target):
        t = threading.Thread(target=target, name=name, daemon=True)
        self._thread_state[name] = "starting"
        self._threads.append(t)
        t.start()

    def _work_loop(self):
        name = threading.current_thread().name
        queue_backoff = Backoff(0.1, 2.0, 30.0)
        disk_backoff = Backoff(0.5, 2.0, 30.0)
        while not self.stopped_event.is_set():
            if self.sealer.behind():
                # Claiming more would only grow memory: wait for the sealer to get a file out.
                self._thread_state[name] = "paused"
                self.stopped_event.wait(self.config.stager.queue_check_interval)
                continue
            self._thread_state[name] = "working"
            try:
                n = self.stage_next()
            except ResourceError as exc:  # disk full: every claim is buffered or back in the queue
                self._thread_state[name] = "paused"
                delay = disk_backoff.next()
                log.error("%s: %s; pausing %.1fs", name, exc, delay)
                self.stopped_event.wait(delay)
                continue
            except STORAGE_ERRORS as exc:  # Huey's SQLite file locked, or Redis out of reach: retry, lose nothing
                self._thread_state[name] = "paused"
                self.stats.error("database_connection")
                delay = queue_backoff.next()
                log.warning("%s: Huey storage %s: %s; retrying in %.1fs", name, self.config.huey.location, exc,
                            delay)
                self.stopped_event.wait(delay)
                continue
            except Exception:  # noqa: BLE001 - a bug must not silently end a worker
                self._thread_state[name] = "paused"
                self.stats.error("internal")
                log.exception("%s: unexpected error; its tasks stay leased and run again after a restart", name)
                self.stopped_event.wait(queue_backoff.next())
                continue
            queue_backoff.reset()
            disk_backoff.reset()
            if not n:
                self._thread_state[name] = "idle"
                self.stopped_event.wait(self.config.stager.queue_check_interval)
        self._thread_state[name] = "stopped"

    def _seal_loop(self):
        name = threading.current_thread().name
        while not self._halt.is_set():
            self._thread_state[name] = "working"
            try:
                self.seal_due()
            except ResourceError as exc:
                self._thread_state[name] = "paused"
                log.error("sealer: %s; pausing", exc)
                self._halt.wait(self.sealer.backoff.next())
                continue
            except Exception:  # noqa: BLE001 - a bug must not end the sealer: the rows stay buffered
                self._thread_state[name] = "paused"
                self.stats.error("internal")
                log.exception("sealer: unexpected error; the rows stay buffered, retrying")
                self._halt.wait(self.sealer.backoff.next())
                continue
            self._thread_state[name] = "idle"
            timeouts = [self.config.stager.batch_for(n).batch_timeout for n in self.buffers]
            self._halt.wait(min(0.25, min(timeouts) / 4))
        self._thread_state[name] = "stopped"

    def _heartbeat_loop(self):
        # Runs until _halt, after the shutdown's seals: the leases they acknowledge are still ours.
        name = threading.current_thread().name
        interval = self.huey.storage.beat_interval
        backoff = Backoff(min(0.1, interval), 2.0, interval)  # capped: a heartbeat lives three intervals
        while not self._halt.is_set():
            self._thread_state[name] = "working"
            try:
                self.source.keep_alive()
            except STORAGE_ERRORS as exc:
                self._thread_state[name] = "paused"
                self.stats.error("database_connection")
                delay = backoff.next()
                log.warning("heartbeat: Huey storage %s: %s; retrying in %.1fs", self.config.huey.location, exc,
                            delay)
                self._halt.wait(delay)
                continue
            except Exception:  # noqa: BLE001 - a bug must not end the heartbeat: the leases would go to others
                self._thread_state[name] = "paused"
                self.stats.error("internal")
                log.exception("heartbeat: unexpected error; retrying")
                self._halt.wait(backoff.next())
                continue
            backoff.reset()
            self._thread_state[name] = "idle"
            self._halt.wait(interval)
        self._thread_state[name] = "stopped"

    def _status_loop(self):
        name = threading.current_thread().name
        while not self._halt.is_set():
            self._thread_state[name] = "working"
            try:
                self.check_config()
                self.write_status()
            except OSError as exc:
                self.stats.error("system_resource")
                log.error("cannot write status: %s", exc)
            self._thread_state[name] = "idle"
            self._halt.wait(self.config.stager.status_interval)
        self._thread_state[name] = "stopped"

    # --- steps ------------------------------------------------------------

    def run_once(self, now=None):
        """One step without threads: stage the next claims, then seal what is due."""
        n = self.stage_next(now)
        self.seal_due(now)
        return n

    def stage_next(self, now=None):
        """Claim the next tasks (or results) and stage them; return the rows they carried (0: none)."""
        claims = self.claims.claim()
        if not claims:
            return 0
        return max(1, self.stage(claims, now))

    def stage(self, claims, now=None):
        """Clean claims, dead-letter what is refused, buffer the rest; return rows handled (stager.intake)."""
        return self.intake.stage(claims, self.clock() if now is None else now)

    def seal_due(self, now=None):
        """Seal every buffer that is full or older than its batch_timeout; return files sealed."""
        return self.sealer.seal_due(self.clock() if now is None else now)

    def seal_all(self, deadline=None):
        """Seal every non-empty buffer (shutdown); retry a failing seal until ``deadline``."""
        return self.sealer.seal_all(deadline)

    # --- live configuration -----------------------------------------------

    def check_config(self):
        """Apply live values if the config file changed or SIGHUP asked; return True if applied."""
        self.config, outcome = self.watcher.poll(self.config)
        return outcome == "applied"

    # --- status -----------------------------------------------------------

    def get_status(self):
        per_type = self.stats.per_task_type(self.buffers, self.clock())
        try:
            backlog = self.source.backlog()
            backlog.setdefault("result_store", self.huey.storage.result_store_size())
        except Exception as exc:  # noqa: BLE001 - status must answer even if Huey storage is busy
            backlog = {"error": str(exc)}
        return {
            "process": "stager",
            "pid": os.getpid(),
            "instance": self.instance,
            "state": self.state,
            "started_at": self.started_at,
            "updated_at": time.time(),
            "source": self.source.kind,
            "backlog": backlog,
            "task_types": per_type,
            "totals": {k: sum(t[k] for t in per_type.values())
                       for k in ("tasks", "rows_in", "rows_staged", "files_sealed", "rows_deadlettered")},
            "rows_per_second": round(self.stats.rows_per_second(), 1),
            "errors": dict(self.stats.errors),
            "threads": dict(self._thread_state),
            "sealing_error": self.sealer.error,
            "seal_retry": {"attempts": self.sealer.backoff.attempts, "delay": self.sealer.backoff.delay},
            "seal_lag": self.stats.seal_lag.snapshot(),
            "config_error": self.watcher.error,
            "config": self.watcher.status(self.config),
            "batch": {name: vars(self.config.stager.batch_for(name)) for name in self.buffers},
            "processors": {name: reg.spec for name, reg in self.processors.items()},
            "metrics_address": self.ops.address if self.ops else None,
        }

    # --- health -----------------------------------------------------------

    def health(self):
        """Problems that mean the process is not alive and working (empty: healthy)."""
        problems = [] if self.state == "running" else [f"stager is {self.state}"]
        problems += [f"thread {t.name} is not running" for t in self._threads if not t.is_alive()]
        return problems

    def ready(self):
        """Problems that keep the stager from doing its work (empty: ready)."""
        problems = self.health()
        try:
            self.huey.storage.queue_size()
        except Exception as exc:  # noqa: BLE001 - any failure here is the answer to the probe
            problems.append(f"Huey storage {self.config.huey.location} unreachable: {exc}")
        reason = writable(self.config.staging_dir)
        if reason:
            problems.append(f"staging: {reason}")
        if self.sealer.error:
            problems.append(f"sealing fails: {self.sealer.error}")
        return problems

    def write_status(self):
        write_snapshot(self.config.run_dir / "stager.json", self.get_status())
