"""The load cycle of one task type, shared by ``loader run``, ``reload`` and ``rebuild``.

Files go in seal order, several per transaction (bounded by rows), each batch
in ONE transaction: create the table if missing, add new columns, MERGE, one
manifest row per file, commit. Only then do the files move (archive). A batch
the table refuses is split into single files, so one bad file is quarantined
and the others load.

A file whose content the manifest already holds under another name (a copy
dropped in twice) is archived without a merge and counted as a duplicate: its
rows would only be counted twice. The check runs inside the transaction, so a
first copy that was refused does not make the second one a duplicate.
"""

import datetime as dt
import glob
import logging
import os
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path

import duckdb

from stager.backoff import Backoff
from stager.staging import StagedFile

from . import filing
from .discovery import inspect
from .exceptions import DatabaseBusy, FileRefused, LoaderError
from .warehouse import FORCE, LOAD, check_columns, is_busy

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    """What a load did, for status and for the person at the CLI."""

    loaded: list = field(default_factory=list)       # file names merged
    skipped: list = field(default_factory=list)      # already in the manifest: archived, not merged
    quarantined: list = field(default_factory=list)  # file names refused
    duplicates: list = field(default_factory=list)   # content loaded under another name: archived, not merged
    expired: list = field(default_factory=list)      # rebuild: listed, but removed by archive retention
    rows: int = 0          # rows read from the merged files
    inserted: int = 0
    updated: int = 0
    seconds: float = 0.0   # time spent in merge transactions
    stopped: bool = False  # a stop request left files for later

    def add(self, other):
        for name in ("loaded", "skipped", "quarantined", "duplicates", "expired"):
            getattr(self, name).extend(getattr(other, name))
        for name in ("rows", "inserted", "updated", "seconds"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.stopped = self.stopped or other.stopped
        return self

    @property
    def files(self):
        return len(self.loaded) + len(self.skipped) + len(self.quarantined) + len(self.duplicates)


def load_files(wh, dataset, paths, config, *, mode=LOAD, settle=None, stop=None,
               transaction=True, progress=None):
    """Merge ``paths`` (one task type, seal order) into ``wh``; return an Outcome.

    ``settle(path)`` runs after the commit that loaded a file (archive it).
    With ``transaction=False`` the caller holds one transaction around
    everything (rebuild) and a refused MERGE raises instead of splitting.
    Raises DatabaseBusy when the database itself fails: nothing is moved then.
    """
    out = Outcome()
    settle = _tolerant(settle or (lambda p: None))
    progress = progress or (lambda files, rows: None)

    def refuse(path, refused):
        filing.quarantine(config.quarantine_dir, dataset.name, path, refused)
        out.quarantined.append(Path(path).name)
        progress(1, 0)

    files = []
    for path in paths:
        try:
            files.append(inspect(path, dataset))
        except FileRefused as refused:
            refuse(path, refused)
        except FileNotFoundError:
            continue  # moved by a concurrent reload since the scan
    files.sort(key=lambda f: f.staged)

    if mode == LOAD and files:
        done = _guard(wh.loaded, [f.name for f in files])
        fresh = []
        for f in files:
            if f.name not in done:
                fresh.append(f)
            elif done[f.name] == f.checksum:
                # Merged and committed before a crash, not archived yet: the manifest decides.
                settle(f.path)
                out.skipped.append(f.name)
                progress(1, 0)
            else:
                refuse(f.path, FileRefused(
                    f"a different file with the name {f.name} was already loaded (checksum {done[f.name]})",
                    "compare it with the archived copy; `loader reload --force` it if it must replace that one"))
        files = fresh

    table = _guard(wh.table_columns, dataset.name) or {c.name: c.type for c in dataset.all_columns}
    planned = dict(table)
    accepted = []
    for f in files:
        try:
            planned.update(check_columns(dataset, f, planned, config.loader.new_columns))
            accepted.append(f)
        except FileRefused as refused:
            refuse(f.path, refused)

    for batch in batches(accepted, config.loader.max_rows_per_transaction):
        if stop is not None and stop.is_set():
            out.stopped = True
            break
        if transaction:
            out.add(_load_batch(wh, dataset, batch, planned, mode, settle, refuse, progress))
        else:
            out.add(_merge(wh, dataset, batch, planned, mode, progress, raise_refused=True))
    return out


def _tolerant(settle):
    """Moving a committed file may fail (disk full, permissions): it stays in staging/,
    the manifest keeps it from being merged again, and the next step moves it."""
    def run(path):
        try:
            settle(path)
        except OSError as exc:
            log.error("%s is loaded but could not be archived yet: %s", Path(path).name, exc)

    return run


def batches(files, max_rows):
    """Consecutive files with the same columns, up to ``max_rows`` rows (at least one file) each.

    Two files with the same content go to different batches, so the second is
    judged against a manifest that holds the first (or does not, if it was refused).
    """
    batch, rows, cols, sums = [], 0, None, set()
    for f in files:
        if batch and (rows + f.rows > max_rows or set(f.columns) != cols or f.checksum in sums):
            yield batch
            batch, rows, sums = [], 0, set()
        batch.append(f)
        rows += f.rows
        cols = set(f.columns)
        sums.add(f.checksum)
    if batch:
        yield batch


def _load_batch(wh, dataset, batch, planned, mode, settle, refuse, progress):
    wh.begin()
    try:
        out = _merge(wh, dataset, batch, planned, mode, progress=None, raise_refused=True)
        try:
            wh.commit()
        except duckdb.Error as exc:
            # The data was accepted; writing it failed (disk full, I/O error):
            # retry later with backoff, the files stay in staging/.
            raise DatabaseBusy(f"{wh.path}: commit failed: {exc}") from exc
    except FileRefused as refused:
        wh.rollback()
        if len(batch) > 1:
            # Find the file the table refuses: each alone, in seal order.
            out = Outcome()
            for f in batch:
                out.add(_load_batch(wh, dataset, [f], planned, mode, settle, refuse, progress))
            return out
        refuse(batch[0].path, refused)
        return Outcome(quarantined=[])  # refuse() already counted it
    except BaseException:
        wh.rollback()
        raise
    settled = set(out.loaded) | set(out.duplicates)
    for f in batch:
        if f.name in settled:
            settle(f.path)
            progress(1, f.rows if f.name in out.loaded else 0)
    return out


def _merge(wh, dataset, batch, planned, mode, progress, raise_refused):
    started = time.monotonic()
    try:
        batch, duplicates = _without_duplicates(wh, batch)
        if not batch:
            if progress:
                progress(len(duplicates), 0)
            return Outcome(duplicates=duplicates)
        current = wh.table_columns(dataset.name)
        if current is None:
            wh.create_table(dataset)
            current = wh.table_columns(dataset.name)
        for name in planned:
            if name not in current and any(name in f.columns for f in batch):
                wh.add_column(dataset.name, name, planned[name])
                current[name] = planned[name]
        merged = wh.merge(dataset, batch, current, mode)
        wh.record(dataset.name, batch, merged, forced=(mode == FORCE))
    except duckdb.Error as exc:
        if is_busy(exc) and not any(str(f.path) in str(exc) for f in batch):
            raise DatabaseBusy(f"{wh.path}: {exc}") from exc
        names = ", ".join(f.name for f in batch)
        raise FileRefused(f"table {dataset.name} refused {names}: {exc}".replace("\n", " "),
                          "read the error; fix the table or the file, then `loader reload` it") from exc
    out = Outcome(loaded=[f.name for f in batch], rows=sum(f.rows for f in batch),
                  inserted=sum(merged.inserted.values()), updated=sum(merged.updated.values()),
                  seconds=time.monotonic() - started, duplicates=duplicates)
    log.info("merged %d file(s) of %s: %d rows, %d inserted, %d updated in %.2fs", len(batch),
             dataset.name, out.rows, out.inserted, out.updated, out.seconds)
    if progress:
        for f in batch:
            progress(1, f.rows)
        progress(len(duplicates), 0)
    return out


def _without_duplicates(wh, batch):
    """The files of ``batch`` to merge, and the names of those whose content the manifest
    holds under another name (a replay under the same name is not a duplicate)."""
    known = wh.names_of([f.checksum for f in batch])
    fresh, duplicates = [], []
    for f in batch:
        names = known.get(f.checksum, set())
        if names and f.name not in names:
            log.warning("%s has the same content as %s, loaded already: archived, not merged",
                        f.name, min(names), extra={"event": "duplicate", "file": f.name})
            duplicates.append(f.name)
        else:
            fresh.append(f)
    return fresh, duplicates


def _guard(fn, *args):
    """Run a catalog query; a database failure there is a busy database."""
    try:
        return fn(*args)
    except duckdb.Error as exc:
        raise DatabaseBusy(f"{exc}") from exc


# -- the CLI's operations ---------------------------------------------------------


def wait_open(wh, loader_config, stop=None, on_wait=None):
    """Open the database, waiting with backoff while another process holds it."""
    backoff = Backoff(loader_config.retry_delay, 2.0, max(loader_config.retry_max_delay, loader_config.retry_delay))
    while True:
        try:
            return wh.open()
        except DatabaseBusy as exc:
            delay = backoff.next()
            if on_wait:
                on_wait(exc, delay, backoff.attempts)
            if stop is not None:
                if stop.wait(delay):
                    raise
            else:
                time.sleep(delay)


def resolve_paths(config, patterns):
    """Files named by ``patterns`` (paths or globs), grouped by task type, in seal order."""
    import glob

    found = {}
    for pattern in patterns:
        matches = sorted(glob.glob(pattern)) or ([pattern] if Path(pattern).exists() else [])
        if not matches:
            raise LoaderError(f"{pattern}: no such file")
        for m in matches:
            staged = StagedFile.parse(Path(m).name)
            if staged is None or not Path(m).is_file():
                raise LoaderError(f"{m}: not a staged file (<task_type>-<stamp>-<instance>-<seq>.parquet)")
            if staged.task_type not in config.datasets:
                raise LoaderError(f"{m}: task type {staged.task_type!r} is not in {config.datasets.source}")
            found.setdefault(staged.task_type, {})[Path(m).resolve()] = staged
    return {t: [p for p, _ in sorted(files.items(), key=lambda kv: kv[1])] for t, files in found.items()}


def settle_reloaded(config):
    """After a reload: staged or quarantined files go to the archive; archived ones stay."""
    moving = [config.staging_dir.resolve(), config.quarantine_dir.resolve()]

    def settle(path):
        path = Path(path).resolve()
        if any(path.is_relative_to(d) for d in moving):
            if path.is_relative_to(moving[1]):
                path.with_name(path.name + ".error.json").unlink(missing_ok=True)
            filing.archive(config.archive_dir, path)

    return settle


def reload(wh, config, groups, force=False, progress=None, stop=None):
    """Re-apply files by hand: a replay never rolls a newer row back unless ``force``."""
    from .warehouse import RELOAD

    out = Outcome()
    for task_type, paths in groups.items():
        out.add(load_files(wh, config.datasets[task_type], paths, config, mode=FORCE if force else RELOAD,
                           settle=settle_reloaded(config), stop=stop, progress=progress))
    return out


def rebuild(wh, config, task_types, progress=None, stop=None):
    """Replay the archive into fresh tables, one transaction per task type."""
    out = Outcome()
    for task_type in task_types:
        dataset = config.datasets[task_type]
        paths = filing.archived_files(config.archive_dir, task_type)
        wh.begin()
        try:
            wh.drop_task_type(task_type)
            result = load_files(wh, dataset, paths, config, mode=LOAD, transaction=False,
                                stop=stop, progress=progress)
            if result.stopped:
                raise LoaderError(f"rebuild of {task_type} stopped; the old table is kept")
            wh.commit()
        except FileRefused as refused:
            wh.rollback()
            raise LoaderError(f"rebuild of {task_type} rolled back, the old table is kept: {refused.error}") from None
        except BaseException:
            wh.rollback()
            raise
        out.add(result)
    return out
