"""Staging claims: clean their rows, run the task type's processor, buffer what is good, dead-letter the rest.

Every claim of a lease batch ends buffered (acknowledged later, by the seal of
its rows), acknowledged (every row dead-lettered or filtered), or released
(handed out again: its refused rows could not be written), even when a seal or
a dead-letter write fails on the way (disk full): none is left leased to wait
for a restart. Such a failure is raised once the whole lease batch is dealt
with, so the worker pauses.
"""

import logging

from duckstage.exceptions import ResourceError

from . import processors
from .clean import Part, clean_many, concat_staged
from .deadletter import Refusal
from .exceptions import UNKNOWN_TASK_TYPE, UNREADABLE_TASK

log = logging.getLogger(__name__)


class _Outcome:
    """What the claims of one lease batch come to."""

    def __init__(self):
        self.handled = 0     # rows dealt with
        self.done = []       # tokens to acknowledge: no row of theirs waits in a buffer
        self.released = []   # claims to hand out again: their refused rows could not be written
        self.failure = None  # the first ResourceError, raised once every claim is settled

    def fail(self, exc):
        self.failure = self.failure or exc


class Intake:
    """Turns claims into buffered rows and dead-letter records.

    ``processors`` maps a task type to its registered processor
    (stager.processors); ``batch_for(task_type)`` gives the live batch settings.
    """

    def __init__(self, buffers, processors_by_type, deadletter, claims, sealer, stats, batch_for):
        self.buffers = buffers
        self.processors = processors_by_type
        self.deadletter = deadletter
        self.claims = claims
        self.sealer = sealer
        self.stats = stats
        self.batch_for = batch_for
        self._warned_columns = set()

    def stage(self, claims, now):
        """Clean claims, dead-letter what is refused, buffer the rest; return rows handled."""
        outcome, by_type = _Outcome(), {}
        try:
            for claim in claims:
                result = claim.result
                if result.error:
                    self._refuse_whole(claim, result.error, UNREADABLE_TASK, outcome)
                elif result.task_type not in self.buffers:
                    self._refuse_whole(claim, f"unknown task type {result.task_type!r} "
                                              f"(known: {', '.join(self.buffers)})", UNKNOWN_TASK_TYPE, outcome)
                else:
                    by_type.setdefault(result.task_type, []).append(claim)
            for task_type, group in by_type.items():
                self._stage_group(self.buffers[task_type], group, now, outcome)
        finally:
            # Even when a bug ends the batch early: what is written down is let go.
            self._let_go(outcome)
        if outcome.failure is not None:
            raise outcome.failure
        return outcome.handled

    def _let_go(self, outcome):
        if outcome.released:
            self.stats.error("system_resource")
            log.error("cannot write the dead letter; %d task(s) go back to the queue and run again: %s",
                      len(outcome.released), ", ".join(str(c.result.task_id) for c in outcome.released))
            self.claims.release([c.token for c in outcome.released])
        if outcome.done:
            self.claims.ack(outcome.done)

    def _refuse_whole(self, claim, reason, code, outcome):
        """Dead-letter every row of a claim, which is then done (or released if the write fails)."""
        result = claim.result
        known = result.task_type in self.buffers
        rows = result.data if isinstance(result.data, list) else (
            result.data.to_pylist() if result.data is not None else [])
        refusals = [Refusal(row, reason, code) for row in rows or [{}]]
        if self._dead_letter(result, refusals, claim, outcome, known):
            self.stats.count(result.task_type if known else None, tasks=1)
            outcome.handled += len(refusals)
            outcome.done.append(claim.token)

    def _dead_letter(self, result, refusals, claim, outcome, known=True):
        """The one way rows are refused: write them durably, count them by reason code, log.

        Returns False when the write failed (disk full): the claim is then
        released whole, none of its rows kept, and the failure raised later.
        """
        try:
            self.deadletter.write(result.task_type or "", refusals, result.task_id, result.params, known=known)
        except ResourceError as exc:
            outcome.released.append(claim)
            outcome.fail(exc)
            return False
        n = len(refusals)
        self.stats.dead_lettered(result.task_type if known else None, refusals)
        log.warning("task %s: %d of %d %s row(s) dead-lettered, first: %s", result.task_id, n, max(n, result.rows),
                    result.task_type, refusals[0].reason.splitlines()[0],
                    extra={"event": "dead_lettered", "task_id": result.task_id, "task_type": result.task_type,
                           "rows": n})
        return True

    def _stage_group(self, buffer, claims, now, outcome):
        """Stage the claims of one task type, task by task."""
        dataset = buffer.dataset
        results = [c.result for c in claims]
        try:
            cleaned = clean_many(dataset, [Part(r.data, r.task_id, r.fetched_at, r.params) for r in results])
        except Exception as exc:  # noqa: BLE001 - data nobody foresaw must not stop the stager
            log.exception("%s: cleaning %d task(s) failed; dead-lettering them", dataset.name, len(claims))
            self.stats.error("internal")
            for claim in claims:
                claim.result.error = f"internal error while cleaning: {type(exc).__name__}: {exc}"
                self._refuse_whole(claim, claim.result.error, UNREADABLE_TASK, outcome)
            return
        self._note_new_columns(dataset, cleaned.table.schema, cleaned.new_columns)
        refused = [[] for _ in claims]  # per task: [Refusal]
        for i, refusal in cleaned.bad:
            refused[i].append(refusal)
        table, counts = cleaned.table, cleaned.counts
        if dataset.name in self.processors and table.num_rows:
            table, counts = self._process(self.processors[dataset.name], dataset, results, table, counts, refused)
        settings = self.batch_for(dataset.name)
        backlog = self.claims.claimed_in_backlog()
        offset, seal_failed = 0, False
        with buffer.lock:
            # Task by task, so a file rotates at batch_size however many tasks were cleaned together.
            for claim, result, count, refusals in zip(claims, results, counts, refused):
                rows = table.slice(offset, count)
                offset += count
                if refusals and not self._dead_letter(result, refusals, claim, outcome):
                    continue  # released whole: its good rows are not buffered either, the task runs again
                self.stats.count(dataset.name, tasks=1, rows_in=result.rows)
                outcome.handled += result.rows
                if not count:
                    outcome.done.append(claim.token)  # every row dead-lettered (fsynced) or filtered
                    continue
                buffer.append(rows, [claim.token], [result.task_id], now)
                if not seal_failed and buffer.full(settings, backlog):
                    try:
                        self.sealer.seal(buffer)
                    except ResourceError as exc:
                        # The rows stay buffered, the later claims join them, the sealer retries.
                        outcome.fail(exc)
                        seal_failed = True

    def _note_new_columns(self, dataset, schema, names):
        """Log once per column that an undeclared column is staged (the loader's new_columns decides)."""
        new = [c for c in names if (dataset.name, c) not in self._warned_columns]
        if new:
            self._warned_columns.update((dataset.name, c) for c in new)
            log.warning("%s: staging column(s) not declared in datasets.yaml: %s; loader.new_columns decides "
                        "whether they reach the warehouse, declaring them gives them a type", dataset.name,
                        ", ".join(f"{c} ({schema.field(c).type})" for c in new),
                        extra={"event": "new_columns", "task_type": dataset.name})

    def _process(self, registered, dataset, results, table, counts, refused):
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
                    part, (count,) = self._process(registered, dataset, [results[i]], part, [count], [refused[i]])
                parts.append((part, count))
            return concat_staged([p for p, _ in parts]), [c for _, c in parts]
        try:
            applied = processors.apply(registered, dataset, table, ids)
        except processors.Refused as exc:
            offset = 0
            system = {c.name for c in dataset.system_columns}
            as_given = [c for c in table.column_names if c not in system]  # the rows as cleaned
            for i, count in enumerate(counts):
                rows = table.slice(offset, count).select(as_given).to_pylist()
                refused[i].extend(Refusal(row, str(exc), exc.reason) for row in rows)
                offset += count
            log.error("%s: %d row(s) of %d task(s) go to the dead letter: %s", dataset.name, table.num_rows,
                      len(results), exc,
                      extra={"event": "processor_failed", "task_type": dataset.name,
                             "task_id": ",".join(i for i in ids if i), "rows": table.num_rows})
            return table.slice(0, 0), [0] * len(results)
        for i, refusal in applied.rejected:
            refused[i].append(refusal)
        filtered = table.num_rows - applied.table.num_rows - len(applied.rejected)
        if filtered > 0:
            self.stats.count(dataset.name, rows_filtered=filtered)
        return applied.table, applied.counts
