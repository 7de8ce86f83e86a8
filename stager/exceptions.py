"""Errors, classified by what happens next (docs/design.md, "Error classes").

- ``ConfigError``: a person's mistake in a config or datasets file: refused at
  start-up with the file, the key and what was expected.
- ``RowError``: one row cannot be made valid: it goes to the dead letter with
  the reason; the rest of its batch goes on.
- ``ResourceError``: disk full, out of memory, an I/O error while sealing:
  pause and retry; nothing half-written is ever sealed.
"""


class DuckstageError(Exception):
    """Base class of duckstage's own errors."""


class ConfigError(DuckstageError):
    """A configuration value is wrong. Terminal: the process refuses to start."""

    def __init__(self, source, key, expected, got=None, *, has_got=True):
        self.source = str(source)
        self.key = key
        self.expected = expected
        self.got = got
        self.has_got = has_got
        message = f"{self.source}: {key}: expected {expected}"
        if has_got:
            message += f", got {got!r}"
        super().__init__(message)


class RowError(DuckstageError):
    """A row that cannot be made valid; carries the reason for the dead letter."""


class ResourceError(DuckstageError):
    """A transient system resource problem (ENOSPC, EIO, ...): pause and retry."""


class PortUnavailable(DuckstageError):
    """The metrics port cannot be bound (taken, bad address): refused at start."""
