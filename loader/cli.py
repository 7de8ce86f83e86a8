"""``loader``: a thin CLI over the library (``loader run | reload | rebuild | status | shell | asof``).

Each command parses, calls one library function, and turns known errors into
one line on stderr (duckstage.command: exit 2 for a person's mistake, 1 for work
that did not finish). SIGTERM and SIGINT only set the stop event.
"""

import contextlib
import json
import os
import shutil
import sys
import threading
from pathlib import Path

import click

from duckstage.exceptions import one_line
from duckstage.command import CommandLine, Unfinished, UserError, load, on_signals, say

from .exceptions import DatabaseBusy, LoaderError

PROGRESS_FROM = 10  # files: below this a progress bar is noise


@click.group(cls=CommandLine, name="loader")
def main():
    """Merge sealed staging files into the DuckDB warehouse, each exactly once.

    --config and --log-format may come before or after the command.
    Exit status: 0 done, 1 unfinished (stopped, database busy, a thread did not stop in time),
    2 a mistake in the configuration or arguments.

    Example: loader run --config config/duckstage.yaml --log-format json
    """


@main.command()
def run():
    """Load sealed files as they appear, and at start-up those sealed while it was down.

    SIGTERM or SIGINT: finish or roll back the current transaction, exit 0
    (1 when a thread did not stop within loader.shutdown_timeout).
    SIGHUP (or an edit of the config file) applies the live loader settings.
    With loader.metrics_port set it serves /metrics, /healthz and /readyz.

    Example: loader run
    """
    from .service import Loader

    config = load("loader")
    loader = Loader(config)
    on_signals(loader.stopped_event, reload=[loader.reload_requested, loader.wake])
    loader.start()  # a metrics port that is taken: duckstage.command names the key, exit 2
    while not loader.stopped_event.wait(1.0):
        pass
    if not loader.stop(timeout=config.loader.shutdown_timeout):
        raise Unfinished(f"threads still running after loader.shutdown_timeout ({config.loader.shutdown_timeout:g}s)"
                         f" of {config.source}; an unfinished transaction is rolled back, its files load again")


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


def _open(config, stop, read_only=False):
    from .load import wait_open
    from .warehouse import Warehouse

    def waiting(exc, delay, attempts):
        say(f"database busy, retry {attempts} in {delay:g}s: {one_line(exc)}")

    return wait_open(Warehouse(config.loader.database, read_only=read_only,
                                memory_limit=config.loader.memory_limit), config.loader, stop, waiting)


@contextlib.contextmanager
def _opened(config, stop, read_only=False):
    """The warehouse, waited for and closed after; a LoaderError is the person's mistake (exit 2),
    a database that stays busy unfinished work (exit 1)."""
    try:
        wh = _open(config, stop, read_only)
        try:
            yield wh
        finally:
            wh.close()
    except LoaderError as exc:
        raise UserError(str(exc)) from None
    except DatabaseBusy as exc:
        raise Unfinished(str(exc)) from None


def _summary(out):
    click.echo(f"{len(out.loaded)} file(s) merged ({out.rows:,} rows: {out.inserted:,} inserted,"
               f" {out.updated:,} updated), {len(out.skipped)} already loaded,"
               f" {len(out.quarantined)} quarantined"
               + (f", {len(out.duplicates)} duplicate(s) of loaded files (not merged)" if out.duplicates else ""))
    for name in out.quarantined:
        say(f"quarantined: {name}")
    if out.expired:
        say(f"{len(out.expired)} file(s) in the manifest were removed by archive retention:"
            " their rows are not in the rebuilt table")


@main.command()
@click.argument("paths", nargs=-1, required=True)
@click.option("--force", is_flag=True, help="overwrite newer rows too (a deliberate roll-back)")
def reload(paths, force):
    """Re-apply staged, archived or quarantined files (paths or globs) by hand.

    A replayed file never overwrites a row with a newer version unless --force.
    Staged and quarantined files are archived once loaded; archived ones stay.

    Example: loader reload 'data/archive/stock_daily/2025-01-0*/*.parquet'
    """
    from .load import reload as reload_files
    from .load import resolve_paths

    config = load("loader")
    stop = on_signals(threading.Event())
    try:
        groups = resolve_paths(config, paths)
    except LoaderError as exc:
        raise UserError(str(exc)) from None
    with _opened(config, stop) as wh:
        bar, advance = _progress(sum(len(p) for p in groups.values()), "reload")
        with bar:
            out = reload_files(wh, config, groups, force=force, progress=advance, stop=stop)
    _summary(out)
    if out.stopped:
        raise Unfinished("stopped; the remaining files were not reloaded")


@main.command()
@click.option("--task-type", "task_types", multiple=True, help="only this task type (repeatable)")
def rebuild(task_types):
    """Replay the archive into fresh tables (one transaction per task type).

    Files still in staging/ are not part of it: `loader run` loads them after.
    Files removed by archive_retention_days are gone from the rebuilt tables.

    Example: loader rebuild --task-type stock_daily
    """
    from . import filing
    from .load import rebuild as rebuild_tables

    config = load("loader")
    for t in task_types:
        if t not in config.datasets:
            raise UserError(f"--task-type: expected a task type of {config.datasets.source}"
                            f" ({', '.join(config.datasets.names)}), got {t!r}")
    names = list(task_types) or config.datasets.names
    stop = on_signals(threading.Event())
    total = sum(len(filing.archived_files(config.archive_dir, t)) for t in names)
    try:
        wh = _open(config, stop)
        bar, advance = _progress(total, "rebuild")
        try:
            with bar:
                out = rebuild_tables(wh, config, names, progress=advance, stop=stop)
        finally:
            wh.close()
    except (LoaderError, DatabaseBusy) as exc:
        # The request was sound (its task types are checked above): a listed file missing or refused, a stop or
        # a busy database means the rebuild did not finish, and the old tables are kept.
        raise Unfinished(str(exc)) from None
    _summary(out)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def status(as_json):
    """Pending files and rows per type, last load, rate, manifest totals, quarantine, retries.

    Works while `loader run` holds the database (it reads the loader's snapshot),
    and with a configuration edit that is refused: it shows the refusal beside
    the running values.

    Example: loader status --json
    """
    from .status import collect, render

    config, refused = load("loader", lenient=True)
    st = collect(config, refused=refused)
    click.echo(json.dumps(st, indent=2, default=str) if as_json else render(st))


@main.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False,
                               "help_option_names": ["--help"]})  # -h and -c... are duckdb's
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def shell(args):
    """Open the duckdb CLI on the warehouse, read-only; ARGS go to duckdb.

    On a DuckLake it attaches the catalog as `lake`, with the extensions from the
    installed packages (nothing is downloaded), while loaders keep writing. A
    DuckDB file opens only while no loader holds it (loader.idle_release).

    Example: loader shell -c "SELECT count(*) FROM stock_daily"
    """
    from .lake import shell_command

    config = load("loader")
    database = config.loader.database
    if not database.is_lake and not database.path.exists():
        raise UserError(f"loader.database: {database} does not exist yet; run the loader first")
    cli = Path(sys.executable).with_name("duckdb")
    cli = cli if cli.exists() else shutil.which("duckdb")
    if not cli:
        raise UserError("no duckdb command next to this Python or on PATH; pip install duckdb-cli")
    argv = shell_command(database, cli) + list(args)
    sys.stdout.flush()
    os.execv(argv[0], argv)


@main.command()
@click.argument("table")
@click.argument("day", metavar="DATE")
@click.option("--where", metavar="SQL", help="a condition on the rows, e.g. \"ts_code = '600000.SH'\"")
@click.option("--output", metavar="FILE", help="write every row to FILE.parquet or FILE.csv instead of printing")
def asof(table, day, where, output):
    """What was known on DATE: per key, the newest version of TABLE public on or before it.

    TABLE keeps history in datasets.yaml (statements dated by announcement,
    stock_basic by fetch); DATE is YYYY-MM-DD or YYYYMMDD. The same as SQL:
    SELECT * FROM income_asof(DATE '2024-04-30'). Runs while `loader run`
    writes a DuckLake; a DuckDB file opens once the loader releases it (it waits).

    Example: loader asof income 2024-04-30 --where "ts_code = '600000.SH'" --output income.parquet
    """
    from . import asof as history

    config = load("loader")
    try:
        dataset = history.history_dataset(config.datasets, table)
        when = history.parse_day(day)
        if output is not None:
            history.output_format(output)
    except LoaderError as exc:
        raise UserError(str(exc)) from None
    database = config.loader.database
    if not database.is_lake and not database.path.exists():
        raise UserError(f"loader.database: {database} does not exist yet; run the loader first")
    with _opened(config, on_signals(threading.Event()), read_only=True) as wh:
        rows, shown = history.asof(wh.con, dataset, when, where, output)
        if output is not None:
            click.echo(f"{rows:,} row(s) of {table} as known on {when} written to {output}")
            return
        shown.show(max_width=shutil.get_terminal_size((200, 24)).columns)
    more = f"; the first {history.SHOWN} shown, --output FILE.parquet exports them all" if rows > history.SHOWN else ""
    click.echo(f"{rows:,} row(s) of {table} as known on {when}{more}")
