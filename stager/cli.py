"""The ``stager`` command: a thin layer over ``stager.service.Stager``."""

import json
import logging
import sqlite3
import threading

import click

from duckstage.backoff import Backoff
from duckstage.command import CommandLine, Unfinished, UserError, load, on_signals

log = logging.getLogger(__name__)


@click.group(cls=CommandLine, name="stager")
def main():
    """duckstage stager: stage Huey results of process_fetched_data into sealed Parquet files.

    --config and --log-format may come before or after the command.
    Exit status: 0 done, 1 unfinished (a thread did not stop in time), 2 a mistake in the configuration or arguments.

    Example: stager run --config config/duckstage.yaml --log-format json
    """


@main.command()
def run():
    """Run the stager until SIGTERM or SIGINT, then seal every buffer and exit 0.

    SIGHUP (or an edit of the config file) applies the live settings.
    With stager.metrics_port set it serves /metrics, /healthz and /readyz.
    Exit status 1 when a thread did not stop within stager.shutdown_timeout.

    Example: stager run
    """
    from .service import Stager

    config = load("stager")
    stop = on_signals(threading.Event())
    backoff = Backoff(0.5, 2.0, 10.0)
    while True:
        try:
            stager = Stager(config)
            break
        except sqlite3.OperationalError as exc:  # huey.db locked while its tables are checked
            delay = backoff.next()
            log.warning("Huey storage %s: %s; retrying in %.1fs", config.huey.path, exc, delay)
            if stop.wait(delay):
                return
    on_signals(stop, reload=[stager.reload_requested])
    stager.start()  # a metrics port that is taken: duckstage.command names the key, exit 2
    # Producers must enqueue into this very queue: say where it is (an absolute path, or the Redis URL).
    log.info("configuration %s; Huey queue %r in %s", config.source, config.huey.name, config.huey.location,
             extra={"event": "queue", "file": config.huey.location})
    stop.wait()
    log.info("asked to stop: finishing in-flight tasks and sealing buffers")
    if not stager.stop():
        raise Unfinished(f"threads still running after stager.shutdown_timeout ({config.stager.shutdown_timeout:g}s)"
                         f" of {config.source}; their tasks are re-run at the next start")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status(as_json):
    """Show backlog, rows and files per task type, buffers, rates, errors and threads.

    Works whether or not `stager run` is running, and with a configuration edit
    that is refused: it shows the refusal beside the running values.

    Example: stager status --json
    """
    from .status import collect, render

    config, refused = load("stager", lenient=True)
    report = collect(config, refused)
    if as_json:
        click.echo(json.dumps(report, indent=2, default=str))
    else:
        render(report)


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
def requeue(paths):
    """Enqueue dead-lettered rows again after a fix (datasets.yaml or the rows themselves).

    Each file moves to replayed/ beside it. Rows still bad return to the dead letter.
    Example: stager requeue data/deadletter/income/income-20241129-1a2b3c4d.jsonl
    """
    from .deadletter import NotADeadLetter, requeue as requeue_file
    from .exceptions import QueueUnavailable, UnknownTaskType
    from .tasks import build_huey

    config = load("stager")
    huey, enqueue = build_huey(config)
    try:
        for path in paths:
            try:
                tasks, rows = requeue_file(path, enqueue, check_task_type=huey.check_task_type)
            except (NotADeadLetter, UnknownTaskType) as exc:
                raise UserError(str(exc)) from None
            except QueueUnavailable as exc:  # the file stays: requeue it again once Redis is back
                raise Unfinished(f"{path}: {exc}") from None
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
def produce(**options):
    """Enqueue a synthetic A-share downloader's work (see stager.produce).

    Example: stager produce --stocks 500 --days 20 --seed 1 --bad-share 0.01
    """
    from .exceptions import QueueUnavailable
    from .produce import generate, produce as enqueue_all
    from .tasks import build_huey

    config = load("stager")
    huey, enqueue = build_huey(config)
    try:
        counts = enqueue_all(enqueue, generate(**options, datasets=config.datasets))
    except QueueUnavailable as exc:
        raise Unfinished(str(exc)) from None
    finally:
        huey.storage.close()
    for task_type, c in counts.items():
        click.echo(f"{task_type}: {c['tasks']} task(s), {c['rows']} row(s), {c['bad_rows']} injected bad")

