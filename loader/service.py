"""``Loader``: the long-running loader, embeddable (start, stop, get_status, run_once).

One step, ``run_once``, scans ``staging/``, and loads every pending file of
every task type; a supervisor thread loops it, woken early by the watchdog
observer and put to sleep on an event so ``stop`` wakes it at once. The
database is released when idle for ``idle_release`` seconds, so a person can
open it with the ``duckdb`` CLI; while someone else holds it the loader backs
off and retries, slowly and for ever after ``max_retries``, and says so in
status. Nothing is dropped while it waits: the files stay in ``staging/``.
"""

import datetime as dt
import logging
import os
import threading
import time

from stager.backoff import Backoff

from . import filing
from .discovery import Watcher, scan, unknown_folders
from .exceptions import DatabaseBusy
from .load import Outcome, load_files
from .status import write_snapshot
from .warehouse import Warehouse

log = logging.getLogger(__name__)

SNAPSHOT = "loader.json"


def _utcnow():
    return dt.datetime.now(dt.timezone.utc)


class Loader:
    """Loads sealed files into the warehouse, each exactly once."""

    def __init__(self, config, connect=None, clock=time.monotonic):
        self.config = config
        self.warehouse = Warehouse(config.loader.database, **({"connect": connect} if connect else {}))
        self.clock = clock
        lc = config.loader
        self.backoff = Backoff(lc.retry_delay, 2.0, max(lc.retry_max_delay, lc.retry_delay))
        self.stopped_event = threading.Event()
        self.wake = threading.Event()
        self._thread = None
        self._watcher = None
        self._lock = threading.Lock()  # run_once is not re-entrant
        self._last_active = None
        self._last_sweep = None
        self._retry = None  # {error, attempts, delay, slow, since}
        self._pending = {}
        self.totals = Outcome()
        self.last_load = None
        self.rate = None
        self.state = "stopped"
        self.manifest = {}

    # -- one step -----------------------------------------------------------

    def run_once(self, now=None):
        """Scan staging/ and load what is pending. Returns the number of files that left staging/."""
        now = self.clock() if now is None else now
        with self._lock:
            try:
                handled = self._step(now)
            except DatabaseBusy as exc:
                self._busy(exc, now)
                handled = 0
            self._write_status()
            return handled

    def _step(self, now):
        names = self.config.datasets.names
        pending = {t: paths for t, paths in scan(self.config.staging_dir, names).items() if paths}
        self._pending = {t: len(p) for t, p in pending.items()}
        self._sweep()
        if not pending:
            if self.warehouse.is_open and now - (self._last_active or now) >= self.config.loader.idle_release:
                self.warehouse.close()
                log.info("idle: released %s", self.warehouse.path)
            self.state = "retrying" if self._retry else "idle"
            return 0
        self.state = "loading"
        self.warehouse.open()
        done = Outcome()
        for task_type, paths in pending.items():
            if self.stopped_event.is_set():
                break
            out = load_files(self.warehouse, self.config.datasets[task_type], paths, self.config,
                             settle=lambda p: filing.archive(self.config.archive_dir, p),
                             stop=self.stopped_event)
            done.add(out)
            if out.loaded:
                self.last_load = {"task_type": task_type, "files": len(out.loaded), "rows": out.rows,
                                  "inserted": out.inserted, "updated": out.updated,
                                  "at": _utcnow().isoformat()}
        if self._retry:
            log.info("database available again after %d retries", self._retry["attempts"])
        self._retry = None
        self.backoff.reset()
        self.totals.add(done)
        if done.seconds > 0:
            self.rate = round(done.rows / done.seconds)
        self.manifest = self.warehouse.manifest_totals()
        self._pending = {t: n for t, n in ((t, len(scan(self.config.staging_dir, [t])[t])) for t in pending) if n}
        self._last_active = self.clock()
        if self.config.loader.idle_release == 0:
            self.warehouse.close()
        self.state = "idle"
        return done.files

    def _busy(self, exc, now):
        self.warehouse.close()  # release, so whoever holds it can finish
        attempts = self.backoff.attempts + 1
        slow = attempts > self.config.loader.max_retries
        delay = self.config.loader.retry_max_delay if slow else self.backoff.next()
        if slow:
            self.backoff.attempts = attempts
        since = self._retry["since"] if self._retry else _utcnow().isoformat()
        self._retry = {"error": str(exc).splitlines()[0], "attempts": attempts, "delay": delay,
                       "slow": slow, "since": since, "next_at": now + delay}
        self.state = "retrying"
        log.warning("database busy (attempt %d%s), retrying in %.1fs: %s", attempts,
                    ", past max_retries: retrying slowly" if slow else "", delay, self._retry["error"])

    def _sweep(self):
        today = _utcnow().date()
        if self._last_sweep != today:
            self._last_sweep = today
            for day in filing.sweep_archive(self.config.archive_dir, self.config.loader.archive_retention_days):
                log.info("archive retention: removed %s", day)

    def next_delay(self):
        """How long the supervisor may sleep before the next step."""
        if self._retry:
            return max(0.0, self._retry["next_at"] - self.clock())
        if self._pending:
            return 0.0
        delay = self.config.loader.rescan_interval
        if self.warehouse.is_open:
            release_at = (self._last_active or self.clock()) + self.config.loader.idle_release
            delay = min(delay, max(0.05, release_at - self.clock()))
        return delay

    # -- status -------------------------------------------------------------

    def get_status(self):
        t = self.totals
        return {
            "pid": os.getpid(),
            "updated_at": _utcnow().isoformat(),
            "state": self.state,
            "database": str(self.warehouse.path),
            "database_open": self.warehouse.is_open,
            "pending_files": dict(self._pending),
            "unknown_task_types": unknown_folders(self.config.staging_dir, self.config.datasets.names),
            "last_load": self.last_load,
            "rows_per_second": self.rate,
            "since_start": {"files_loaded": len(t.loaded), "files_skipped": len(t.skipped),
                            "files_quarantined": len(t.quarantined), "rows": t.rows,
                            "inserted": t.inserted, "updated": t.updated},
            "manifest": self.manifest,
            "retry": dict(self._retry) if self._retry else None,
        }

    def _write_status(self):
        try:
            write_snapshot(self.config.run_dir / SNAPSHOT, self.get_status())
        except OSError as exc:
            log.warning("cannot write the status snapshot: %s", exc)

    # -- supervisor ---------------------------------------------------------

    def start(self):
        if self._thread is not None:
            return self
        self.stopped_event.clear()
        self._watcher = Watcher(self.config.staging_dir, self.wake)
        self._watcher.start()
        self._thread = threading.Thread(target=self._loop, name="duckstage-loader", daemon=True)
        self._thread.start()
        return self

    def _loop(self):
        log.info("loader started: %s -> %s", self.config.staging_dir, self.warehouse.path)
        while not self.stopped_event.is_set():
            self.run_once()
            delay = self.next_delay()
            if delay > 0:
                self.wake.wait(delay)
            self.wake.clear()
        with self._lock:
            self.warehouse.close()
            self.state = "stopped"
            self._write_status()
        log.info("loader stopped")

    def stop(self, timeout=60):
        """Finish (or roll back) the current transaction, release the database, stop threads."""
        self.stopped_event.set()
        self.wake.set()
        if self._watcher is not None:
            self._watcher.stop(timeout)
            self._watcher = None
        if self._thread is not None:
            self._thread.join(timeout)
            alive = self._thread.is_alive()
            self._thread = None
            return not alive
        self.warehouse.close()
        return True

    def join(self, timeout=None):
        if self._thread is not None:
            self._thread.join(timeout)
