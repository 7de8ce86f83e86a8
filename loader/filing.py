"""Where files go once the warehouse has answered: archive or quarantine.

A directory is a state and a file changes state by an atomic rename, then the
folder is fsynced, so a crash leaves each file in exactly one place. The move
happens only after the transaction that decided it has committed; a file that
is merged but not yet archived is recognised by the manifest next time.

``staging/`` may sit on another file system than ``archive/`` (a fast disk for
staging, a large one for the archive), where no rename crosses. There a move
is a copy under a temporary name in the destination folder, fsync, rename,
fsync of the folder, and only then the removal of the source. A crash before
the rename leaves a temporary file, which nothing takes for an archived file
and the next attempt replaces; a crash after it leaves the file in both
places, and the manifest, which says it is loaded, has the next step finish
the move without merging it again.

A move that fails (archive/ not writable, disk full) raises FilingFailed, so
the loader pauses as for a busy database instead of spinning on it.
"""

import datetime as dt
import errno
import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path

from duckstage.staging import SUFFIX, StagedFile, fsync_dir, tmp_path, utcnow

from .exceptions import FileRefused, FilingFailed

log = logging.getLogger(__name__)

REPORT_SUFFIX = ".error.json"
COPY_CHUNK = 1 << 20
# A file that cannot be read and changed this recently is taken to be still
# arriving (copied into staging/ by hand, not sealed by a rename) and is left
# for a later step; one that has sat still this long is damaged.
ARRIVING_SECONDS = 5.0
_PARQUET_END = b"PAR1"  # the last bytes of every complete Parquet file


def _name_max(folder):
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255


def _fits(folder, name):
    return len(os.fsencode(name)) <= _name_max(folder)


def _shortened(name):
    """A short stand-in for a name too long for the files that go with it.

    ``~`` never appears in a sealed name, so the stand-in never passes for one.
    """
    digest = hashlib.sha256(name.encode()).hexdigest()[:16]
    stem = name[: -len(SUFFIX)] if name.endswith(SUFFIX) else name
    return f"{stem[:96]}~{digest}{SUFFIX}"


def _temporary(dest):
    """``.<name>.tmp`` beside ``dest``, shortened where the file system's name limit needs it."""
    tmp = tmp_path(dest)
    if not _fits(dest.parent, tmp.name):
        tmp = tmp_path(dest.with_name(_shortened(dest.name)))
    return tmp


def _move(src, dest):
    """Move ``src`` to ``dest``; None if ``src`` is gone (a concurrent `loader reload` moved it first)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(src, dest)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        return _copy_across(src, dest)
    fsync_dir(dest.parent)
    fsync_dir(src.parent)
    return dest


def _copy_across(src, dest):
    """Move ``src`` to ``dest`` on another file system (see the module docstring)."""
    try:
        copy_in(src, dest)
    except FileNotFoundError:
        if os.path.lexists(src):
            raise
        return None  # a concurrent `loader reload` moved it first
    src.unlink(missing_ok=True)
    fsync_dir(src.parent)
    return dest


def copy_in(src, dest):
    """Copy ``src`` (a link is followed) to ``dest`` atomically: temporary name, fsync, rename.

    For files that are not ours to move (outside data/, or what a link points to),
    and for the first half of a move across file systems.
    """
    from .discovery import open_regular

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary(dest)
    try:
        with open_regular(src, follow=True) as f, open(tmp, "wb") as out:
            shutil.copyfileobj(f, out, COPY_CHUNK)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(dest.parent)
    return dest


def archive_path(archive_dir, path):
    staged = StagedFile.parse(Path(path).name)
    return Path(archive_dir) / staged.task_type / staged.day / Path(path).name


def archive(archive_dir, path):
    """Move a loaded file to ``archive/<task_type>/<yyyy-mm-dd>/`` (its seal day, UTC)."""
    path = Path(path)
    try:
        return _move(path, archive_path(archive_dir, path))
    except OSError as exc:
        raise FilingFailed("archive", path, exc) from exc


def quarantined_name(quarantine_dir, task_type, name):
    """The name a refused file ``name`` has in ``quarantine/<task_type>/``.

    Its own, unless that is too long for its error report's temporary name on
    this file system; then a shortened one (the report keeps the original).
    """
    longest = tmp_path(Path(name + REPORT_SUFFIX)).name
    return name if _fits(Path(quarantine_dir) / task_type, longest) else _shortened(name)


def quarantine(quarantine_dir, task_type, path, refused, now=None):
    """Move a refused file to ``quarantine/<task_type>/`` with ``<name>.error.json`` beside it."""
    path = Path(path)
    folder = Path(quarantine_dir) / task_type
    try:
        folder.mkdir(parents=True, exist_ok=True)
        kept_as = quarantined_name(quarantine_dir, task_type, path.name)
        report = {
            "file": path.name,
            "from": str(path),
            "task_type": task_type,
            "error": refused.error,
            "reason": refused.reason,
            "what_to_do": refused.action,
            "quarantined_at": (now or utcnow()).isoformat(),
        }
        if kept_as != path.name:
            report["quarantined_as"] = kept_as
            report["what_to_do"] += (f" (kept as {kept_as}: its own name is too long for its error report here;"
                                     " give it back that name when you move it back to staging/)")
        report_file = folder / (kept_as + REPORT_SUFFIX)
        tmp = tmp_path(report_file)
        tmp.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        os.replace(tmp, report_file)
        dest = _move(path, folder / kept_as)
    except OSError as exc:
        raise FilingFailed("quarantine", path, exc) from exc
    log.warning("quarantined %s: %s", path.name, refused.error)
    return dest


def still_arriving(path, now=None):
    """True if ``path`` looks like a file still being written: incomplete and changed moments ago.

    Asked only of a file that cannot be read, before it is quarantined as damaged.
    """
    from .discovery import open_regular

    now = time.time() if now is None else now
    try:
        with open_regular(path) as f:
            st = os.fstat(f.fileno())
            if now - st.st_mtime >= ARRIVING_SECONDS:
                return False
            return st.st_size < len(_PARQUET_END) or \
                os.pread(f.fileno(), len(_PARQUET_END), st.st_size - len(_PARQUET_END)) != _PARQUET_END
    except (OSError, FileRefused):  # gone, or not a regular file: nothing is arriving there
        return False


def quarantined(quarantine_dir):
    """Error reports of quarantined files, per task type."""
    out = {}
    root = Path(quarantine_dir)
    if not root.is_dir():
        return out
    for report in sorted(root.glob("*/*" + REPORT_SUFFIX)):
        try:
            body = json.loads(report.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            body = {"file": report.name[: -len(REPORT_SUFFIX)], "error": "unreadable error report"}
        out.setdefault(report.parent.name, []).append(body)
    return out


def archived_files(archive_dir, task_type):
    """Every archived file of a task type, in seal order."""
    folder = Path(archive_dir) / task_type
    found = [(sf, p) for p in folder.glob("*/*.parquet") if (sf := StagedFile.parse(p.name))]
    return [p for _, p in sorted(found)]


def sweep_archive(archive_dir, retention_days, now=None):
    """Delete archive day folders older than ``retention_days`` (0 keeps them forever)."""
    if not retention_days:
        return []
    now = now or utcnow()
    cutoff = (now - dt.timedelta(days=retention_days)).strftime("%Y-%m-%d")
    removed = []
    for day in Path(archive_dir).glob("*/*"):
        if day.is_dir() and len(day.name) == 10 and day.name < cutoff:
            shutil.rmtree(day)
            removed.append(day)
    return removed
