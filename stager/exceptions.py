"""The stager's own errors, classified by what happens next (docs/design.md, "Error classes").

- ``RowError``: one row cannot be made valid: it goes to the dead letter with
  the reason; the rest of its batch goes on.
- ``UnknownTaskType``: a producer's mistake, refused at enqueue in the
  producer's process; nothing is enqueued.

The shared errors live in ``duckstage.exceptions``; ``ConfigError`` is named
here too so producers can catch it without knowing the shared package.
"""

from duckstage.exceptions import ConfigError, DuckstageError, ResourceError  # noqa: F401 - producers' names


class RowError(DuckstageError):
    """A row that cannot be made valid; carries the reason for the dead letter."""


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
