"""Errors, classified by what happens next (docs/design.md, "Error classes").

- ``ConfigError``: a person's mistake in a config or datasets file: refused at
  start-up with the file, the key and what was expected.
- ``RowError``: one row cannot be made valid: it goes to the dead letter with
  the reason; the rest of its batch goes on.
- ``ResourceError``: disk full, out of memory, an I/O error while sealing:
  pause and retry; nothing half-written is ever sealed.
- ``UnknownTaskType``: a producer's mistake, refused at enqueue in the
  producer's process; nothing is enqueued.
"""


class DuckstageError(Exception):
    """Base class of duckstage's own errors."""


class ConfigProblem:
    """One refused key: the file it is in, the dotted key, what was expected and what was found."""

    def __init__(self, source, key, expected, got=None, has_got=True):
        self.source = str(source)
        self.key = key
        self.expected = expected
        self.got = got
        self.has_got = has_got

    def __str__(self):
        return f"{self.key}: expected {self.expected}" + (f", got {self.got!r}" if self.has_got else "")

    def as_dict(self):
        return {"source": self.source, "key": self.key, "expected": self.expected,
                "got": repr(self.got) if self.has_got else None}


class ConfigError(DuckstageError):
    """Configuration values are wrong. Terminal: the process refuses to start.

    Carries every refused key (``problems``), so that one look at the message
    is enough to fix a file; ``source``, ``key``, ``expected`` and ``got`` are
    those of the first. The message is one line: the file, then each key with
    what was expected.
    """

    def __init__(self, source=None, key=None, expected=None, got=None, *, has_got=True, problems=()):
        self.problems = tuple(problems) or (ConfigProblem(source, key, expected, got, has_got),)
        first = self.problems[0]
        self.source, self.key, self.expected, self.got, self.has_got = (
            first.source, first.key, first.expected, first.got, first.has_got)
        parts, last_source = [], None
        for problem in self.problems:
            parts.append(str(problem) if problem.source == last_source else f"{problem.source}: {problem}")
            last_source = problem.source
        super().__init__("; ".join(parts))

    @property
    def keys(self):
        return [p.key for p in self.problems]


class RowError(DuckstageError):
    """A row that cannot be made valid; carries the reason for the dead letter."""


class ResourceError(DuckstageError):
    """A transient system resource problem (ENOSPC, EIO, ...): pause and retry."""


class PortUnavailable(DuckstageError):
    """The metrics port cannot be bound (taken, bad address): refused at start."""


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
