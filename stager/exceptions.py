"""The stager's own errors, classified by what happens next (docs/design.md, "Error classes").

- ``RowError``: one row cannot be made valid: it goes to the dead letter with
  the reason; the rest of its batch goes on.
- ``UnknownTaskType``: a producer's mistake, refused at enqueue in the
  producer's process; nothing is enqueued.
- ``QueueUnavailable``: the Redis queue cannot be reached, or is full, at
  enqueue; nothing is enqueued; the producer may try again later.

The shared errors live in ``duckstage.exceptions``; ``ConfigError`` is named
here too so producers can catch it without knowing the shared package.
"""

from duckstage.exceptions import ConfigError, DuckstageError, ResourceError  # noqa: F401 - producers' names


# Why a row was refused: a code, carried as data from where the refusal is decided to
# the dead-letter counters (the ``reason`` label of duckstage_stager_rows_deadlettered).
MISSING_VALUE = "missing_value"          # a required value is NULL, NaN, inf or empty
PATTERN = "pattern"                      # a value fails its column's pattern
INVALID_VALUE = "invalid_value"          # a value is not of its column's type
COLUMN_NAME = "column_name"              # an undeclared column the warehouse could not hold
UNKNOWN_TASK_TYPE = "unknown_task_type"  # the datasets file does not declare the task type
UNREADABLE_TASK = "unreadable_task"      # the task's data could not be read (or cleaned) at all
PROCESSOR_ERROR = "processor_error"      # the custom processor raised or returned something unusable
PROCESSOR_REJECTED = "processor_rejected"  # the custom processor refused the row with _error


class RowError(DuckstageError):
    """Rows that cannot be made valid: they go to the dead letter with ``reason``, a code above."""

    def __init__(self, message, reason):
        super().__init__(message)
        self.reason = reason


class UnknownTaskType(DuckstageError, ValueError):
    """A task type the datasets file does not declare, refused at enqueue: nothing was enqueued.

    Raised in the producer's process by ``process_fetched_data(...)`` (and by
    ``stager requeue``), so a misspelt name fails where it was written rather
    than in the stager's dead letter. ``known`` lists the declared task types.
    """

    def __init__(self, task_type, known, source="datasets.yaml", context=None):
        import difflib

        self.task_type = task_type
        self.known = list(known)
        self.source = str(source)
        close = difflib.get_close_matches(str(task_type), self.known, n=1)
        message = (f"unknown task type {task_type!r}" + (f" (did you mean {close[0]!r}?)" if close else "")
                   + f"; {self.source} declares: {', '.join(self.known)}; nothing was enqueued")
        super().__init__(f"{context}: {message}" if context else message)


class QueueUnavailable(DuckstageError):
    """The Redis queue (``huey.backend: redis``) could not be reached, or is full: nothing was enqueued.

    Raised in the producer's process by ``process_fetched_data(...)``; ``location``
    is the queue's URL without its password and ``__cause__`` the client's error.
    Enqueue again once Redis is back: a task that did reach Redis before its reply
    was lost then runs twice, and the loader's MERGE keeps one copy of its rows.
    """

    def __init__(self, location, error):
        self.location = location
        super().__init__(f"Huey queue at {location} cannot take the task ({type(error).__name__}: {error}); "
                         "nothing was enqueued, try again later")
