"""``loader``: a thin CLI over the library (``loader run | reload | rebuild | status``).

Each command parses, calls one library function, and turns known errors into
one line on stderr: a configuration or argument error exits 2, a database
error 1. SIGTERM and SIGINT only set the stop event.
"""

import json
import signal
import sys
import threading

import click

from stager import logs
from stager.config import load_config
from stager.exceptions import ConfigError, PortUnavailable

from .exceptions import DatabaseBusy, LoaderError

PROGRESS_FROM = 10  # files: below this a progress bar is noise


def _config(ctx):
    try:
        return load_config(ctx.obj["config"])
    except ConfigError as exc:
        raise click.exceptions.Exit(_fail(str(exc), 2)) from None


def _fail(message, code):
    click.echo(f"loader: {message}", err=True)
    return code


def _logging(ctx, config):
    logs.setup(config.log_level, ctx.obj["log_format"], process="loader")


def _on_signals(event):
    def handler(signum, frame):
        event.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


class _Group(click.Group):
    """Usage errors as one line and exit 2, never click's multi-line usage block."""

    def main(self, args=None, **kwargs):
        kwargs["standalone_mode"] = False
        try:
            rv = super().main(args, **kwargs)
        except click.UsageError as exc:
            sys.exit(_fail(exc.format_message().replace("\n", " "), 2))
        except click.Abort:
            sys.exit(_fail("aborted", 1))
        except OSError as exc:  # a path of the configuration that cannot be made or read
            where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
            sys.exit(_fail(f"{exc.strerror or exc}{where}: check data_dir and the paths in the configuration", 2))
        sys.exit(rv if isinstance(rv, int) else 0)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              help="duckstage YAML file (default: $DUCKSTAGE_CONFIG, then config/duckstage.yaml)")
@click.option("--log-format", type=click.Choice(logs.FORMATS), default="text", show_default=True,
              help="text: human-readable lines; json: one JSON object per line")
@click.pass_context
def main(ctx, config_path, log_format):
    """Merge sealed staging files into the DuckDB warehouse, each exactly once.

    Example: loader --config config/duckstage.yaml --log-format json run
    """
    ctx.obj = {"config": config_path, "log_format": log_format}


@main.command()
@click.pass_context
def run(ctx):
    """Load sealed files as they appear, and at start-up those sealed while it was down.

    SIGTERM or SIGINT: finish or roll back the current transaction, exit 0.
    SIGHUP (or an edit of the config file) applies the live loader settings.
    With loader.metrics_port set it serves /metrics, /healthz and /readyz.

    Example: loader run
    """
    from .service import Loader

    config = _config(ctx)
    _logging(ctx, config)
    loader = Loader(config)
    _on_signals(loader.stopped_event)

    def reload_requested(signum, frame):
        loader.reload_requested.set()
        loader.wake.set()

    signal.signal(signal.SIGHUP, reload_requested)
    try:
        loader.start()
    except PortUnavailable as exc:
        raise click.exceptions.Exit(_fail(f"{exc} (loader.metrics_port)", 2)) from None
    except OSError as exc:
        raise click.exceptions.Exit(_fail(f"cannot prepare {config.data_dir} (data_dir): {exc.strerror or exc}",
                                          2)) from None
    while not loader.stopped_event.wait(1.0):
        pass
    loader.stop(timeout=max(60, config.stager.shutdown_timeout))


def _progress(total, label):
    """A rich progress bar for many files, or None; returns (context manager, callback)."""
    if total < PROGRESS_FROM:
        import contextlib

        return contextlib.nullcontext(), None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rows]:,} rows"),
                   TimeRemainingColumn(), transient=False)
    task = bar.add_task(label, total=total, rows=0)
    state = {"rows": 0}

    def advance(files, rows):
        state["rows"] += rows
        bar.update(task, advance=files, rows=state["rows"])

    return bar, advance


def _open(config, stop):
    from .load import wait_open
    from .warehouse import Warehouse

    def waiting(exc, delay, attempts):
        click.echo(f"loader: database busy, retry {attempts} in {delay:g}s: {str(exc).splitlines()[0]}", err=True)

    return wait_open(Warehouse(config.loader.database), config.loader, stop, waiting)


def _summary(out):
    click.echo(f"{len(out.loaded)} file(s) merged ({out.rows:,} rows: {out.inserted:,} inserted,"
               f" {out.updated:,} updated), {len(out.skipped)} already loaded,"
               f" {len(out.quarantined)} quarantined")
    for name in out.quarantined:
        click.echo(f"quarantined: {name}", err=True)


@main.command()
@click.argument("paths", nargs=-1, required=True)
@click.option("--force", is_flag=True, help="overwrite newer rows too (a deliberate roll-back)")
@click.pass_context
def reload(ctx, paths, force):
    """Re-apply staged, archived or quarantined files (paths or globs) by hand.

    A replayed file never overwrites a row with a newer version unless --force.
    Staged and quarantined files are archived once loaded; archived ones stay.

    Example: loader reload 'data/archive/stock_daily/2025-01-0*/*.parquet'
    """
    from .load import reload as reload_files
    from .load import resolve_paths

    config = _config(ctx)
    _logging(ctx, config)
    stop = threading.Event()
    _on_signals(stop)
    try:
        groups = resolve_paths(config, paths)
        wh = _open(config, stop)
        bar, advance = _progress(sum(len(p) for p in groups.values()), "reload")
        try:
            with bar:
                out = reload_files(wh, config, groups, force=force, progress=advance, stop=stop)
        finally:
            wh.close()
    except LoaderError as exc:
        raise click.exceptions.Exit(_fail(str(exc), 2)) from None
    except DatabaseBusy as exc:
        raise click.exceptions.Exit(_fail(str(exc), 1)) from None
    _summary(out)
    if out.stopped:
        raise click.exceptions.Exit(_fail("stopped; the remaining files were not reloaded", 1))


@main.command()
@click.option("--task-type", "task_types", multiple=True, help="only this task type (repeatable)")
@click.pass_context
def rebuild(ctx, task_types):
    """Replay the archive into fresh tables (one transaction per task type).

    Files still in staging/ are not part of it: `loader run` loads them after.
    Files removed by archive_retention_days are gone from the rebuilt tables.

    Example: loader rebuild --task-type stock_daily
    """
    from . import filing
    from .load import rebuild as rebuild_tables

    config = _config(ctx)
    _logging(ctx, config)
    for t in task_types:
        if t not in config.datasets:
            raise click.exceptions.Exit(_fail(f"--task-type: {t!r} is not in {config.datasets.source}", 2))
    names = list(task_types) or config.datasets.names
    stop = threading.Event()
    _on_signals(stop)
    total = sum(len(filing.archived_files(config.archive_dir, t)) for t in names)
    try:
        wh = _open(config, stop)
        bar, advance = _progress(total, "rebuild")
        try:
            with bar:
                out = rebuild_tables(wh, config, names, progress=advance, stop=stop)
        finally:
            wh.close()
    except LoaderError as exc:
        raise click.exceptions.Exit(_fail(str(exc), 1)) from None
    except DatabaseBusy as exc:
        raise click.exceptions.Exit(_fail(str(exc), 1)) from None
    _summary(out)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@click.pass_context
def status(ctx, as_json):
    """Pending files and rows per type, last load, rate, manifest totals, quarantine, retries.

    Works while `loader run` holds the database: it reads the loader's snapshot.

    Example: loader status --json
    """
    from .status import collect, render

    config = _config(ctx)
    st = collect(config)
    click.echo(json.dumps(st, indent=2, default=str) if as_json else render(st))
