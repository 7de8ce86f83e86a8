"""Loader errors, classified by what happens next (docs/design.md, "Error classes").

- ``FileRefused``: a staged file the warehouse will not take (unreadable,
  mislabelled, a type the table refuses). It goes to quarantine with an error
  report for a person; the other files go on. Why it was refused is a code
  (``reason``), set where the file is refused: the metrics and the report
  carry that code, never words picked out of the message.
- ``DatabaseBusy``: the database is locked by another process or an I/O error
  hit it. Transient: retried with backoff, nothing is dropped.
- ``FilingFailed``: a file could not be moved to ``archive/`` or
  ``quarantine/`` (not writable, disk full). A system resource problem: the
  loader pauses with the same backoff as for a busy database.
- ``LoaderError``: a person asked for something impossible (a reload path that
  is not a staged file, an unknown task type). The CLI prints it on one line.
"""

from duckstage.exceptions import DuckstageError

# Why a file is refused: the label ``reason`` of duckstage_loader_files_quarantined_total.
UNREADABLE = "unreadable"                 # not Parquet, damaged, a footer that cannot be right
NOT_REGULAR = "not_regular"               # a symbolic link, FIFO, folder... under a sealed name
WRONG_FILE = "wrong_file"                 # not a sealed name, or another task type's file
RESERVED_COLUMN = "reserved_column"       # a column name the MERGE keeps for itself
MISSING_KEY = "missing_key"               # a primary-key column is not in the file
CHECKSUM_MISMATCH = "checksum_mismatch"   # another file of that name was loaded already
NEW_COLUMN = "new_column"                 # a column the table lacks, under loader.new_columns: quarantine
COLUMN_TYPE = "column_type"               # a column type the table's column does not take
TABLE_REFUSED = "table_refused"           # DuckDB refused the merge (a constraint, a value)
VANISHED = "vanished"                     # gone while a rebuild replayed it (a rebuild is refused, not quarantined)
REASONS = (UNREADABLE, NOT_REGULAR, WRONG_FILE, RESERVED_COLUMN, MISSING_KEY, CHECKSUM_MISMATCH,
           NEW_COLUMN, COLUMN_TYPE, TABLE_REFUSED, VANISHED)


class LoaderError(DuckstageError):
    """A bad request from a person: refused with one line, exit 2."""


class FileRefused(DuckstageError):
    """A file that goes to quarantine: the error, what a person can do, and the reason code."""

    def __init__(self, error, action, *, reason):
        if reason not in REASONS:
            raise ValueError(f"unknown refusal reason {reason!r}; expected one of {', '.join(REASONS)}")
        self.error = error
        self.action = action
        self.reason = reason
        super().__init__(error)

    def naming(self, name):
        """The same refusal with the file's name in front, for an error that must name it (a rebuild)."""
        return FileRefused(f"{name!r}: {self.error}", self.action, reason=self.reason)


class DatabaseBusy(DuckstageError):
    """The database cannot be used right now (locked, I/O error): retry later.

    ``database`` is its path, ``doing`` what was being done to it ("open",
    "commit to", "merge into", "read the manifest in"), ``cause`` DuckDB's error.
    """

    def __init__(self, database, doing, cause):
        self.database = database
        self.doing = doing
        self.cause = cause
        super().__init__(f"cannot {doing} {database}: {cause}")


class FilingFailed(OSError):
    """Moving a file to ``archive/`` or ``quarantine/`` failed: pause and retry.

    A loaded file stays in staging/ meanwhile and the manifest keeps it from
    being merged twice. An OSError, so code that tolerates a failed move (the
    settling of a `loader reload`) still does. ``what`` is the move ("archive"
    or "quarantine"), ``path`` the file, ``cause`` the OSError it met.
    """

    def __init__(self, what, path, cause):
        self.what = what
        self.path = path
        self.cause = cause
        detail = cause.strerror or str(cause)
        if getattr(cause, "filename", None):
            detail += f": {cause.filename}"
        super().__init__(cause.errno, f"cannot {what} {path.name}: {detail}")

    def __str__(self):
        return self.strerror
