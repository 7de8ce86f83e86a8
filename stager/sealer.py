"""Sealing: a buffer becomes a staged Parquet file, then its claims are acknowledged.

The order is the guarantee: the file is written, fsynced and renamed into
``staging/`` (duckstage.staging.seal) before a single claim of it is
acknowledged. A seal that fails (disk full) puts the rows back in the buffer,
ahead of anything newer, and raises ResourceError; the claims stay leased.
"""

import datetime as dt
import logging
import threading
import time

import pyarrow.compute as pc

from duckstage import staging
from duckstage.backoff import Backoff
from duckstage.datasets import FETCHED_AT
from duckstage.exceptions import ResourceError

from .buffer import dedup

log = logging.getLogger(__name__)


class Sealer:
    """Seals the buffers of one stager instance into ``staging_dir``.

    ``batch_for(task_type)`` gives the live batch settings (they change with
    the configuration file); ``halt`` is the event that ends a shutdown's
    retries early.
    """

    def __init__(self, buffers, staging_dir, schema_version, instance, claims, stats, batch_for, halt,
                 fsync):
        self.buffers = buffers
        self.staging_dir = staging_dir
        self.schema_version = schema_version
        self.instance = instance
        self.claims = claims
        self.stats = stats
        self.batch_for = batch_for
        self.halt = halt
        self.fsync = fsync
        self.backoff = Backoff(0.5, 2.0, 30.0)
        self.error = None  # the last seal failure, until a seal succeeds
        self._seq_lock = threading.Lock()
        self._seq = 0

    def behind(self):
        """True while sealing fails and a buffer already holds a file's worth of rows.

        A quiet queue's file, batch_size: a backlog must not grow a buffer no seal can empty.
        """
        if self.error is None:
            return False
        return any(b.full(self.batch_for(n)) for n, b in self.buffers.items())

    def seal_due(self, now):
        """Seal every buffer that is full or older than its batch_timeout; return files sealed."""
        sealed = 0
        for name, buffer in self.buffers.items():
            if buffer.due(self.batch_for(name), now, self.claims.backlog):
                with buffer.lock:
                    if buffer.due(self.batch_for(name), now, self.claims.backlog):
                        sealed += self.seal(buffer)
        return sealed

    def seal_all(self, deadline=None):
        """Seal every non-empty buffer (shutdown); retry a failing seal until ``deadline``."""
        sealed = 0
        for buffer in self.buffers.values():
            while buffer.rows:
                try:
                    with buffer.lock:
                        sealed += self.seal(buffer)
                except ResourceError as exc:
                    delay = self.backoff.next()
                    if deadline is None or time.monotonic() + delay > deadline:
                        log.error("%s: %s; %d row(s) left unsealed, their tasks stay leased and "
                                  "run again at the next start", buffer.dataset.name, exc, buffer.rows)
                        break
                    self.halt.wait(delay)
        return sealed

    def seal(self, buffer):
        """Seal ``buffer`` (caller holds its lock) and acknowledge its claims; return files sealed."""
        opened_at = buffer.opened_at
        table, tokens, task_ids = buffer.take()
        if table is None:
            return 0
        dataset = buffer.dataset
        table, superseded = dedup(table, dataset)
        name = staging.StagedFile.new(dataset.name, self.instance, self._next_seq())
        meta = staging.footer_metadata(dataset, table.num_rows, task_ids, self.instance,
                                       name.created_at, self.schema_version)
        final = self.staging_dir / dataset.name / name.name
        try:
            staging.seal(table, final, meta, self.fsync)
        except ResourceError as exc:
            buffer.put_back(table, tokens, task_ids, opened_at)
            self.stats.error("system_resource")
            self.stats.count(dataset.name, seal_failures=1)
            self.error = str(exc)
            raise
        except BaseException:
            buffer.put_back(table, tokens, task_ids, opened_at)  # a bug must not drop rows on the floor
            raise
        self.backoff.reset()
        self.error = None
        self.claims.ack(tokens)
        self.stats.count(dataset.name, files=1, rows_staged=table.num_rows, superseded=superseded)
        lag = _lag(table)
        if lag is not None:
            self.stats.seal_lag.observe(dataset.name, lag)
        log.info("sealed %s: %d rows from %d task(s)", final.name, table.num_rows, len(tokens),
                 extra={"event": "sealed", "task_type": dataset.name, "file": final.name,
                        "rows": table.num_rows, "tasks": len(tokens), "lag_seconds": lag})
        return 1

    def _next_seq(self):
        with self._seq_lock:
            self._seq += 1
            return self._seq


def _lag(table):
    """Seconds from the oldest row's fetch (or enqueue) time until now, or None."""
    oldest = pc.min(table.column(FETCHED_AT)).as_py()  # naive UTC, as staged
    if oldest is None:
        return None
    return round((staging.utcnow() - oldest.replace(tzinfo=dt.timezone.utc)).total_seconds(), 3)
