"""The ``stager`` command: a thin layer over ``stager.service.Stager``."""

import json
import logging
import signal
import sqlite3
import sys
import threading

import click

from . import logs
from .config import load_config
from .backoff import Backoff
from .exceptions import ConfigError, PortUnavailable

log = logging.getLogger("duckstage.stager")
LOG_FORMAT = "duckstage.log_format"  # key in click's ctx.meta


def setup_logging(level, fmt=None):
    """Log to stderr as the --log-format option asks (text unless told otherwise)."""
    if fmt is None:
        ctx = click.get_current_context(silent=True)
        fmt = ctx.meta.get(LOG_FORMAT, "text") if ctx else "text"
    logs.setup(level, fmt, process="stager")


class UserError(click.ClickException):
    """A person's mistake (configuration, argument, file): one line on stderr, exit 2."""

    exit_code = 2


def load_or_exit(config_path):
    """Load the configuration, or print the one-line reason and exit 2."""
    try:
        return load_config(config_path)
    except ConfigError as exc:
        raise UserError(f"configuration refused: {exc}") from None


class _Group(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except OSError as exc:  # a path of the configuration that cannot be made or read
            where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
            raise UserError(f"{exc.strerror or exc}{where}: check data_dir and the paths in the configuration") \
                from None
        except sqlite3.DatabaseError as exc:  # huey.db is not an SQLite file, or is damaged
            raise UserError(f"Huey storage: {exc}") from None


@click.group(cls=_Group)
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              help="Configuration file (default: $DUCKSTAGE_CONFIG, else config/duckstage.yaml).")
@click.option("--log-format", type=click.Choice(logs.FORMATS), default="text", show_default=True,
              help="text: human-readable lines; json: one JSON object per line.")
@click.pass_context
def main(ctx, config_path, log_format):
    """duckstage stager: stage Huey results of process_fetched_data into sealed Parquet files.

    Example: stager --config config/duckstage.yaml --log-format json run
    """
    ctx.obj = config_path
    ctx.meta[LOG_FORMAT] = log_format


@main.command()
@click.pass_obj
def run(config_path):
    """Run the stager until SIGTERM or SIGINT, then seal every buffer and exit 0.

    SIGHUP (or an edit of the config file) applies the live settings.
    With stager.metrics_port set it serves /metrics, /healthz and /readyz.

    Example: stager run
    """
    from .service import Stager

    config = load_or_exit(config_path)
    setup_logging(config.log_level)
    stop = threading.Event()

    def request_stop(signum, _frame):
        log.info("received %s: finishing in-flight tasks and sealing buffers", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    backoff = Backoff(0.5, 2.0, 10.0)
    while True:
        try:
            stager = Stager(config)
            break
        except ConfigError as exc:  # a processor registered by an entry point that does not import
            raise UserError(f"configuration refused: {exc}") from None
        except sqlite3.OperationalError as exc:  # huey.db locked while its tables are checked
            delay = backoff.next()
            log.warning("Huey storage %s: %s; retrying in %.1fs", config.huey.path, exc, delay)
            if stop.wait(delay):
                sys.exit(0)
    signal.signal(signal.SIGHUP, lambda *_: stager.reload_requested.set())
    try:
        stager.start()
    except PortUnavailable as exc:
        raise UserError(f"{exc} (stager.metrics_port)") from None
    except OSError as exc:
        raise UserError(f"cannot prepare {config.data_dir} (data_dir): {exc.strerror or exc}") from None
    stop.wait()
    clean = stager.stop()
    sys.exit(0 if clean else 1)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def status(config_path, as_json):
    """Show backlog, rows and files per task type, buffers, rates, errors and threads.

    Works whether or not `stager run` is running. Example: stager status --json
    """
    from .status import collect, render

    config = load_or_exit(config_path)
    report = collect(config)
    if as_json:
        click.echo(json.dumps(report, indent=2, default=str))
    else:
        render(report)


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.pass_obj
def requeue(config_path, paths):
    """Enqueue dead-lettered rows again after a fix (datasets.yaml or the rows themselves).

    Each file moves to replayed/ beside it. Rows still bad return to the dead letter.
    Example: stager requeue data/deadletter/income/income-20241129-1a2b3c4d.jsonl
    """
    from .deadletter import NotADeadLetter, requeue as requeue_file
    from .tasks import build_huey

    config = load_or_exit(config_path)
    huey, enqueue = build_huey(config)
    try:
        for path in paths:
            try:
                tasks, rows = requeue_file(path, enqueue)
            except NotADeadLetter as exc:
                raise UserError(str(exc)) from None
            click.echo(f"{path}: {rows} row(s) enqueued again as {tasks} task(s)")
    finally:
        huey.storage.close()


def _produce_options(command):
    from .produce import PRODUCE_OPTIONS

    ranges = {"bad_share": click.FloatRange(0, 1), "start": _yyyymmdd, "seed": click.IntRange(min=0)}
    for flag, name, kind, default, help_text in reversed(PRODUCE_OPTIONS):
        kind = ranges.get(name, click.IntRange(min=1) if kind is int else kind)
        command = click.option(flag, name, type=kind, default=default, show_default=True, help=help_text)(command)
    return command


class _YYYYMMDD(click.ParamType):
    name = "YYYYMMDD"

    def convert(self, value, param, ctx):
        import datetime as dt

        try:
            dt.datetime.strptime(str(value), "%Y%m%d")
        except ValueError:
            self.fail(f"{value!r} is not a date as YYYYMMDD", param, ctx)
        return str(value)


_yyyymmdd = _YYYYMMDD()


@main.command()
@_produce_options
@click.pass_obj
def produce(config_path, **options):
    """Enqueue a synthetic A-share downloader's work (see stager.produce).

    Example: stager produce --stocks 500 --days 20 --seed 1 --bad-share 0.01
    """
    from .produce import generate, produce as enqueue_all
    from .tasks import build_huey

    config = load_or_exit(config_path)
    huey, enqueue = build_huey(config)
    try:
        counts = enqueue_all(enqueue, generate(**options))
    finally:
        huey.storage.close()
    for task_type, c in counts.items():
        click.echo(f"{task_type}: {c['tasks']} task(s), {c['rows']} row(s), {c['bad_rows']} injected bad")


if __name__ == "__main__":
    main()
