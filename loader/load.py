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
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import duckdb

from duckstage.backoff import Backoff
from duckstage.staging import StagedFile, utcnow

from . import filing
from .discovery import checksum, inspect, kind, open_regular
from .exceptions import CHECKSUM_MISMATCH, TABLE_REFUSED, VANISHED, DatabaseBusy, FileRefused, LoaderError
from .warehouse import FORCE, LOAD, MANIFEST, check_columns, is_busy

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    """What a load did, for status and for the person at the CLI."""

    loaded: list = field(default_factory=list)       # file names merged
    skipped: list = field(default_factory=list)      # already in the manifest: archived, not merged
    quarantined: list = field(default_factory=list)  # file names refused
    duplicates: list = field(default_factory=list)   # content loaded under another name: archived, not merged
    expired: list = field(default_factory=list)      # rebuild: listed, but removed by archive retention
    reasons: Counter = field(default_factory=Counter)  # quarantined files by reason code
    rows: int = 0          # rows read from the merged files
    inserted: int = 0
    updated: int = 0
    seconds: float = 0.0   # time spent in merge transactions
    stopped: bool = False  # a stop request left files for later

    def add(self, other):
        for name in ("loaded", "skipped", "quarantined", "duplicates", "expired"):
            getattr(self, name).extend(getattr(other, name))
        self.reasons.update(other.reasons)
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
    everything (rebuild): nothing is moved, and a file that cannot be merged
    raises FileRefused naming it, instead of going to quarantine.
    Raises DatabaseBusy when the database itself fails: nothing is moved then.
    """
    out = Outcome()
    settle = _tolerant(settle or (lambda p: None))
    progress = progress or (lambda files, rows: None)

    def refuse(path, refused):
        if not transaction:
            raise refused.naming(Path(path).name)
        filing.quarantine(config.quarantine_dir, dataset.name, path, refused)
        out.quarantined.append(Path(path).name)
        out.reasons[refused.reason] += 1
        progress(1, 0)

    files = []
    for path in paths:
        try:
            files.append(inspect(path, dataset))
        except FileRefused as refused:
            if mode == LOAD and transaction and filing.still_arriving(path):
                continue  # being copied in, not damaged: a later step takes it whole (reloads are asked for)
            refuse(path, refused)
        except FileNotFoundError:
            if not transaction:
                raise FileRefused(f"{Path(path).name!r} vanished while it was being replayed",
                                  "find out what removed it, restore it and run the rebuild again",
                                  reason=VANISHED) from None
            continue  # moved by a concurrent reload since the scan
        progress(0, 0)  # a file read through: a sign of life for the step watch
    files.sort(key=lambda f: f.staged)

    if mode == LOAD and files:
        done = _guard(wh, "read the manifest in", wh.loaded, [f.name for f in files])
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
                    "compare it with the archived copy; `loader reload --force` it if it must replace that one",
                    reason=CHECKSUM_MISMATCH))
        files = fresh

    table = _guard(wh, "read the table columns in", wh.table_columns, dataset.name) \
        or {c.name: c.type for c in dataset.all_columns}
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
            out.add(_load_batch(wh, dataset, batch, planned, mode, settle, refuse, progress, stop))
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


def _load_batch(wh, dataset, batch, planned, mode, settle, refuse, progress, stop=None):
    try:
        with wh.writing(dataset.name, stop):
            wh.begin()
            try:
                out = _merge(wh, dataset, batch, planned, mode, progress=None, raise_refused=True)
                try:
                    wh.commit()
                except duckdb.Error as exc:
                    # The data was accepted; writing it failed (disk full, I/O error, a
                    # concurrent writer on a DuckLake): retry later with backoff, the files
                    # stay in staging/.
                    raise DatabaseBusy(wh.database, "commit to", exc) from exc
            except BaseException:
                wh.rollback()
                raise
    except FileRefused as refused:
        if len(batch) > 1:
            # Find the file the table refuses: each alone, in seal order.
            out = Outcome()
            for f in batch:
                out.add(_load_batch(wh, dataset, [f], planned, mode, settle, refuse, progress, stop))
            return out
        refuse(batch[0].path, refused)
        return Outcome(quarantined=[])  # refuse() already counted it
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
            raise DatabaseBusy(wh.database, "merge into", exc) from exc
        names = ", ".join(f.name for f in batch)
        raise FileRefused(f"table {dataset.name} refused {names}: {exc}".replace("\n", " "),
                          "read the error; fix the table or the file, then `loader reload` it",
                          reason=TABLE_REFUSED) from exc
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


def _guard(wh, doing, fn, *args):
    """Run a catalog query; a database failure there is a busy database."""
    try:
        return fn(*args)
    except duckdb.Error as exc:
        raise DatabaseBusy(wh.database, doing, exc) from exc


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
    """Files named by ``patterns`` (paths or globs), grouped by task type, in seal order.

    Paths are taken as named, never resolved: a symbolic link stays a link, so
    that nothing it points to is moved (``reload`` copies its target in).
    """
    found = {}
    for pattern in patterns:
        matches = sorted(glob.glob(pattern)) or ([pattern] if os.path.lexists(pattern) else [])
        if not matches:
            raise LoaderError(f"{pattern}: no such file")
        for m in matches:
            path = Path(os.path.abspath(m))
            staged = StagedFile.parse(path.name)
            if staged is None:
                raise LoaderError(f"{m!r}: not a staged file (<task_type>-<stamp>-<instance>-<seq>.parquet)")
            problem = _not_regular(path)
            if problem:
                raise LoaderError(f"{m}: not a regular file ({problem})")
            if staged.task_type not in config.datasets:
                raise LoaderError(f"{m}: task type {staged.task_type!r} is not in {config.datasets.source}")
            found.setdefault(staged.task_type, {})[path] = staged
    return {t: [p for p, _ in sorted(files.items(), key=lambda kv: kv[1])] for t, files in found.items()}


def _not_regular(path):
    """Why what ``path`` points to is not a regular file to read, or None if it is one."""
    try:
        mode = os.stat(path).st_mode
        why = kind(mode)
    except OSError as exc:
        mode, why = None, exc.strerror.lower()
    if mode is not None and stat.S_ISREG(mode):
        return None
    return f"a symbolic link to {os.readlink(path)}: {why}" if path.is_symlink() else why


def _within(path, *folders):
    """True if ``path`` (its folder resolved, not the path itself) is inside one of ``folders``."""
    real = Path(os.path.realpath(path.parent)) / path.name
    return any(real.is_relative_to(os.path.realpath(folder)) for folder in folders)


def take_in(config, path):
    """The path to reload ``path`` from, copying it into the archive when it is not ours to move.

    A regular file in staging/, quarantine/ or archive/ is reloaded where it
    is. Anything else (a file outside data/, or a symbolic link anywhere) is
    copied to where the archive keeps that name, and reloaded from there: the
    original is never moved, renamed or deleted, and a rebuild can replay the
    copy. An archived link at that place is replaced by the copy.
    """
    if not path.is_symlink() and _within(path, config.staging_dir, config.quarantine_dir, config.archive_dir):
        return path
    dest = filing.archive_path(config.archive_dir, path)
    try:
        if os.path.lexists(dest) and not dest.is_symlink():
            with open_regular(dest) as ours, open_regular(path, follow=True) as theirs:
                if checksum(ours) == checksum(theirs):
                    return dest
            raise LoaderError(f"{path}: a different file of that name is archived at {dest}; rename one"
                              " of them (<task_type>-<stamp>-<instance>-<seq>.parquet) to keep both")
        filing.copy_in(path, dest)
    except (OSError, FileRefused) as exc:
        raise LoaderError(f"{path}: cannot copy it into {dest.parent}: {exc}") from None
    log.info("copied %s into %s to reload it", path, dest)
    return dest


def settle_reloaded(config, origins=None):
    """After a reload: staged or quarantined files go to the archive; archived ones stay.

    ``origins`` maps a copy made by ``take_in`` to the path the person named:
    once the copy is loaded, a link in staging/ or quarantine/ it came from goes
    (the link only; what it points to is left alone).
    """
    moving = (config.staging_dir, config.quarantine_dir)
    origins = origins or {}

    def settle(path):
        path = Path(path)
        origin = origins.get(path, path)
        if origin != path:
            if origin.is_symlink() and _within(origin, *moving):
                _forget(config, origin)
            return
        if _within(path, *moving):
            _forget_report(config, path)
            filing.archive(config.archive_dir, path)

    return settle


def _forget_report(config, path):
    if _within(path, config.quarantine_dir):
        path.with_name(path.name + ".error.json").unlink(missing_ok=True)


def _forget(config, link):
    _forget_report(config, link)
    link.unlink(missing_ok=True)


def reload(wh, config, groups, force=False, progress=None, stop=None):
    """Re-apply files by hand: a replay never rolls a newer row back unless ``force``."""
    from .warehouse import RELOAD

    taken = {t: {take_in(config, p): p for p in paths} for t, paths in groups.items()}
    out = Outcome()
    for task_type, origins in taken.items():
        out.add(load_files(wh, config.datasets[task_type], list(origins), config,
                           mode=FORCE if force else RELOAD, settle=settle_reloaded(config, origins),
                           stop=stop, progress=progress))
    return out


def archived(archive_dir, task_type):
    """Every entry in ``archive/<task_type>/<day>/`` by name, whatever its name or type."""
    found = {}
    try:
        days = sorted(os.scandir(Path(archive_dir) / task_type), key=lambda e: e.name)
    except FileNotFoundError:
        return found
    for day in days:
        if day.is_dir(follow_symlinks=False):
            for name in sorted(os.listdir(day.path)):
                found.setdefault(name, Path(day.path) / name)
    return found


def _expired(name, retention_days, now=None):
    """True if archive retention has removed the day folder of the file ``name``."""
    staged = StagedFile.parse(name)
    if not retention_days or staged is None:
        return False
    now = now or utcnow()
    return staged.day < (now - dt.timedelta(days=retention_days)).strftime("%Y-%m-%d")


def rebuild(wh, config, task_types, progress=None, stop=None):
    """Replay the archive into fresh tables, one transaction per task type.

    Every file the manifest lists is replayed, or none is: a listed file that
    is missing from the archive (unless archive retention removed it: counted
    in ``expired``), unreadable, or refused stops the task type's rebuild with
    LoaderError naming it, and its old table and manifest stay. Archived files
    the manifest does not list (copies taken in, duplicates) are replayed too.
    """
    out = Outcome()
    for task_type in task_types:
        dataset = config.datasets[task_type]
        found = archived(config.archive_dir, task_type)
        listed = _guard(wh, "read the manifest in", wh.files, task_type)
        gone = [n for n in listed if n not in found]
        expired = [n for n in gone if _expired(n, config.loader.archive_retention_days)]
        missing = [n for n in gone if n not in expired]
        if missing:
            shown = ", ".join(repr(n) for n in missing[:3]) + (" ..." if len(missing) > 3 else "")
            raise LoaderError(
                f"rebuild of {task_type} not started, the old table is kept: {len(missing)} file(s) the manifest"
                f" lists are not in {Path(config.archive_dir) / task_type}: {shown}; restore them (or delete"
                f" their rows from {MANIFEST} to accept losing their rows) and run it again")
        wanted = set(listed)
        paths = [p for n, p in found.items() if n in wanted or StagedFile.parse(n)]
        with wh.writing(task_type, stop):
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
                raise LoaderError(f"rebuild of {task_type} rolled back, the old table is kept: {refused.error}"
                                  f" ({refused.action})") from None
            except BaseException:
                wh.rollback()
                raise
        if expired:
            log.warning("rebuild of %s: %d file(s) the manifest listed were removed by archive retention"
                        " and are not in the rebuilt table", task_type, len(expired))
        result.expired = expired
        out.add(result)
    return out
