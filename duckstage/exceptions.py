"""Errors both processes share, classified by what happens next (docs/design.md, "Error classes").

- ``ConfigError``: a person's mistake in a config or datasets file: refused at
  start-up with the file, the key and what was expected.
- ``ResourceError``: disk full, out of memory, an I/O error while sealing:
  pause and retry; nothing half-written is ever sealed.
- ``PortUnavailable``: the ops endpoint's port cannot be bound: refused at start.
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


class ResourceError(DuckstageError):
    """A transient system resource problem (ENOSPC, EIO, ...): pause and retry."""


class PortUnavailable(DuckstageError):
    """The metrics port cannot be bound (taken, bad address): refused at start."""


def one_line(exc, limit=400):
    """An error as one line for status and logs: DuckDB puts the cause of a failed DuckLake commit
    ("Transaction conflict ...", "database is locked") on the lines after the first."""
    text = " ".join(part.strip() for part in str(exc).splitlines() if part.strip())
    return text if len(text) <= limit else text[:limit - 3] + "..."
