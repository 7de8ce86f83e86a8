"""Finding sealed files and reading what they say about themselves.

The scan of ``staging/`` is what the loader trusts; the watchdog observer only
wakes it up early (events can be missed on network and container file
systems). Temporary files never parse as sealed names, so they are never
seen here; quarantine is a different folder, so neither are refused files.
"""

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from watchdog.events import FileSystemEventHandler
from watchdog.observers import Observer

from stager import staging
from stager.staging import StagedFile

from .exceptions import FileRefused

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Inspected:
    """A sealed file, checked and described, ready to be merged."""

    path: Path
    staged: StagedFile
    size: int
    checksum: str
    rows: int
    columns: dict  # column name -> DuckDB type name, in file order

    @property
    def name(self):
        return self.path.name


def scan(staging_dir, task_types):
    """Sealed files waiting in ``staging/<task_type>/``, per task type, in seal order.

    Only the folders of known task types are read; a folder for a task type
    this loader does not know is reported by ``unknown_folders``.
    """
    return {t: staging.sealed_files(Path(staging_dir) / t) for t in task_types}


def unknown_folders(staging_dir, task_types):
    """Staging sub-folders holding sealed files of a task type not in datasets.yaml."""
    root = Path(staging_dir)
    if not root.is_dir():
        return {}
    return {
        p.name: len(staging.sealed_files(p))
        for p in sorted(root.iterdir())
        if p.is_dir() and p.name not in task_types and staging.sealed_files(p)
    }


def checksum(path):
    with open(path, "rb") as f:
        return "sha256:" + hashlib.file_digest(f, "sha256").hexdigest()


def inspect(path, dataset):
    """Check a sealed file against its dataset; raise FileRefused if it cannot be merged."""
    path = Path(path)
    staged = StagedFile.parse(path.name)
    if staged is None:
        raise FileRefused(f"{path.name} is not a sealed staged file name",
                          "rename it <task_type>-<stamp>-<instance>-<seq>.parquet, or remove it")
    if staged.task_type != dataset.name:
        raise FileRefused(
            f"file name says task type {staged.task_type!r} but it is in the {dataset.name!r} folder",
            f"move it to staging/{staged.task_type}/ if that is right, then `loader reload` it")
    try:
        meta = pq.read_metadata(path)
        schema = meta.schema.to_arrow_schema()
        footer = staging.read_footer(path)
    except (OSError, pa.ArrowException, ValueError) as exc:
        raise FileRefused(f"unreadable Parquet file: {exc}",
                          "the file is damaged; fetch the data again (the producer's task ids are lost "
                          "with the footer) or restore it from a copy, then `loader reload` it") from None
    declared = footer.get("task_type")
    if declared is not None and declared != dataset.name:
        raise FileRefused(f"footer says task type {declared!r}, the name says {dataset.name!r}",
                          "move it to the folder of its footer's task type and `loader reload` it")
    columns = {f.name: duckdb_type(f.type) for f in schema}
    missing = [c for c in dataset.primary_key if c not in columns]
    if missing:
        raise FileRefused(f"primary-key column(s) {', '.join(missing)} missing from the file",
                          "the file cannot be merged by key; fix the producer and fetch the data again")
    return Inspected(path, staged, path.stat().st_size, checksum(path), meta.num_rows, columns)


_ARROW_TO_DUCKDB = {
    pa.string(): "VARCHAR", pa.large_string(): "VARCHAR", pa.float64(): "DOUBLE",
    pa.float32(): "FLOAT", pa.int64(): "BIGINT", pa.int32(): "INTEGER", pa.int16(): "SMALLINT",
    pa.int8(): "TINYINT", pa.uint64(): "UBIGINT", pa.uint32(): "UINTEGER", pa.uint16(): "USMALLINT",
    pa.uint8(): "UTINYINT", pa.bool_(): "BOOLEAN", pa.date32(): "DATE", pa.binary(): "BLOB",
    pa.large_binary(): "BLOB",
}
_TS_UNITS = {"us": "TIMESTAMP", "ns": "TIMESTAMP_NS", "ms": "TIMESTAMP_MS", "s": "TIMESTAMP_S"}


def duckdb_type(arrow_type):
    """The type DuckDB's read_parquet gives a column of this Arrow type."""
    if arrow_type in _ARROW_TO_DUCKDB:
        return _ARROW_TO_DUCKDB[arrow_type]
    if pa.types.is_timestamp(arrow_type):
        return "TIMESTAMP WITH TIME ZONE" if arrow_type.tz else _TS_UNITS[arrow_type.unit]
    if pa.types.is_decimal(arrow_type):
        return f"DECIMAL({arrow_type.precision},{arrow_type.scale})"
    return str(arrow_type).upper()


class _Wake(FileSystemEventHandler):
    def __init__(self, wake):
        self.wake = wake

    def _maybe(self, path):
        if StagedFile.parse(Path(path).name):
            self.wake.set()

    def on_created(self, event):
        self._maybe(event.src_path)

    def on_moved(self, event):
        self._maybe(event.dest_path)


class Watcher:
    """A watchdog observer on ``staging/`` that sets ``wake`` when a file is sealed."""

    def __init__(self, staging_dir, wake):
        self.staging_dir = Path(staging_dir)
        self.staging_dir.mkdir(parents=True, exist_ok=True)
        self.observer = Observer()
        self.observer.schedule(_Wake(wake), str(self.staging_dir), recursive=True)

    def start(self):
        self.observer.start()

    def stop(self, timeout=5):
        self.observer.stop()
        self.observer.join(timeout)
