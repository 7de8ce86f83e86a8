"""Finding sealed files and reading what they say about themselves.

The scan of ``staging/`` is what the loader trusts; the watchdog observer only
wakes it up early (events can be missed on network and container file
systems). Temporary files never parse as sealed names, so they are never
seen here; quarantine is a different folder, so neither are refused files.

``staging/`` is a folder people, scripts and broken disks can write into, so
the loader takes in only regular files with full sealed names, and reads
nothing it has not checked: a symbolic link, a FIFO or a folder under a sealed
name is refused before it is opened (and quarantined as itself, never what it
points to); a footer is measured before it is read. Whatever else is there is
listed by ``not_staged``, so nothing in ``staging/`` goes unseen.
"""

import errno
import hashlib
import logging
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from watchdog.events import FileSystemEventHandler
from watchdog.observers import Observer

from duckstage import staging
from duckstage.datasets import LOADER_PREFIX, LOADER_RESERVED, reserved_by_loader
from duckstage.staging import StagedFile

from .exceptions import MISSING_KEY, NOT_REGULAR, RESERVED_COLUMN, UNREADABLE, WRONG_FILE, FileRefused

log = logging.getLogger(__name__)

MAGIC = b"PAR1"
# A staged file's footer is a few KB (one row group, a short key/value footer);
# a claim past this is a damaged or hostile file, refused before it is read.
MAX_FOOTER_BYTES = 16 * 2**20


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
    """Entries to take in from ``staging/<task_type>/``, per task type, in seal order.

    Every entry under a sealed name is returned, whatever it is, so that the
    load quarantines what is not a regular file. A task-type folder that is a
    symbolic link is returned as the one entry of its type, for the same
    reason: its contents are never listed. Folders of task types this loader
    does not know are reported by ``unknown_folders``.
    """
    out = {}
    for t in task_types:
        folder = Path(staging_dir) / t
        out[t] = [folder] if folder.is_symlink() else staging.sealed_files(folder)
    return out


def _folders(staging_dir):
    """The real (not linked) sub-folders of ``staging/``, by name."""
    try:
        entries = list(os.scandir(staging_dir))
    except FileNotFoundError:
        return {}
    return {e.name: Path(e.path) for e in entries if e.is_dir(follow_symlinks=False)}


def unknown_folders(staging_dir, task_types):
    """Staging sub-folders holding sealed files of a task type not in datasets.yaml."""
    found = {}
    for name, folder in sorted(_folders(staging_dir).items()):
        if name not in task_types:
            n = len(staging.sealed_files(folder))
            if n:
                found[name] = n
    return found


NOT_STAGED_SHOWN = 20  # names in status; the count is always whole


def not_staged(staging_dir, task_types):
    """``{"files": n, "names": [...]}``: what ``staging/`` holds that will be neither loaded
    nor quarantined, as paths relative to it (the first NOT_STAGED_SHOWN of them).

    Anything without a full sealed name (a person's notes, a copy named
    ``x.parquet``, a name with a final newline, a sub-folder), and anything
    directly in ``staging/`` but the task-type folders. Temporary files are
    left out (they are counted as being written), and so are sealed files in
    the folder of an unknown task type (``unknown_folders`` counts them).
    """
    root = Path(staging_dir)
    try:
        top = sorted(os.scandir(root), key=lambda e: e.name)
    except FileNotFoundError:
        top = []
    found = []
    for entry in top:
        if not entry.is_dir(follow_symlinks=False):
            if not (entry.name in task_types and entry.is_symlink()) and not staging.is_temporary(entry.name):
                found.append(entry.name)  # a linked task-type folder is quarantined, not listed
            continue
        try:
            names = sorted(os.listdir(entry.path))
        except OSError as exc:
            log.warning("cannot list %s: %s", entry.path, exc)
            continue
        found += [f"{entry.name}/{n}" for n in names
                  if StagedFile.parse(n) is None and not staging.is_temporary(n)]
    return {"files": len(found), "names": found[:NOT_STAGED_SHOWN]}


def checksum(f):
    """The SHA-256 of an open file, read from its start."""
    f.seek(0)
    return "sha256:" + hashlib.file_digest(f, "sha256").hexdigest()


def kind(mode):
    """What a file of this ``st_mode`` is, in words, for a refusal."""
    for test, kind in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")):
        if test(mode):
            return kind
    return "a file of an unknown type" if not stat.S_ISREG(mode) else "a regular file"


def check_regular(path):
    """Raise FileRefused unless ``path`` itself (not what it may point to) is a regular file.

    Looks without opening or following anything: opening a FIFO blocks until
    someone writes to it, and a link may point anywhere outside data/.
    """
    st = os.lstat(path)  # FileNotFoundError: moved since the scan (a concurrent reload)
    if stat.S_ISLNK(st.st_mode):
        try:
            target = os.readlink(path)
        except OSError as exc:
            target = f"? ({exc.strerror})"
        raise FileRefused(
            f"{path.name} is a symbolic link to {target}; the loader reads only regular files in data/",
            "the link was moved here and what it points to left alone; to load a file it points to,"
            " `loader reload` that file (it is copied in), then remove the link", reason=NOT_REGULAR)
    if not stat.S_ISREG(st.st_mode):
        raise FileRefused(f"{path.name} is not a regular file: it is {kind(st.st_mode)}",
                          "remove it; put sealed Parquet files in staging/ with `loader reload` or an atomic mv",
                          reason=NOT_REGULAR)
    return st


def unreadable(error):
    """The refusal of a file that is not Parquet, or damaged."""
    return FileRefused(f"unreadable Parquet file: {error}",
                       "the file is damaged; fetch the data again (the producer's task ids are lost "
                       "with the footer) or restore it from a copy, then `loader reload` it", reason=UNREADABLE)


def check_footer(f, size):
    """Raise FileRefused unless the footer length in the last 8 bytes fits the file and the cap.

    pyarrow allocates whatever the footer claims before it can find out the
    claim is false: 190 MB for a damaged 200 MB file, kept by its allocator.
    """
    if size < 12:
        raise unreadable(f"{size} bytes, too small for a Parquet file")
    f.seek(0)
    head = f.read(4)
    f.seek(size - 8)
    tail = f.read(8)
    if head != MAGIC or tail[4:] != MAGIC:
        raise unreadable("no Parquet magic bytes (PAR1) at its start and end")
    length = int.from_bytes(tail[:4], "little")
    if not 0 < length <= size - 12:
        raise unreadable(f"the footer claims {length} bytes in a file of {size} bytes")
    if length > MAX_FOOTER_BYTES:
        raise unreadable(f"the footer claims {length} bytes, more than the {MAX_FOOTER_BYTES} a staged file may have")


def open_regular(path, follow=False):
    """Open a regular file for reading, never blocking on a FIFO (nor following a link unless ``follow``)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | (0 if follow else os.O_NOFOLLOW))
    f = os.fdopen(fd, "rb")
    if not stat.S_ISREG(os.fstat(fd).st_mode):  # swapped since it was checked
        f.close()
        raise FileRefused(f"{Path(path).name} is not a regular file", "remove it", reason=NOT_REGULAR)
    return f


def inspect(path, dataset):
    """Check a sealed file against its dataset; raise FileRefused if it cannot be merged."""
    path = Path(path)
    check_regular(path)
    staged = StagedFile.parse(path.name)
    if staged is None:
        raise FileRefused(f"{path.name!r} is not a sealed staged file name",
                          "rename it <task_type>-<stamp>-<instance>-<seq>.parquet, or remove it", reason=WRONG_FILE)
    if staged.task_type != dataset.name:
        raise FileRefused(
            f"file name says task type {staged.task_type!r} but it is in the {dataset.name!r} folder",
            f"move it to staging/{staged.task_type}/ if that is right, then `loader reload` it", reason=WRONG_FILE)
    try:
        f = open_regular(path)
    except FileNotFoundError:
        raise
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # became a link since check_regular
            check_regular(path)
        raise unreadable(exc) from None
    with f:
        size = os.fstat(f.fileno()).st_size
        check_footer(f, size)
        try:
            f.seek(0)
            meta = pq.read_metadata(f)
            schema = meta.schema.to_arrow_schema()
            f.seek(0)
            footer = staging.read_footer(f)
        except (OSError, pa.ArrowException, ValueError) as exc:
            raise unreadable(exc) from None
        declared = footer.get("task_type")
        if declared is not None and declared != dataset.name:
            raise FileRefused(f"footer says task type {declared!r}, the name says {dataset.name!r}",
                              "move it to the folder of its footer's task type and `loader reload` it",
                              reason=WRONG_FILE)
        columns = {fld.name: duckdb_type(fld.type) for fld in schema}
        clashing = [c for c in columns if reserved_by_loader(c)]
        if clashing:
            raise FileRefused(
                f"column(s) {', '.join(clashing)}: a name reserved by the loader ({', '.join(sorted(LOADER_RESERVED))},"
                f" or starting with {LOADER_PREFIX})",
                "rename the column in the producer (or rewrite the file with it renamed), then"
                " fetch again or `loader reload` the file", reason=RESERVED_COLUMN)
        missing = [c for c in dataset.primary_key if c not in columns]
        if missing:
            raise FileRefused(f"primary-key column(s) {', '.join(missing)} missing from the file",
                              "the file cannot be merged by key; fix the producer and fetch the data again",
                              reason=MISSING_KEY)
        return Inspected(path, staged, size, checksum(f), meta.num_rows, columns)


def staged_rows(path):
    """Rows of a staged file from its footer, or 0 for anything the loader will quarantine."""
    try:
        check_regular(Path(path))
        with open_regular(path) as f:
            size = os.fstat(f.fileno()).st_size
            check_footer(f, size)
            f.seek(0)
            return pq.read_metadata(f).num_rows
    except (OSError, FileRefused, pa.ArrowException, ValueError):
        return 0


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

    grace = 2.0  # seconds an emitter gets at stop to hand over its last event

    def __init__(self, staging_dir, wake):
        self.staging_dir = Path(staging_dir)
        self.staging_dir.mkdir(parents=True, exist_ok=True)
        self.observer = Observer()
        self.observer.schedule(_Wake(wake), str(self.staging_dir), recursive=True)

    def start(self):
        self.observer.start()

    def stop(self, timeout=5):
        """Stop the emitters before the observer, each one after the event in its hands.

        ``observer.stop()`` alone pulls the inotify watch from under an
        emitter that may be handing over an event (a move out of staging/ is
        held back half a second to be paired with its other half), and the
        emitter logs that as an ERROR. Asked first, an emitter leaves its loop
        after that event; a touch of the watched folder hands an idle one the
        event it needs to notice. Only then are the watches removed.
        """
        deadline = time.monotonic() + timeout
        emitters = list(self.observer.emitters)
        for emitter in emitters:
            emitter.stopped_event.set()
        try:
            os.utime(self.staging_dir)
        except OSError as exc:  # staging/ gone: the emitter has had its last event anyway
            log.debug("cannot touch %s to wake the watcher: %s", self.staging_dir, exc)
        for emitter in emitters:
            emitter.join(max(0.0, min(self.grace, deadline - time.monotonic())))
        self.observer.stop()
        self.observer.join(max(0.0, deadline - time.monotonic()))
