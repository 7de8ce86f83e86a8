"""The staging format: file names, footer metadata, and the atomic seal.

This module is the contract between the stager and the loader::

    data/staging/<task_type>/<task_type>-<UTC timestamp>-<instance>-<seq>.parquet
    data/staging/<task_type>/.<name>.parquet.tmp      being written; never loaded

Names sort in seal order. ``StagedFile.parse`` is the one place that splits a
name. A sealed file carries its own description in the Parquet footer
(``duckstage.*`` keys), so ``duckdb -c "from parquet_kv_metadata('f.parquet')"``
explains it with nothing else at hand.
"""

import datetime as dt
import errno
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from .exceptions import ResourceError

SUFFIX = ".parquet"
TMP_SUFFIX = ".tmp"
FOOTER_PREFIX = "duckstage."
FORMAT_VERSION = "1"
_TS_FORMAT = "%Y%m%dT%H%M%S%fZ"
# Matched against the whole name (fullmatch: ``$`` would accept a final newline), ASCII
# digits only (``\d`` alone takes any script's digits).
_NAME_RE = re.compile(
    r"(?P<task_type>[a-z][a-z0-9_]*)-(?P<stamp>\d{8}T\d{12}Z)-(?P<instance>[a-z0-9]+)-(?P<seq>\d{6,})\.parquet",
    re.ASCII,
)


def utcnow():
    """The current time in UTC, timezone-aware: the one clock both processes stamp things with."""
    return dt.datetime.now(dt.timezone.utc)


@dataclass(frozen=True, order=True)
class StagedFile:
    """A sealed file's identity, parsed from its name. Orders in seal order."""

    stamp: str
    instance: str
    seq: int
    task_type: str

    @classmethod
    def parse(cls, name):
        """Return a StagedFile for a sealed file name, or None for anything else."""
        m = _NAME_RE.fullmatch(Path(name).name)
        if not m:
            return None
        return cls(m["stamp"], m["instance"], int(m["seq"]), m["task_type"])

    @classmethod
    def new(cls, task_type, instance, seq, now=None):
        now = now or utcnow()
        return cls(now.strftime(_TS_FORMAT), instance, seq, task_type)

    @property
    def name(self):
        return f"{self.task_type}-{self.stamp}-{self.instance}-{self.seq:06d}{SUFFIX}"

    @property
    def created_at(self):
        return dt.datetime.strptime(self.stamp, _TS_FORMAT).replace(tzinfo=dt.timezone.utc)

    @property
    def day(self):
        """The archive sub-folder, yyyy-mm-dd of the seal time (UTC)."""
        return self.created_at.strftime("%Y-%m-%d")


def tmp_path(final):
    final = Path(final)
    return final.with_name("." + final.name + TMP_SUFFIX)


def is_temporary(path):
    name = Path(path).name
    return name.startswith(".") and name.endswith(TMP_SUFFIX)


def sealed_files(folder):
    """Sealed files directly in ``folder``, in seal order."""
    try:
        entries = os.listdir(folder)
    except FileNotFoundError:
        return []
    found = [(sf, Path(folder) / n) for n in entries if (sf := StagedFile.parse(n))]
    return [p for _, p in sorted(found)]


def remove_leftovers(folder):
    """Delete temporary files a crash left behind; they are never sealed as they are."""
    removed = []
    for root, _dirs, files in os.walk(folder):
        for n in files:
            if is_temporary(n):
                path = Path(root) / n
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed


def footer_metadata(dataset, rows, task_ids, instance, created_at, schema_version):
    """The key/value metadata every sealed file carries (all values are strings)."""
    meta = {
        "format_version": FORMAT_VERSION,
        "task_type": dataset.name,
        "primary_key": json.dumps(list(dataset.primary_key)),
        "version_order": json.dumps(list(dataset.version_order)),
        "schema_version": str(schema_version),
        "row_count": str(rows),
        "task_ids": json.dumps(sorted(task_ids)),
        "instance": instance,
        "created_at": created_at.isoformat(),
    }
    return {FOOTER_PREFIX + k: v for k, v in meta.items()}


def read_footer(path):
    """The ``duckstage.*`` footer of a staged file, prefix removed, JSON decoded."""
    meta = pq.read_schema(path).metadata or {}
    out = {}
    for k, v in meta.items():
        key = k.decode()
        if key.startswith(FOOTER_PREFIX):
            value = v.decode()
            key = key[len(FOOTER_PREFIX):]
            out[key] = json.loads(value) if key in ("primary_key", "version_order", "task_ids") else value
    return out


def fsync_dir(folder, fsync=None):
    fsync = fsync or os.fsync
    fd = os.open(folder, os.O_RDONLY)
    try:
        fsync(fd)
    finally:
        os.close(fd)


def seal(table, final, metadata, fsync=None):
    """Write ``table`` to ``final`` atomically: temporary file, fsync, rename, fsync the folder.

    On any failure the temporary file is removed and nothing is sealed; an
    OSError (ENOSPC, EIO, ...) comes back as ResourceError so the caller pauses
    and retries with the same rows.
    """
    fsync = fsync or os.fsync
    final = Path(final)
    tmp = tmp_path(final)
    schema = table.schema.with_metadata({**(table.schema.metadata or {}), **metadata})
    table = table.replace_schema_metadata(schema.metadata)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)  # a full disk can refuse a folder too
        with open(tmp, "wb") as f:
            # One row group per file where it fits: smaller and faster to write
            # and to read back than a group per task.
            pq.write_table(table, f, compression="zstd", row_group_size=max(1, len(table)),
                           write_statistics=True)
            f.flush()
            fsync(f.fileno())
        os.rename(tmp, final)
        fsync_dir(final.parent, fsync)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if final.exists() and not _is_complete(final):
            final.unlink(missing_ok=True)
        raise ResourceError(f"cannot seal {final.name}: {errno.errorcode.get(exc.errno, '')} {exc}") from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return final


def _is_complete(path):
    try:
        pq.read_metadata(path)
        return True
    except (OSError, pa.ArrowException):
        return False
