"""Where files go once the warehouse has answered: archive or quarantine.

A directory is a state and a file changes state by an atomic rename, then the
folder is fsynced, so a crash leaves each file in exactly one place. The move
happens only after the transaction that decided it has committed; a file that
is merged but not yet archived is recognised by the manifest next time.
"""

import datetime as dt
import json
import logging
import os
import shutil
from pathlib import Path

from stager.staging import StagedFile, fsync_dir

log = logging.getLogger(__name__)


def _move(src, folder):
    folder.mkdir(parents=True, exist_ok=True)
    dest = folder / src.name
    try:
        os.replace(src, dest)
    except FileNotFoundError:
        # Someone else (a concurrent `loader reload`) moved it first.
        return None
    fsync_dir(folder)
    fsync_dir(src.parent)
    return dest


def copy_in(src, dest):
    """Copy ``src`` (a link is followed) to ``dest`` atomically: temporary name, fsync, rename.

    For files that are not ours to move (outside data/, or what a link points to).
    """
    from .discovery import open_regular

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name("." + dest.name + ".tmp")
    try:
        with open_regular(src, follow=True) as f, open(tmp, "wb") as out:
            shutil.copyfileobj(f, out, 1 << 20)
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
    return _move(path, archive_path(archive_dir, path).parent)


def quarantine(quarantine_dir, task_type, path, refused, now=None):
    """Move a refused file to ``quarantine/<task_type>/`` with ``<name>.error.json`` beside it."""
    path = Path(path)
    folder = Path(quarantine_dir) / task_type
    folder.mkdir(parents=True, exist_ok=True)
    report = {
        "file": path.name,
        "from": str(path),
        "task_type": task_type,
        "error": refused.error,
        "what_to_do": refused.action,
        "quarantined_at": (now or dt.datetime.now(dt.timezone.utc)).isoformat(),
    }
    report_path = folder / (path.name + ".error.json")
    tmp = report_path.with_name("." + report_path.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, report_path)
    dest = _move(path, folder)
    log.warning("quarantined %s: %s", path.name, refused.error)
    return dest


def quarantined(quarantine_dir):
    """Error reports of quarantined files, per task type."""
    out = {}
    root = Path(quarantine_dir)
    if not root.is_dir():
        return out
    for report in sorted(root.glob("*/*.error.json")):
        try:
            body = json.loads(report.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            body = {"file": report.name[: -len(".error.json")], "error": "unreadable error report"}
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
    now = now or dt.datetime.now(dt.timezone.utc)
    cutoff = (now - dt.timedelta(days=retention_days)).strftime("%Y-%m-%d")
    removed = []
    for day in Path(archive_dir).glob("*/*"):
        if day.is_dir() and len(day.name) == 10 and day.name < cutoff:
            shutil.rmtree(day)
            removed.append(day)
    return removed
