"""The dead letter: refused rows with the reason and the Huey task id.

``data/deadletter/<task_type>/<task_type>-<yyyymmdd>-<instance>.jsonl``, one
JSON object per line: the row as the producer sent it, the reason, the task id,
the task type, the request parameters and when it was refused. Lines are
fsynced before the task is acknowledged, so a refused row is never lost. A
write that fails (disk full) is taken back whole and raised as ResourceError:
the task is not acknowledged and is written again later, once.
Rows of an unknown task type go to the folder ``_unknown_task_type``.
"""

import base64
import datetime as dt
import errno
import json
import math
import os
import stat
import threading
from pathlib import Path
from typing import NamedTuple

from duckstage.exceptions import ResourceError
from duckstage.staging import fsync_dir, utcnow

UNKNOWN = "_unknown_task_type"


class Refusal(NamedTuple):
    """One refused row: the row as it was sent, the reason in words, and its code (stager.exceptions)."""

    row: object
    reason: str
    code: str


def _jsonable(value):
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)  # NaN/inf are not JSON; keep what was sent, readably
    if isinstance(value, (dt.date, dt.datetime)):
        return value.isoformat()
    if isinstance(value, bytes):
        return {"base64": base64.b64encode(value).decode()}
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return repr(value)


class DeadLetter:
    def __init__(self, folder, instance, fsync=None):
        self.folder = Path(folder)
        self.instance = instance
        self.fsync = fsync or os.fsync
        self._lock = threading.Lock()

    def path_for(self, task_type, now=None):
        now = now or utcnow()
        return self.folder / task_type / f"{task_type}-{now:%Y%m%d}-{self.instance}.jsonl"

    def write(self, task_type, refusals, task_id, params=None, known=True):
        """Append ``refusals`` ([Refusal]) durably; return how many were written."""
        if not refusals:
            return 0
        folder = task_type if known else UNKNOWN
        now = utcnow()
        lines = []
        for refusal in refusals:
            record = {
                "task_id": task_id, "task_type": task_type, "reason": refusal.reason,
                "row": _jsonable(refusal.row), "params": _jsonable(params or {}),
                "refused_at": now.isoformat(),
            }
            lines.append(json.dumps(record, ensure_ascii=False, allow_nan=False))
        path = self.path_for(folder, now)
        data = ("\n".join(lines) + "\n").encode("utf-8")
        with self._lock:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                self._append(path, data)
            except OSError as exc:
                raise ResourceError(f"cannot write the dead letter {path.name}: "
                                    f"{errno.errorcode.get(exc.errno, '')} {exc}") from exc
        return len(lines)

    def _append(self, path, data):
        """Append ``data`` and fsync it, or leave the file as it was.

        Unbuffered on purpose: a buffered file that failed to flush would try
        again when closed, after the take-back below.
        """
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            end = os.lseek(fd, 0, os.SEEK_END)
            if end and os.pread(fd, 1, end - 1) != b"\n":
                # A line cut short by a crash: end it, so these records start lines of their own.
                data = b"\n" + data
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                self.fsync(fd)
                if not end:
                    fsync_dir(path.parent, self.fsync)  # a new file's name must survive a power loss too
            except OSError:
                # Take back whatever part of the write reached the file: the task is
                # not acknowledged and writes these rows again, so a line left here
                # would be a second copy of them.
                os.ftruncate(fd, end)
                raise
        finally:
            os.close(fd)


def is_regular(path):
    """True for a regular file itself (no link, FIFO or device); False when it is gone."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except FileNotFoundError:
        return False


def read_records(folder):
    """Every dead-letter record under ``folder`` not yet requeued (for status, tests and replay)."""
    for path in sorted(Path(folder).rglob("*.jsonl")):
        if "replayed" in path.relative_to(folder).parts or not is_regular(path):
            continue
        with open(path, encoding="utf-8") as f:
            for line in f:
                if not line.strip():
                    continue
                try:
                    yield json.loads(line)
                except json.JSONDecodeError:
                    # A line cut short by a crash: its task was not acknowledged,
                    # ran again, and its rows were written again in full.
                    continue


class NotADeadLetter(ValueError):
    """A file given to requeue that is not a dead-letter file: nothing is enqueued or moved."""


def requeue(path, enqueue, done_folder=None, check_task_type=None):
    """Enqueue the rows of a dead-letter file again, after a fix; return (tasks, rows).

    Rows are grouped back into one task per original task id and task type,
    with the original request parameters. The file then moves to
    ``replayed/`` beside it, so it is not requeued twice by mistake. Rows that
    are still bad come back to the dead letter with their reason. A file that
    is not a dead letter (another suffix, a line that is not a record) raises
    NotADeadLetter before anything is enqueued or moved; so does
    ``check_task_type(task_type, context)`` (raising UnknownTaskType) for a
    task type that is still unknown, e.g. one in ``_unknown_task_type/``.
    """
    path = Path(path)
    if path.suffix != ".jsonl" or "replayed" in path.parts:
        raise NotADeadLetter(f"{path}: not a dead-letter file (<task_type>-<yyyymmdd>-<instance>.jsonl, "
                             "not yet in replayed/)")
    if not is_regular(path):  # checked before any open: a FIFO would block it
        raise NotADeadLetter(f"{path}: not a regular file (a dead letter is one the stager wrote)")
    groups = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # cut short by a crash; written again in full by the re-run
            if not isinstance(rec, dict) or not {"task_type", "row", "reason"} <= set(rec):
                raise NotADeadLetter(f"{path}: line {n} is not a dead-letter record")
            key = (rec.get("task_type") or "", rec.get("task_id"))
            group = groups.setdefault(key, {"params": rec.get("params") or {}, "rows": []})
            group["rows"].append(rec.get("row") or {})
    if not groups:
        raise NotADeadLetter(f"{path}: holds no dead-letter records")
    if check_task_type is not None:
        for task_type, _task_id in groups:
            check_task_type(task_type, context=f"{path} (fix its task_type, or declare it, then requeue)")
    rows = 0
    for (task_type, _task_id), group in groups.items():
        params = {k: v for k, v in group["params"].items() if k not in ("task_type", "data")}
        enqueue(task_type, group["rows"], **params)
        rows += len(group["rows"])
    done = Path(done_folder) if done_folder else path.parent / "replayed"
    done.mkdir(parents=True, exist_ok=True)
    os.replace(path, done / path.name)
    return len(groups), rows
