"""The stager: claims Huey work, cleans it, buffers it per task type, seals files.

``Stager(config)`` is the embedding API (``start()``, ``stop()``,
``get_status()``); the ``stager run`` command is a thin layer over it. Each
loop exposes one step for tests: ``stage_next()`` claims and stages the tasks
of one lease batch (up to 8), ``seal_due(now)`` seals the buffers that are
full or old, and ``run_once`` does both.

Acknowledgement rule (guarantee 1): a claim is acknowledged only after every
row of it is in a sealed file or in the (fsynced) dead letter.

Operations: ``get_status()`` is the one source of the numbers; the status
snapshot (``data/run/stager.json``, read by ``stager status``) and, when
``stager.metrics_port`` is set, ``/metrics`` (stager.metrics) are both built
from it. A task type's custom processor (stager.processors) runs on the
cleaned rows before they are buffered.
"""

import logging
import os
import secrets
import sqlite3
import threading
import time
from collections import Counter, deque

import pyarrow.compute as pc

from duckstage import staging

from . import processors
from duckstage.backoff import Backoff
from .buffer import Buffer, dedup
from .clean import Part, clean_many, concat_staged
from .deadletter import DeadLetter
from duckstage.config import ConfigWatcher
from duckstage.datasets import FETCHED_AT
from duckstage.exceptions import ResourceError
from duckstage.ops import LagHistogram, OpsServer, StatusCollector, writable, write_snapshot
from .results import utcnow
from .sources import QueueSource, ResultSource
from .tasks import build_huey

log = logging.getLogger("duckstage.stager")


def _current_delay(backoff):
    """The delay the backoff last handed out (0 when not backing off)."""
    if not backoff.attempts:
        return 0
    return min(backoff.cap, backoff.initial * backoff.factor ** (backoff.attempts - 1))


class Stager:
    def __init__(self, config, clock=time.monotonic, fsync=None):
        self.config = config
        self.clock = clock
        self.fsync = fsync or os.fsync
        # Users' functions are imported here, by the stager alone (ConfigError for a typo), before anything opens.
        self.transforms = processors.for_datasets(config.datasets)  # task type -> processors.Registered
        self.instance = secrets.token_hex(4)
        self.huey, _ = build_huey(config, synchronous="NORMAL" if config.huey.fsync else None)
        source_class = QueueSource if config.stager.run_huey_consumer else ResultSource
        self.source = source_class(self.huey, self.instance)
        self.deadletter = DeadLetter(config.deadletter_dir, self.instance, self.fsync)
        self.buffers = {d.name: Buffer(d) for d in config.datasets}
        self.stopped_event = threading.Event()  # set: workers stop claiming
        self._halt = threading.Event()  # set: timer threads stop
        self._seq_lock = threading.Lock()
        self._recover_lock = threading.Lock()
        self._recovered = False
        self._seq = 0
        self._threads = []
        self._thread_state = {}
        self._stats_lock = threading.Lock()
        self.stats = {name: Counter() for name in self.buffers}
        self.errors = Counter()
        self._warned_columns = set()
        self._rate = deque(maxlen=120)  # (clock, rows staged so far)
        self.started_at = None
        self.state = "new"
        self.seal_backoff = Backoff(0.5, 2.0, 30.0)
        self.sealing_error = None  # the last seal failure, until a seal succeeds
        self.watcher = ConfigWatcher(config, own_sections=("stager", "huey"))
        self.reload_requested = self.watcher.reload_requested  # SIGHUP sets it
        self.deadletter_reasons = {}  # task type -> Counter(reason class)
        self.seal_lag = LagHistogram()
        self.ops = None  # the /metrics, /healthz, /readyz server when metrics_port is set

    # --- lifecycle --------------------------------------------------------

    def prepare(self):
        """Start-up work before any thread runs: folders, leftovers, orphaned leases."""
        for folder in (self.config.staging_dir, self.config.deadletter_dir, self.config.run_dir):
            folder.mkdir(parents=True, exist_ok=True)
        for path in staging.remove_leftovers(self.config.staging_dir):
            log.warning("removed leftover temporary file %s (its task is re-run)", path)
        try:
            self._recover()
        except sqlite3.Error as exc:  # huey.db locked by another process: the workers retry
            self._error("database_connection")
            log.warning("Huey storage: %s; recovering leases when it is free", exc)
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
        log.info("stager %s started: %d worker threads, source=%s, data_dir=%s", self.instance,
                 self.config.stager.worker_threads, self.source.kind, self.config.data_dir,
                 extra={"event": "started", "instance": self.instance})
        for name, reg in self.transforms.items():
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
            if self.sealing_behind():
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
            except sqlite3.Error as exc:  # Huey's SQLite file locked or failing: retry, lose nothing
                self._thread_state[name] = "paused"
                self._error("database_connection")
                delay = queue_backoff.next()
                log.warning("%s: Huey storage: %s; retrying in %.1fs", name, exc, delay)
                self.stopped_event.wait(delay)
                continue
            except Exception:  # noqa: BLE001 - a bug must not silently end a worker
                self._thread_state[name] = "paused"
                self._error("internal")
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
                self._halt.wait(self.seal_backoff.next())
                continue
            except Exception:  # noqa: BLE001 - a bug must not end the sealer: the rows stay buffered
                self._thread_state[name] = "paused"
                self._error("internal")
                log.exception("sealer: unexpected error; the rows stay buffered, retrying")
                self._halt.wait(self.seal_backoff.next())
                continue
            self._thread_state[name] = "idle"
            timeouts = [self.config.stager.batch_for(n).batch_timeout for n in self.buffers]
            self._halt.wait(min(0.25, min(timeouts) / 4))
        self._thread_state[name] = "stopped"

    def _status_loop(self):
        name = threading.current_thread().name
        while not self._halt.is_set():
            self._thread_state[name] = "working"
            try:
                self.check_config()
                self.write_status()
            except OSError as exc:
                self._error("system_resource")
                log.error("cannot write status: %s", exc)
            self._thread_state[name] = "idle"
            self._halt.wait(self.config.stager.status_interval)
        self._thread_state[name] = "stopped"

    # --- steps ------------------------------------------------------------

    def sealing_behind(self):
        """True while sealing fails and a buffer already holds a file's worth of rows."""
        if self.sealing_error is None:
            return False
        return any(b.full(self.config.stager.batch_for(n)) for n, b in self.buffers.items())

    def run_once(self, now=None):
        """One step without threads: stage the next claims, then seal what is due."""
        n = self.stage_next(now)
        self.seal_due(now)
        return n

    def _recover(self):
        """Once per start: release the leases of earlier instances, so their tasks run again."""
        with self._recover_lock:
            if self._recovered:
                return
            moved = self.source.recover()
            self._recovered = True
        if moved:
            log.warning("re-queued %d task(s) leased by an earlier stager that did not finish", moved)

    def stage_next(self, now=None):
        """Claim the next tasks (or results) and stage them; return the rows they carried (0: none)."""
        self._recover()
        claims = self.source.claim_many()
        if not claims:
            return 0
        return max(1, self.stage(claims, now))

    def stage(self, claims, now=None):
        """Clean claims, dead-letter what is refused, buffer the rest; return rows handled.

        Every claim ends buffered, acknowledged, or released (handed out again),
        even when a seal or a dead-letter write fails on the way (disk full):
        none is left leased to wait for a restart. Such a failure is raised
        once the whole lease batch is dealt with, so the worker pauses.
        """
        now = self.clock() if now is None else now
        by_type, handled, failure = {}, 0, None
        for claim in claims:
            result = claim.result
            if result.error or result.task_type not in self.buffers:
                try:
                    handled += self._refuse_whole(claim)
                except ResourceError as exc:
                    failure = failure or exc
            else:
                by_type.setdefault(result.task_type, []).append(claim)
        for task_type, group in by_type.items():
            try:
                handled += self._stage_group(self.buffers[task_type], group, now)
            except ResourceError as exc:
                failure = failure or exc
        if failure is not None:
            raise failure
        return handled

    def _refuse_whole(self, claim):
        """Dead-letter every row of a claim and acknowledge it; release it if the write fails."""
        result = claim.result
        known = result.task_type in self.buffers
        reason = result.error or f"unknown task type {result.task_type!r} (known: {', '.join(self.buffers)})"
        rows = result.data if isinstance(result.data, list) else (
            result.data.to_pylist() if result.data is not None else [])
        rows = rows or [{}]
        try:
            self.deadletter.write(result.task_type or "", [(r, reason) for r in rows],
                                  result.task_id, result.params, known=known)
        except ResourceError:
            self._dead_letter_failed([claim])
            raise
        self._count(result.task_type if known else None, deadlettered=len(rows), tasks=1)
        self._dead_reason(result.task_type if known else None,
                          "unreadable_task" if result.error else "unknown_task_type", len(rows))
        self._error("data_format", len(rows))
        log.warning("task %s: %d row(s) dead-lettered: %s", result.task_id, len(rows), reason.splitlines()[0],
                    extra={"event": "dead_lettered", "task_id": result.task_id, "task_type": result.task_type,
                           "rows": len(rows)})
        self._ack([claim.token])
        return len(rows)

    def _stage_group(self, buffer, claims, now):
        """Stage the claims of one task type, task by task; raise a disk failure only at the end."""
        dataset = buffer.dataset
        results = [c.result for c in claims]
        try:
            cleaned = clean_many(dataset, [Part(r.data, r.task_id, r.fetched_at, r.params) for r in results])
        except Exception as exc:  # noqa: BLE001 - data nobody foresaw must not stop the stager
            log.exception("%s: cleaning %d task(s) failed; dead-lettering them", dataset.name, len(claims))
            self._error("internal")
            handled, failure = 0, None
            for claim in claims:
                claim.result.error = f"internal error while cleaning: {type(exc).__name__}: {exc}"
                try:
                    handled += self._refuse_whole(claim)
                except ResourceError as refused:
                    failure = failure or refused
            if failure is not None:
                raise failure
            return handled
        self._note_new_columns(dataset, cleaned.table.schema, cleaned.new_columns)
        refused = [[] for _ in claims]  # per task: [(row, reason, kind)]
        for i, row, reason, kind in cleaned.bad:
            refused[i].append((row, reason, kind))
        table, counts = cleaned.table, cleaned.counts
        if dataset.name in self.transforms and table.num_rows:
            table, counts = self._transform(self.transforms[dataset.name], dataset, results, table, counts, refused)
        settings = self.config.stager.batch_for(dataset.name)
        offset, handled, done, released, failure, seal_failed = 0, 0, [], [], None, False
        with buffer.lock:
            # Task by task, so a file rotates at batch_size however many tasks were cleaned together.
            for claim, result, count, bad in zip(claims, results, counts, refused):
                rows = table.slice(offset, count)
                offset += count
                if bad:
                    try:
                        self._dead_letter(dataset, result, bad)
                    except ResourceError as exc:
                        # Its refused rows cannot be kept now: the task goes back to the
                        # queue whole (its good rows are not buffered) and runs again.
                        failure = failure or exc
                        released.append(claim)
                        continue
                self._count(dataset.name, tasks=1, rows_in=result.rows)
                handled += result.rows
                if not count:
                    done.append(claim.token)  # every row dead-lettered (fsynced) or filtered: done
                    continue
                buffer.append(rows, [claim.token], [result.task_id], now)
                if not seal_failed and buffer.full(settings):
                    try:
                        self._seal(buffer)
                    except ResourceError as exc:
                        # The rows stay buffered, the later claims join them, the sealer retries.
                        failure, seal_failed = failure or exc, True
        if released:
            self._dead_letter_failed(released)
        if done:
            self._ack(done)
        if failure is not None:
            raise failure
        return handled

    def _dead_letter(self, dataset, result, refused):
        """Write one task's refused rows ([(row, reason, kind)]) to the dead letter; ResourceError if it cannot."""
        self.deadletter.write(dataset.name, [(row, reason) for row, reason, _ in refused], result.task_id,
                              result.params)
        n = len(refused)
        self._count(dataset.name, deadlettered=n)
        for _row, _reason, kind in refused:
            self._dead_reason(dataset.name, kind)
        self._error("data_format", n)
        log.warning("task %s: %d of %d %s row(s) dead-lettered, first: %s", result.task_id, n, result.rows,
                    dataset.name, refused[0][1],
                    extra={"event": "dead_lettered", "task_id": result.task_id, "task_type": dataset.name,
                           "rows": n})

    def _dead_letter_failed(self, claims):
        self._error("system_resource")
        log.error("cannot write the dead letter; %d task(s) go back to the queue and run again: %s",
                  len(claims), ", ".join(str(c.result.task_id) for c in claims))
        self._release([c.token for c in claims])

    def _note_new_columns(self, dataset, schema, names):
        """Log once per column that an undeclared column is staged (the loader's new_columns decides)."""
        new = [c for c in names if (dataset.name, c) not in self._warned_columns]
        if new:
            self._warned_columns.update((dataset.name, c) for c in new)
            log.warning("%s: staging column(s) not declared in datasets.yaml: %s; loader.new_columns decides "
                        "whether they reach the warehouse, declaring them gives them a type", dataset.name,
                        ", ".join(f"{c} ({schema.field(c).type})" for c in new),
                        extra={"event": "new_columns", "task_type": dataset.name})

    def _transform(self, registered, dataset, results, table, counts, refused):
        """Run a task type's processor; rows it rejects or fails on join ``refused`` (per task).

        Returns the rows to buffer and their count per task (in ``results`` order).
        """
        ids = [r.task_id or "" for r in results]
        if len(set(ids)) < len(ids):
            # Rows are attributed to tasks by _task_id: tasks without distinct ids go one by one.
            parts, offset = [], 0
            for i, count in enumerate(counts):
                part = table.slice(offset, count)
                offset += count
                if count:
                    part, (count,) = self._transform(registered, dataset, [results[i]], part, [count],
                                                     [refused[i]])
                parts.append((part, count))
            return concat_staged([p for p, _ in parts]), [c for _, c in parts]
        try:
            applied = processors.apply(registered, dataset, table, ids)
        except processors.Refused as exc:
            reason = str(exc)
            offset = 0
            system = {c.name for c in dataset.system_columns}
            as_given = [c for c in table.column_names if c not in system]  # the rows as cleaned
            for i, count in enumerate(counts):
                rows = table.slice(offset, count).select(as_given).to_pylist()
                refused[i].extend((row, reason, "processor_error") for row in rows)
                offset += count
            log.error("%s: %d row(s) of %d task(s) go to the dead letter: %s", dataset.name, table.num_rows,
                      len(results), reason,
                      extra={"event": "processor_failed", "task_type": dataset.name,
                             "task_id": ",".join(i for i in ids if i), "rows": table.num_rows})
            return table.slice(0, 0), [0] * len(results)
        for i, row, reason in applied.rejected:
            refused[i].append((row, reason, "processor_rejected"))
        filtered = table.num_rows - applied.table.num_rows - len(applied.rejected)
        if filtered > 0:
            self._count(dataset.name, rows_filtered=filtered)
        return applied.table, applied.counts

    def seal_due(self, now=None):
        """Seal every buffer that is full or older than its batch_timeout; return files sealed."""
        now = self.clock() if now is None else now
        sealed = 0
        for name, buffer in self.buffers.items():
            if buffer.due(self.config.stager.batch_for(name), now):
                with buffer.lock:
                    if buffer.due(self.config.stager.batch_for(name), now):
                        sealed += self._seal(buffer)
        return sealed

    def seal_all(self, deadline=None):
        """Seal every non-empty buffer (shutdown); retry a failing seal until ``deadline``."""
        sealed = 0
        for buffer in self.buffers.values():
            while buffer.rows:
                try:
                    with buffer.lock:
                        sealed += self._seal(buffer)
                except ResourceError as exc:
                    delay = self.seal_backoff.next()
                    if deadline is None or time.monotonic() + delay > deadline:
                        log.error("%s: %s; %d row(s) left unsealed, their tasks stay leased and "
                                  "run again at the next start", buffer.dataset.name, exc, buffer.rows)
                        break
                    self._halt.wait(delay)
        return sealed

    def _seal(self, buffer):
        """Seal ``buffer`` (caller holds its lock) and acknowledge its claims."""
        opened_at = buffer.opened_at
        table, tokens, task_ids = buffer.take()
        if table is None:
            return 0
        dataset = buffer.dataset
        table, superseded = dedup(table, dataset)
        seq = self._next_seq()
        name = staging.StagedFile.new(dataset.name, self.instance, seq)
        meta = staging.footer_metadata(dataset, table.num_rows, task_ids, self.instance,
                                       name.created_at, self.config.datasets.schema_version)
        final = self.config.staging_dir / dataset.name / name.name
        try:
            staging.seal(table, final, meta, self.fsync)
        except ResourceError as exc:
            buffer.put_back(table, tokens, task_ids, opened_at)
            self._error("system_resource")
            self._count(dataset.name, seal_failures=1)
            self.sealing_error = str(exc)
            raise
        except BaseException:
            buffer.put_back(table, tokens, task_ids, opened_at)  # a bug must not drop rows on the floor
            raise
        self.seal_backoff.reset()
        self.sealing_error = None
        self._ack(tokens)
        self._count(dataset.name, files=1, rows_staged=table.num_rows, superseded=superseded)
        lag = self._lag(table)
        if lag is not None:
            self.seal_lag.observe(dataset.name, lag)
        log.info("sealed %s: %d rows from %d task(s)", final.name, table.num_rows, len(tokens),
                 extra={"event": "sealed", "task_type": dataset.name, "file": final.name,
                        "rows": table.num_rows, "tasks": len(tokens), "lag_seconds": lag})
        return 1

    @staticmethod
    def _lag(table):
        """Seconds from the oldest row's fetch (or enqueue) time until now, or None."""
        oldest = pc.min(table.column(FETCHED_AT)).as_py()
        return None if oldest is None else round((utcnow() - oldest).total_seconds(), 3)

    def _ack(self, tokens):
        # Sealed but not acknowledged if this gives up: the tasks run again after a
        # restart and the loader's MERGE absorbs the duplicate rows.
        self._settle(self.source.ack, tokens, "acknowledge", "they will be staged again after a restart")

    def _release(self, tokens):
        self._settle(self.source.release, tokens, "release", "they run again after a restart")

    def _settle(self, settle, tokens, verb, otherwise):
        tokens = [t for t in tokens if t is not None]
        backoff = Backoff(0.05, 2.0, 5.0)
        while True:
            try:
                settle(tokens)
                return
            except Exception as exc:  # noqa: BLE001 - sqlite busy/IO: keep trying
                self._error("database_connection")
                delay = backoff.next()
                log.warning("cannot %s %d claim(s) yet (%s); retrying in %.2fs", verb, len(tokens), exc, delay)
                if backoff.attempts > 20:
                    log.error("giving up trying to %s %d claim(s); %s", verb, len(tokens), otherwise)
                    return
                time.sleep(delay)

    def _error(self, error_class, n=1):
        with self._stats_lock:
            self.errors[error_class] += n

    def _next_seq(self):
        with self._seq_lock:
            self._seq += 1
            return self._seq

    def _dead_reason(self, task_type, reason, n=1):
        with self._stats_lock:
            self.deadletter_reasons.setdefault(task_type or "_unknown", Counter())[reason] += n

    def _count(self, task_type, **values):
        with self._stats_lock:
            self.stats.setdefault(task_type or "_unknown", Counter()).update(values)
            if "rows_staged" in values:
                total = sum(c["rows_staged"] for c in self.stats.values())
                self._rate.append((self.clock(), total))

    # --- live configuration -----------------------------------------------

    def check_config(self):
        """Apply live values if the config file changed or SIGHUP asked; return True if applied."""
        self.config, outcome = self.watcher.poll(self.config)
        return outcome == "applied"

    # --- status -----------------------------------------------------------

    def get_status(self):
        now = self.clock()
        with self._stats_lock:
            per_type = {}
            for name, counter in self.stats.items():
                buffer = self.buffers.get(name)
                per_type[name] = {
                    "tasks": counter["tasks"], "rows_in": counter["rows_in"],
                    "rows_staged": counter["rows_staged"], "files_sealed": counter["files"],
                    "seal_failures": counter["seal_failures"],
                    "rows_deadlettered": counter["deadlettered"], "rows_superseded": counter["superseded"],
                    "rows_filtered": counter["rows_filtered"],
                    "deadlettered_by_reason": dict(self.deadletter_reasons.get(name, {})),
                    "buffer_rows": buffer.rows if buffer else 0,
                    "buffer_bytes": buffer.nbytes if buffer else 0,
                    "buffer_age_seconds": round(buffer.age(now), 3) if buffer else 0.0,
                }
            rate = 0.0
            if len(self._rate) >= 2 and self._rate[-1][0] > self._rate[0][0]:
                (t0, r0), (t1, r1) = self._rate[0], self._rate[-1]
                rate = (r1 - r0) / (t1 - t0)
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
            "rows_per_second": round(rate, 1),
            "errors": dict(self.errors),
            "threads": dict(self._thread_state),
            "sealing_error": self.sealing_error,
            "seal_retry": {"attempts": self.seal_backoff.attempts, "delay": _current_delay(self.seal_backoff)},
            "seal_lag": self.seal_lag.snapshot(),
            "config_error": self.watcher.error,
            "config": self.watcher.status(self.config),
            "batch": {name: vars(self.config.stager.batch_for(name)) for name in self.buffers},
            "processors": {name: reg.spec for name, reg in self.transforms.items()},
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
            problems.append(f"Huey storage {self.config.huey.path} unreachable: {exc}")
        reason = writable(self.config.staging_dir)
        if reason:
            problems.append(f"staging: {reason}")
        if self.sealing_error:
            problems.append(f"sealing fails: {self.sealing_error}")
        return problems

    def write_status(self):
        write_snapshot(self.config.run_dir / "stager.json", self.get_status())
