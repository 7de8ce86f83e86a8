"""DuckLake upkeep on a schedule: compact each table, expire old snapshots, delete unused files.

Every commit to a DuckLake adds data files (and, for updated rows, delete
files), and no file is ever removed by itself. Every
``loader.maintenance_interval`` seconds the loader, between two load steps:

1. per table (and its history), under that task type's writer lock (so it
   never races a load; the manifest under all of them):
   ``ducklake_flush_inlined_data``, ``ducklake_merge_adjacent_files`` and
   ``ducklake_rewrite_data_files`` — the current snapshot then reads a few
   files per table, however many commits made it;
2. ``ducklake_expire_snapshots`` older than ``loader.snapshot_retention_days``
   (time travel reaches back that far), then ``ducklake_cleanup_old_files``
   for files unused for ``DELETE_AFTER`` seconds (a reader may still scan one).

A failure (another writer, the catalog away) is logged and tried again at
the next interval; loading goes on meanwhile.
"""

import contextlib
import logging
import time

import duckdb

from duckstage.datasets import HISTORY_SUFFIX
from duckstage.exceptions import one_line
from duckstage.staging import utcnow

from . import lake
from .exceptions import DatabaseBusy
from .warehouse import MANIFEST

log = logging.getLogger(__name__)

DELETE_AFTER = 3600.0  # seconds an unused data file is kept for readers still scanning it


class Upkeep:
    """When DuckLake upkeep is due, and what the last one did."""

    def __init__(self, clock=time.monotonic):
        self.clock = clock
        self._last = clock()
        self.runs = 0
        self.failures = 0
        self.last = None  # {"at", "seconds", "files", "error"}

    def due(self, loader_config, database):
        interval = loader_config.maintenance_interval
        return database.is_lake and interval > 0 and self.clock() - self._last >= interval

    def run(self, warehouse, task_types, loader_config, delete_after=DELETE_AFTER):
        """Compact, expire and clean up now; returns the files per table it left (or None on failure)."""
        self._last = self.clock()
        started = time.monotonic()
        error = None
        try:
            warehouse.open()
            present = set(lake.file_counts(warehouse.con))
            for task_type in task_types:
                # A task type's history is written in its transactions, under its lock: compacted with it.
                tables = [t for t in (task_type, task_type + HISTORY_SUFFIX) if t in present]
                if tables:
                    with warehouse.writing(task_type):
                        for table in tables:
                            lake.compact(warehouse.con, table)
            # Every task type's commit writes manifest rows: compact it holding all their locks
            # (in one order, so two loaders doing this never wait for each other).
            with contextlib.ExitStack() as held:
                for task_type in sorted(task_types):
                    held.enter_context(warehouse.writing(task_type))
                lake.compact(warehouse.con, MANIFEST)
            lake.expire(warehouse.con, loader_config.snapshot_retention_days, delete_after)
            files = lake.file_counts(warehouse.con)
        except (duckdb.Error, DatabaseBusy) as exc:
            error, files = one_line(exc), None
            self.failures += 1
            log.warning("DuckLake upkeep failed, tried again in %gs: %s", loader_config.maintenance_interval, error,
                        extra={"event": "maintenance_failed"})
        else:
            self.runs += 1
            log.info("DuckLake upkeep done in %.1fs: %s", time.monotonic() - started,
                     ", ".join(f"{t} {c['data_files']} data/{c['delete_files']} delete file(s)"
                               for t, c in files.items()), extra={"event": "maintenance"})
        self.last = {"at": utcnow().isoformat(), "seconds": round(time.monotonic() - started, 3),
                     "files": files, "error": error}
        return files

    def status(self):
        return {"runs": self.runs, "failures": self.failures, "last": self.last}
