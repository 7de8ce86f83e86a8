"""``Loader``: the long-running loader, embeddable (start, stop, get_status, run_once).

One step, ``run_once``, scans ``staging/``, and loads every pending file of
every task type; a supervisor thread loops it, woken early by the watchdog
observer and put to sleep on an event so ``stop`` wakes it at once. The
database is released when idle for ``idle_release`` seconds, so a person can
open it with the ``duckdb`` CLI. Nothing is dropped while the loader waits:
the files stay in ``staging/``.

Waiting out a failure. A step that fails for want of a resource (the database
held by another process, a commit that cannot be written, ``archive/`` or
``quarantine/`` that takes no file, a folder that cannot be read) is retried
with one backoff: ``retry_delay``, doubled at each attempt up to
``retry_max_delay``, and every ``retry_max_delay`` once past ``max_retries``
(status says "slowly" then). The database is released meanwhile. A wait is a
wait: a newly sealed file does not cut it short. But while the database would
not even open, the loader tries to open it every ``retry_delay`` between
attempts and goes on at once when it does, so it resumes within
``retry_delay`` of the database being released.

The step watch. A step that has made no progress (no file inspected, merged,
archived or quarantined) for ``stuck_after`` seconds is reported by
``/healthz`` and by ``loader status``: something holds it (a file that
blocks on read, a hung disk). ``stuck_after`` is derived from the one key
that bounds the work between two signs of progress, the transaction:
``max_rows_per_transaction`` rows at 2,000 rows a second (far below any
measured pace), and never under two minutes (500 s with the default
1,000,000 rows); an application hosting a ``Loader`` may pass its own.

Live configuration: between steps the loader re-reads its config file when it
changed or when SIGHUP asked (``reload_requested``), and applies the live
``loader.*`` keys and ``log_level`` through ``duckstage.config.reload_config``; an
invalid edit is refused with the reason (in status) and the old values stay.

``get_status()`` is the one source of the numbers: the snapshot
``run/loader.json`` that ``loader status`` reads (written when a step starts
loading, as it goes, and after it), and ``/metrics`` when
``loader.metrics_port`` is set (loader.metrics).
"""

import datetime as dt
import logging
import os
import threading
import time
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from duckstage.exceptions import one_line
from duckstage.backoff import Backoff
from duckstage.config import ConfigWatcher
from duckstage.datasets import FETCHED_AT
from duckstage.ops import LagHistogram, OpsServer, StatusCollector, writable, write_snapshot
from duckstage.staging import remove_leftovers, utcnow

from . import filing
from .discovery import Watcher, not_staged, scan, unknown_folders
from .exceptions import DatabaseBusy, FilingFailed
from .load import Outcome, load_files
from .upkeep import Upkeep
from .warehouse import Warehouse

log = logging.getLogger(__name__)

SNAPSHOT = "loader.json"
CONFIG_POLL = 1.0  # seconds between checks of the config file while the loader sleeps
RECHECK = 1.0  # seconds before another look at files a step left for later (still arriving)
PROGRESS_WRITE = 1.0  # at most one status snapshot a second while a step makes progress
STUCK_FLOOR = 120.0  # a step is never called stuck sooner (seconds without progress)
STUCK_PACE = 2000.0  # rows a second: a transaction slower than this counts as stuck


class _Halt:
    """``stop`` for one task type's load: a stop was asked for, or a move failed (the next would too)."""

    def __init__(self, stopped):
        self.stopped = stopped
        self.failed = []  # FilingFailed

    def is_set(self):
        return self.stopped.is_set() or bool(self.failed)


class Loader:
    """Loads sealed files into the warehouse, each exactly once."""

    def __init__(self, config, connect=None, clock=time.monotonic, stuck_after=None):
        self.config = config
        self.warehouse = Warehouse(config.loader.database, memory_limit=config.loader.memory_limit,
                                   **({"connect": connect} if connect else {}))
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
        self._retry = None  # {what, error, attempts, delay, slow, since, next_at, probe}
        self._pending = {}
        self._handled = 0  # files the last step took out of staging/
        self.stuck_after = stuck_after  # None: derived from max_rows_per_transaction
        self._step_at = None  # clock() when the running step began; None between steps
        self._progress_at = None  # clock() of the running step's last progress
        self._loading = None  # {task_type, files, done, since} while a task type loads
        self._written_at = 0.0  # clock() of the last status snapshot
        self.totals = Outcome()
        self.last_load = None
        self.rate = None
        self.state = "stopped"
        self.manifest = {}
        self.snapshot = None  # the DuckLake snapshot after the last step
        self.upkeep = Upkeep(clock)
        self.warehouse.on_lock_wait = self._waiting_for_lock
        self.by_type = {name: Counter() for name in config.datasets.names}  # since start
        self.quarantine_reasons = {}  # task type -> Counter(reason class), since start
        self.last_loaded_at = {}  # task type -> unix time of the last commit
        self.last_lag = {}  # task type -> {"oldest": s, "newest": s} of the last commit
        self.lag = LagHistogram()  # per file: oldest row's fetch time -> commit
        self.retries = 0  # database retries since start
        self.watcher = ConfigWatcher(config, own_sections=("loader",))
        self.reload_requested = self.watcher.reload_requested  # SIGHUP sets it
        self.started_at = None
        self.ops = None

    # -- one step -----------------------------------------------------------

    def run_once(self, now=None):
        """Scan staging/ and load what is pending. Returns the number of files that left staging/."""
        now = self.clock() if now is None else now
        with self._lock:
            self._progress_at = self._step_at = self.clock()
            handled = 0
            try:
                handled = self._step(now)
            except DatabaseBusy as exc:
                # Failing to open, rather than failing mid-load, is worth a cheap
                # probe between attempts: the database may be free long before the next one.
                self._busy(exc, now, "database busy", probe=not self.warehouse.is_open)
            except FilingFailed as exc:
                self._busy(exc, now, f"{exc.what} failing")
            except OSError as exc:  # staging/ unreadable, disk full: retry, drop nothing
                self._busy(exc, now, "file system error")
            except Exception as exc:  # noqa: BLE001 - a bug must not end the loader; files stay staged
                log.exception("unexpected error in the load step; retrying with backoff")
                self._busy(exc, now, "unexpected error")
            finally:
                self._step_at = None
                self._loading = None
            self._handled = handled
            self._write_status()
            return handled

    def _step(self, now):
        names = self.config.datasets.names
        pending = {t: paths for t, paths in scan(self.config.staging_dir, names).items() if paths}
        self._pending = {t: len(p) for t, p in pending.items()}
        self._sweep()
        if not pending:
            self._upkeep()
            if self.warehouse.is_open and now - (self._last_active or now) >= self.config.loader.idle_release:
                self.warehouse.close()
                log.info("idle: released %s", self.warehouse.database)
            self._recovered()  # what was waited for has left staging/ some other way
            self.state = "idle"
            return 0
        self.state = "loading"
        done = Outcome()
        unfiled = []  # moves that failed: the task types they ended, the retry they call for
        for task_type, paths in pending.items():
            if self.stopped_event.is_set():
                break
            self._loading = {"task_type": task_type, "files": len(paths), "done": 0, "since": utcnow().isoformat()}
            self._write_status()  # before the database: `loader status` says what a slow open waits for
            self.warehouse.open()
            fetched = {}  # file name -> (oldest, newest) fetch time, read at commit
            halt = _Halt(self.stopped_event)
            try:
                out = load_files(self.warehouse, self.config.datasets[task_type], paths, self.config,
                                 settle=lambda p, fetched=fetched, halt=halt: self._settle(p, fetched, halt),
                                 stop=halt, progress=self._progressed)
            except DatabaseBusy:
                self.by_type[task_type]["batches_failed"] += 1
                raise
            except FilingFailed as exc:  # a refused file could not be quarantined: the other task types go on
                unfiled.append(exc)
                continue
            done.add(out)
            self._account(task_type, out, fetched)
            unfiled += halt.failed
        self._loading = None
        self.totals.add(done)
        if done.seconds > 0:
            self.rate = round(done.rows / done.seconds)
        if self.warehouse.is_open:  # not when a stop came before the first task type
            self.manifest = self.warehouse.manifest_totals()
            self.snapshot = self.warehouse.snapshot()
        self._upkeep()
        self._pending = {t: n for t, n in ((t, len(scan(self.config.staging_dir, [t])[t])) for t in pending) if n}
        self._last_active = self.clock()
        if unfiled:
            raise unfiled[0]
        self._recovered()
        if self.config.loader.idle_release == 0:
            self.warehouse.close()
        self.state = "idle"
        return done.files

    def _upkeep(self):
        """DuckLake compaction and expiry, when due and no stop is asked for (loader.upkeep)."""
        if not self.stopped_event.is_set() and self.upkeep.due(self.config.loader, self.warehouse.database):
            self.upkeep.run(self.warehouse, self.config.datasets.names, self.config.loader)
            self.snapshot = self.warehouse.snapshot() if self.warehouse.is_open else self.snapshot

    def _settle(self, path, fetched, halt):
        """After the commit that loaded ``path``: note its rows' fetch times, then archive it."""
        if halt.failed:
            return  # the move before failed; this one waits in staging/ for the retry
        committed = utcnow().replace(tzinfo=None)
        span = _fetch_span(path)
        if span is not None:
            fetched[os.path.basename(path)] = (committed - span[0], committed - span[1])
        try:
            filing.archive(self.config.archive_dir, path)
        except OSError as exc:
            halt.failed.append(exc if isinstance(exc, FilingFailed) else FilingFailed("archive", Path(path), exc))

    def _waiting_for_lock(self, task_type):
        """Another loader writes this task type now: say so until the lock is ours."""
        if self._loading is not None:
            self._loading["waiting"] = f"the writer lock of {task_type}, held by another loader"
        log.info("waiting for the writer lock of %s, held by another loader", task_type,
                 extra={"event": "lock_wait", "task_type": task_type})
        self._write_status()

    def _progressed(self, files, rows):
        """A file inspected, merged, archived or quarantined: the step is alive."""
        now = self.clock()
        self._progress_at = now
        if self._loading is not None:
            self._loading["done"] += files
            self._loading.pop("waiting", None)
        if now - self._written_at >= PROGRESS_WRITE:
            self._write_status()

    def _account(self, task_type, out, fetched):
        """Fold one task type's load into the figures status and metrics show."""
        c = self.by_type.setdefault(task_type, Counter())
        c.update(files_loaded=len(out.loaded), files_skipped=len(out.skipped),
                 files_quarantined=len(out.quarantined), files_duplicate=len(out.duplicates), rows=out.rows,
                 inserted=out.inserted, updated=out.updated)
        if out.loaded or out.skipped or out.duplicates:
            c["batches_ok"] += 1
        if out.reasons:
            self.quarantine_reasons.setdefault(task_type, Counter()).update(out.reasons)
        if not out.loaded:
            return
        lags = [fetched[n] for n in out.loaded if n in fetched]
        for oldest, _newest in lags:
            self.lag.observe(task_type, oldest.total_seconds())
        if lags:
            self.last_lag[task_type] = {"oldest": round(max(o for o, _ in lags).total_seconds(), 3),
                                        "newest": round(min(n for _, n in lags).total_seconds(), 3)}
        self.last_loaded_at[task_type] = time.time()
        self.last_load = {"task_type": task_type, "files": len(out.loaded), "rows": out.rows,
                          "inserted": out.inserted, "updated": out.updated, "at": utcnow().isoformat()}
        log.info("loaded %d file(s) of %s: %d rows, %d inserted, %d updated", len(out.loaded), task_type,
                 out.rows, out.inserted, out.updated,
                 extra={"event": "loaded", "task_type": task_type, "file": out.loaded[-1],
                        "files": len(out.loaded), "rows": out.rows, "inserted": out.inserted,
                        "updated": out.updated, "lag_seconds": self.last_lag.get(task_type, {}).get("oldest")})

    def _busy(self, exc, now, what, probe=False):
        self.warehouse.close()  # release, so whoever holds it can finish
        self.retries += 1
        delay = self.backoff.next()
        attempts = self.backoff.attempts
        slow = attempts > self.config.loader.max_retries
        if slow:
            delay = self.config.loader.retry_max_delay
        since = self._retry["since"] if self._retry else utcnow().isoformat()
        self._retry = {"what": what, "error": one_line(exc), "attempts": attempts, "delay": delay,
                       "slow": slow, "since": since, "next_at": now + delay, "probe": probe}
        self.state = "retrying"
        log.warning("%s (attempt %d%s), retrying in %.1fs: %s", what, attempts,
                    ", past max_retries: retrying slowly" if slow else "", delay, self._retry["error"],
                    extra={"event": "database_busy" if what == "database busy" else "retrying", "reason": what,
                           "attempts": attempts, "delay": delay})

    def _recovered(self):
        if self._retry:
            log.info("%s: resolved after %d retries", self._retry["what"], self._retry["attempts"],
                     extra={"event": "recovered", "reason": self._retry["what"]})
        self._retry = None
        self.backoff.reset()

    def probe(self):
        """Between attempts on a database that would not open: does it open now? (Then it stays open.)"""
        with self._lock:
            try:
                self.warehouse.open()
            except DatabaseBusy:
                return False
        return True

    def _sweep(self):
        today = utcnow().date()
        if self._last_sweep != today:
            self._last_sweep = today
            for day in filing.sweep_archive(self.config.archive_dir, self.config.loader.archive_retention_days):
                log.info("archive retention: removed %s", day)
            for folder in (self.config.archive_dir, self.config.quarantine_dir):
                for leftover in remove_leftovers(folder):  # a move or a report a crash cut short
                    log.info("removed the leftover %s", leftover)

    def next_delay(self):
        """How long the supervisor may sleep before the next step."""
        if self._retry:
            return max(0.0, self._retry["next_at"] - self.clock())
        if self._pending:
            # Straight on while steps take files; files a step left (still arriving) are looked at again soon.
            return 0.0 if self._handled else min(RECHECK, self.config.loader.rescan_interval)
        delay = self.config.loader.rescan_interval
        if self.warehouse.is_open:
            release_at = (self._last_active or self.clock()) + self.config.loader.idle_release
            delay = min(delay, max(0.05, release_at - self.clock()))
        return delay

    # -- live configuration ---------------------------------------------------

    def check_config(self):
        """Apply live values if the config file changed or SIGHUP asked.

        Returns True if something happened (applied or refused), so a sleeping
        loop re-plans and writes its status.
        """
        old = self.config.loader
        self.config, outcome = self.watcher.poll(self.config)
        lc = self.config.loader
        if outcome == "applied" and (old.retry_delay, old.retry_max_delay) != (lc.retry_delay, lc.retry_max_delay):
            self.backoff.retune(lc.retry_delay, 2.0, max(lc.retry_max_delay, lc.retry_delay))
        return outcome is not None

    # -- status -------------------------------------------------------------

    def get_status(self):
        t = self.totals
        lc = self.config.loader
        return {
            "process": "loader",
            "pid": os.getpid(),
            "started_at": self.started_at,
            "updated_at": utcnow().isoformat(),
            "state": self.state,
            "loading": dict(self._loading) if self._loading else None,
            "step": self._step_status(),
            "database": str(self.warehouse.database),
            "database_open": self.warehouse.is_open,
            "database_kind": self.warehouse.database.kind,
            "snapshot": self.snapshot,
            "maintenance": self.upkeep.status() if self.warehouse.database.is_lake else None,
            "pending_files": dict(self._pending),
            "unknown_task_types": unknown_folders(self.config.staging_dir, self.config.datasets.names),
            "not_staged": not_staged(self.config.staging_dir, self.config.datasets.names),
            "last_load": self.last_load,
            "rows_per_second": self.rate,
            "since_start": {"files_loaded": len(t.loaded), "files_skipped": len(t.skipped),
                            "files_quarantined": len(t.quarantined), "files_duplicate": len(t.duplicates),
                            "rows": t.rows, "inserted": t.inserted, "updated": t.updated,
                            "merge_seconds": round(t.seconds, 3)},
            "manifest": self.manifest,
            "retry": dict(self._retry) if self._retry else None,
            "retries": self.retries,
            "task_types": {name: {**{k: c[k] for k in ("files_loaded", "files_skipped", "files_quarantined",
                                                         "files_duplicate", "rows", "inserted", "updated",
                                                         "batches_ok", "batches_failed")},
                                  "quarantined_by_reason": dict(self.quarantine_reasons.get(name, {})),
                                  "last_loaded_at": self.last_loaded_at.get(name),
                                  "last_lag_seconds": self.last_lag.get(name)}
                           for name, c in self.by_type.items()},
            "quarantine_files": _quarantine_files(self.config.quarantine_dir),
            "lag": self.lag.snapshot(),
            "threads": self._thread_states(),
            "config": {**self.watcher.status(self.config),
                       "live": {k: getattr(lc, k) for k in ("max_retries", "retry_delay", "retry_max_delay",
                                                             "rescan_interval", "max_rows_per_transaction",
                                                             "new_columns", "archive_retention_days",
                                                             "maintenance_interval", "snapshot_retention_days",
                                                             "idle_release")}},
            "metrics_address": self.ops.address if self.ops else None,
        }

    def _thread_states(self):
        states = {}
        if self._thread is not None or self.state != "stopped":
            alive = self._thread is not None and self._thread.is_alive()
            states["loader"] = self.state if alive else "stopped"
        if self._watcher is not None:
            states["watcher"] = "running" if self._watcher.observer.is_alive() else "stopped"
        if self.ops is not None:
            states["http"] = "running" if self.ops.is_alive() else "stopped"
        return states

    # -- health -------------------------------------------------------------

    def health(self):
        """Problems that mean the loader is not alive and working (empty: healthy)."""
        problems = []
        if self._thread is None or not self._thread.is_alive() or self.stopped_event.is_set():
            problems.append("the loader thread is not running")
        if self._watcher is None or not self._watcher.observer.is_alive():
            problems.append("the staging watcher is not running")
        stuck = self.stuck()
        if stuck:
            problems.append(stuck)
        return problems

    @property
    def stuck_limit(self):
        """Seconds without progress after which the running step counts as stuck (module docstring)."""
        if self.stuck_after is not None:
            return self.stuck_after
        return max(STUCK_FLOOR, self.config.loader.max_rows_per_transaction / STUCK_PACE)

    def stuck(self):
        """What holds the running step, if it has made no progress for longer than ``stuck_limit``; else None."""
        started, last = self._step_at, self._progress_at
        if started is None or last is None:
            return None
        quiet = self.clock() - last
        if quiet <= self.stuck_limit:
            return None
        loading = self._loading
        doing = f" (loading {loading['files']} file(s) of {loading['task_type']})" if loading else ""
        return (f"the load step has made no progress for {quiet:.0f}s, over the {self.stuck_limit:g}s"
                f" it may take{doing}: something holds it")

    def _step_status(self):
        """The running step, with wall-clock times: ``loader status`` judges a snapshot a stuck step stopped writing."""
        started, last = self._step_at, self._progress_at
        if started is None or last is None:
            return None
        now, wall = self.clock(), time.time()
        return {"started_at": dt.datetime.fromtimestamp(wall - (now - started), dt.timezone.utc).isoformat(),
                "progress_at": dt.datetime.fromtimestamp(wall - (now - last), dt.timezone.utc).isoformat(),
                "stuck_after": self.stuck_limit, "stuck": self.stuck()}

    def ready(self):
        """Problems that keep the loader from loading (empty: ready): database, staging, archive."""
        problems = self.health()
        for label, folder in (("staging", self.config.staging_dir), ("archive", self.config.archive_dir)):
            reason = writable(folder)
            if reason:
                problems.append(f"{label}: {reason}")
        if self._retry:
            r = self._retry
            what = "database not openable" if r["what"] == "database busy" else r["what"]
            problems.append(f"{what} (retry {r['attempts']}): {r['error']}")
        elif not self.warehouse.is_open and self._lock.acquire(blocking=False):
            # Idle with the database released: check it opens, without racing a step.
            try:
                self.warehouse.open()
            except DatabaseBusy as exc:
                problems.append(f"database not openable: {one_line(exc)}")
            finally:
                self.warehouse.close()
                self._lock.release()
        return problems

    def _write_status(self):
        self._written_at = self.clock()
        try:
            write_snapshot(self.config.run_dir / SNAPSHOT, self.get_status())
        except OSError as exc:
            log.warning("cannot write the status snapshot: %s", exc)

    # -- supervisor ---------------------------------------------------------

    def start(self):
        """Serve the ops endpoint (if configured), then start the watcher and the supervisor.

        Raises OSError when the metrics port cannot be bound, before any thread runs.
        """
        if self._thread is not None:
            return self
        if self.config.loader.metrics_port and self.ops is None:
            from .metrics import families

            self.ops = OpsServer(self.config.loader.metrics_host, self.config.loader.metrics_port,
                                 StatusCollector(self.get_status, families), self.health, self.ready,
                                 "loader").start()
        self.started_at = time.time()
        self.stopped_event.clear()
        self._watcher = Watcher(self.config.staging_dir, self.wake)
        self._watcher.start()
        self._thread = threading.Thread(target=self._loop, name="duckstage-loader", daemon=True)
        self._thread.start()
        return self

    def _loop(self):
        log.info("loader started: %s -> %s", self.config.staging_dir, self.warehouse.database)
        while not self.stopped_event.is_set():
            self.check_config()
            self.run_once()
            self._sleep(self.next_delay())
        with self._lock:
            self.warehouse.close()
            self.state = "stopped"
            self._write_status()
        log.info("loader stopped")

    def _sleep(self, delay):
        """Wait up to ``delay``, checking the config file every CONFIG_POLL seconds.

        Idle, a wake-up (a sealed file) ends the wait. Retrying, nothing but
        the backoff does, or a probe that finds the database opening again.
        """
        end = time.monotonic() + delay
        probing = bool(self._retry and self._retry["probe"])
        next_probe = time.monotonic() + self.config.loader.retry_delay
        while not self.stopped_event.is_set():
            now = time.monotonic()
            left = end - now
            if left <= 0:
                break
            if self._retry is None:
                if self.wake.wait(min(left, CONFIG_POLL)):
                    break
            elif probing and now >= next_probe:
                if self.probe():
                    break
                next_probe = time.monotonic() + self.config.loader.retry_delay
                continue
            else:
                self.stopped_event.wait(min(left, CONFIG_POLL, next_probe - now if probing else left))
            if self.check_config():
                break  # new values (or a refusal to report): plan the next step again
        self.wake.clear()

    def stop(self, timeout=None):
        """Finish (or roll back) the current transaction, release the database, stop threads.

        Waits ``timeout`` seconds in all (``loader.shutdown_timeout`` unless
        given); False when a thread was still running then.
        """
        timeout = self.config.loader.shutdown_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        self.stopped_event.set()
        self.wake.set()
        alive = False
        if self._thread is not None:
            self._thread.join(max(0.0, deadline - time.monotonic()))
            alive = self._thread.is_alive()
            self._thread = None
        else:
            self.warehouse.close()
        # The watcher after the step: the step's own moves out of staging/ are events it would be handed.
        if self._watcher is not None:
            self._watcher.stop(max(0.0, deadline - time.monotonic()))
            self._watcher = None
        if self.ops is not None:
            self.ops.stop()
            self.ops = None
        return not alive

    def join(self, timeout=None):
        if self._thread is not None:
            self._thread.join(timeout)


def _fetch_span(path):
    """(oldest, newest) ``_fetched_at`` of a staged file from its footer statistics, or None."""
    try:
        meta = pq.read_metadata(path)
        i = meta.schema.to_arrow_schema().get_field_index(FETCHED_AT)
        if i < 0:
            return None
        lows, highs = [], []
        for g in range(meta.num_row_groups):
            stats = meta.row_group(g).column(i).statistics
            if stats is None or not stats.has_min_max:
                return None
            lows.append(stats.min)
            highs.append(stats.max)
    except (OSError, pa.ArrowException, ValueError):
        return None
    if not lows:
        return None
    return min(lows), max(highs)


def _quarantine_files(quarantine_dir):
    """Files waiting in quarantine now, per task type (their error reports counted)."""
    root = quarantine_dir
    if not root.is_dir():
        return {}
    counts = Counter(p.parent.name for p in root.glob("*/*.error.json"))
    return dict(sorted(counts.items()))
