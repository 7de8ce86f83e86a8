"""Loader errors, classified by what happens next (docs/design.md, "Error classes").

- ``FileRefused``: a staged file the warehouse will not take (unreadable,
  mislabelled, a type the table refuses). It goes to quarantine with an error
  report for a person; the other files go on.
- ``DatabaseBusy``: the database is locked by another process or an I/O error
  hit it. Transient: retried with backoff, nothing is dropped.
- ``FilingFailed``: a file could not be moved to ``archive/`` or
  ``quarantine/`` (not writable, disk full). A system resource problem: the
  loader pauses with the same backoff as for a busy database.
- ``LoaderError``: a person asked for something impossible (a reload path that
  is not a staged file, an unknown task type). The CLI prints it on one line.
"""

from duckstage.exceptions import DuckstageError


class LoaderError(DuckstageError):
    """A bad request from a person: refused with one line, exit 2."""


class FileRefused(DuckstageError):
    """A file that goes to quarantine: the error, and what a person can do."""

    def __init__(self, error, action):
        self.error = error
        self.action = action
        super().__init__(error)


class DatabaseBusy(DuckstageError):
    """The database cannot be used right now (locked, I/O error): retry later."""


class FilingFailed(OSError):
    """Moving a file to ``archive/`` or ``quarantine/`` failed: pause and retry.

    A loaded file stays in staging/ meanwhile and the manifest keeps it from
    being merged twice. An OSError, so code that tolerates a failed move (the
    settling of a `loader reload`) still does.
    """

    def __init__(self, what, path, cause):
        self.what = what  # "archive" or "quarantine"
        self.path = path
        detail = cause.strerror or str(cause)
        if getattr(cause, "filename", None):
            detail += f": {cause.filename}"
        super().__init__(cause.errno, f"cannot {what} {path.name}: {detail}")

    def __str__(self):
        return self.strerror
