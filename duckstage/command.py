"""The command line both duckstage commands stand on, ``stager`` and ``loader``.

One scaffold, so that the two behave alike:

- ``--config PATH`` and ``--log-format text|json`` are taken before and after
  the subcommand (``stager run --config F`` is ``stager --config F run``), and
  ``-h`` / ``--help`` everywhere.
- Every error is one line on stderr, ``<command>: <message>``, never a
  traceback; a configuration error names the file, the key and what was
  expected.
- Exit status: 0 done; 1 the work did not finish (a thread did not stop in
  time, the database stayed busy, stopped by a signal before the end); 2 a
  person's mistake (configuration, argument, a path that cannot be used).
- Signal handlers only set flags (``on_signals``): SIGTERM and SIGINT ask to
  stop, SIGHUP asks a running process to reload its configuration.
- The configuration is loaded one way (``load``, or ``read_config`` for a
  program with its own ``--config`` such as the demo).
"""

import logging
import signal
import sqlite3
import sys
from pathlib import Path

import click

from . import logs
from .config import inspect_config, load_config
from .exceptions import ConfigError, PortUnavailable

EXIT_UNFINISHED = 1
EXIT_MISTAKE = 2

_META = "duckstage."  # prefix of this module's entries in click's ctx.meta (shared by nested contexts)
log = logging.getLogger(__name__)


class UserError(click.ClickException):
    """A person's mistake (configuration, argument, file): one line on stderr, exit 2."""

    exit_code = EXIT_MISTAKE


class Unfinished(click.ClickException):
    """The command ran but its work did not finish (stragglers, a busy database, a stop): exit 1."""

    exit_code = EXIT_UNFINISHED


def _remember(ctx, param, value):
    # Given before and after the subcommand, the later (the subcommand's) wins.
    if value is not None:
        ctx.meta[_META + param.name] = value
    return value


def _global_options():
    return [
        click.Option(["--config", "config"], type=click.Path(dir_okay=False), expose_value=False,
                     callback=_remember, help="Configuration file (default: $DUCKSTAGE_CONFIG, else "
                                              "config/duckstage.yaml in the working directory)."),
        click.Option(["--log-format", "log_format"], type=click.Choice(logs.FORMATS), expose_value=False,
                     callback=_remember, help="text (default): human-readable lines; json: one JSON object per line."),
    ]


class CommandLine(click.Group):
    """A click group with the global options on every command, one-line errors and the exit statuses above."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("context_settings", {}).setdefault("help_option_names", ["-h", "--help"])
        super().__init__(*args, **kwargs)
        self.params.extend(_global_options())

    def add_command(self, cmd, name=None):
        cmd.params.extend(_global_options())
        super().add_command(cmd, name)

    def invoke(self, ctx):
        # Errors of the library become one line here, while the context (and the configuration it loaded) is at hand.
        try:
            return super().invoke(ctx)
        except ConfigError as exc:  # e.g. a processor that does not import, found when the stager starts
            raise refused(exc) from None
        except PortUnavailable as exc:  # found when `run` starts its endpoint
            config, process = ctx.meta.get(_META + "loaded"), ctx.meta.get(_META + "process")
            raise config_problem(config, f"{process}.metrics_port", "a port this process can listen on", exc) from None
        except OSError as exc:
            raise UserError(_unusable_path(exc, ctx.meta.get(_META + "loaded"))) from None
        except sqlite3.DatabaseError as exc:  # huey.db is not an SQLite file, or is damaged
            config = ctx.meta.get(_META + "loaded")
            where = f"{config.source}: huey.path: expected an SQLite file, got {str(config.huey.path)!r}: " \
                if config else "Huey storage: "
            raise UserError(f"{where}{exc}") from None

    def main(self, args=None, prog_name=None, **extra):
        prog = prog_name or self.name
        extra["standalone_mode"] = False
        try:
            rv = super().main(args, prog_name=prog, **extra)
        except click.exceptions.NoArgsIsHelpError as exc:
            click.echo(exc.ctx.get_help(), err=True)
            sys.exit(EXIT_MISTAKE)
        except click.UsageError as exc:
            hint = f" (see {exc.ctx.command_path} -h)" if exc.ctx is not None else ""
            sys.exit(_fail(prog, exc.format_message().rstrip(".") + hint, exc.exit_code))
        except click.ClickException as exc:
            sys.exit(_fail(prog, exc.format_message(), exc.exit_code))
        except click.Abort:
            sys.exit(_fail(prog, "aborted", EXIT_UNFINISHED))
        sys.exit(rv if isinstance(rv, int) else 0)


def _fail(prog, message, code):
    click.echo(f"{prog}: " + " ".join(str(message).split()), err=True)
    return code


def say(message):
    """One line on stderr, prefixed with the command's name, for what is not a log record."""
    ctx = click.get_current_context(silent=True)
    click.echo(f"{ctx.find_root().info_name if ctx else 'duckstage'}: {message}", err=True)


def _unusable_path(exc, config):
    """An OSError on one of the configuration's paths as a configuration message."""
    problem = exc.strerror or str(exc)
    if config is None or not exc.filename:
        return f"{exc.filename}: {problem}" if exc.filename else problem
    path, data_dir = Path(exc.filename), Path(config.data_dir)
    if path.is_relative_to(data_dir) or data_dir.is_relative_to(path):
        return (f"{config.source}: data_dir: expected a folder this process can create and write, "
                f"got {str(data_dir)!r} ({exc.filename}: {problem})")
    return f"{exc.filename}: {problem}"


def refused(exc):
    """The UserError (exit 2) for a refused configuration: the file, every wrong key and what was expected."""
    return UserError(f"configuration refused: {exc}")


def read_config(path=None):
    """The configuration at ``path`` (else $DUCKSTAGE_CONFIG, else the default file), or ``refused``."""
    try:
        return load_config(path)
    except ConfigError as exc:
        raise refused(exc) from None


def on_signals(stop, reload=()):
    """Install handlers that only set flags: SIGTERM and SIGINT set ``stop``, SIGHUP sets each of ``reload``.

    Without ``reload`` SIGHUP keeps its default. Returns ``stop``.
    """
    def stop_requested(signum, frame):
        stop.set()

    def reload_requested(signum, frame):
        for event in reload:
            event.set()

    signal.signal(signal.SIGTERM, stop_requested)
    signal.signal(signal.SIGINT, stop_requested)
    if reload:
        signal.signal(signal.SIGHUP, reload_requested)
    return stop


def load(process, lenient=False):
    """The configuration named by --config, $DUCKSTAGE_CONFIG or the default file, with logging set up.

    Raises UserError (exit 2) when it is refused. ``lenient`` (for ``status``)
    returns ``(config, refusal)`` instead: the valid keys, the defaults for the
    invalid ones, and the ConfigError or None; only a named file that does not
    exist is still refused.
    """
    ctx = click.get_current_context()
    try:
        config, refusal = inspect_config(ctx.meta.get(_META + "config"))
    except ConfigError as exc:
        raise refused(exc) from None
    if refusal is not None and not lenient:
        raise refused(refusal)
    ctx.meta[_META + "loaded"] = config
    ctx.meta[_META + "process"] = process
    logs.setup(config.log_level, ctx.meta.get(_META + "log_format", "text"), process=process)
    if config.note:
        log.warning(config.note, extra={"event": "config_defaults"})
    return (config, refusal) if lenient else config


def config_problem(config, key, expected, detail):
    """A UserError naming the configuration file, the key and what was expected."""
    return UserError(f"{config.source}: {key}: expected {expected}: {detail}")


# -- what both ``status`` commands say of the configuration -------------------------


def checked_at():
    """Now, as ISO 8601 in UTC with its offset: the ``checked_at`` of both status reports."""
    import datetime as dt

    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def config_report(config, refused, snapshot):
    """The configuration part of a status report.

    ``refused`` is what is wrong with the file now (a ConfigError or None);
    ``snapshot`` is the running process's status snapshot or None. A refused
    key is shown with the value the running process keeps using.
    """
    running = ((snapshot or {}).get("config") or {}).get("values") or {}
    problems = refused.problems if refused is not None else ()
    kept = {}
    for problem in problems:
        found, value = _running_value(running, problem.key)
        if found:
            kept[problem.key] = value
    return {"source": config.source, "note": config.note or None,
            "refused": str(refused) if refused is not None else None,
            "problems": [p.as_dict() for p in problems], "running_values": kept}


def _running_value(values, key):
    """``(True, value)`` of dotted ``key`` in a snapshot's flat ``values`` (descending into mappings), else (False, None)."""
    parts = key.split(".")
    for i in range(len(parts), 0, -1):
        head = ".".join(parts[:i])
        if head in values:
            value = values[head]
            for part in parts[i:]:
                if not isinstance(value, dict) or part not in value:
                    return False, None
                value = value[part]
            return True, value
    return False, None


def config_report_lines(report, process, running):
    """Human-readable lines for ``config_report``'s result."""
    lines = [f"configuration: {report['note'] or report['source']}"]
    if report["refused"]:
        if running:
            lines.append(f"configuration edit refused, the running {process} keeps its values: {report['refused']}")
            lines += [f"  {key}: running with {value!r}" for key, value in report["running_values"].items()]
        else:
            lines.append(f"configuration refused, `{process} run` would not start: {report['refused']}")
    return lines


def process_config_lines(view, report, running):
    """What the running process says of its configuration and endpoints (``ops.config_lines``).

    Its refused edit is left out when ``report`` shows the refusal already,
    with the running values.
    """
    from .ops import config_lines

    if report["refused"] and running:
        view = {**view, "config": {**(view.get("config") or {}), "error": None}}
    return config_lines(view)
