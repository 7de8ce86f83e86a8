"""``make demo``: the whole pipeline on the embedded defaults, with synthetic data.

Starts ``stager run`` and ``loader run`` as two processes, enqueues a seeded
synthetic stretch of an A-share downloader's work (with a share of bad rows),
shows progress, waits until every row is committed, stops both processes with
SIGTERM, and prints a summary of this run (a rerun on the same data reports its
own rows): per table the rows enqueued, committed, superseded (the same key
again in one file) and dead-lettered, which add up; the warehouse's rows;
end-to-end rows per second; quarantined files; each process's peak memory; and
the ``duckdb`` commands to look at the results.
"""

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import click
import psutil

from duckstage import staging
from duckstage.command import read_config
from duckstage.ops import read_snapshot
from .produce import generate, produce
from .tasks import build_huey

WIDTH = 80  # the summary is read in any terminal and pasted into issues
# Summary columns: (heading, RunCounts field); enqueued = the other three + what is named below the table.
COLUMNS = (("enqueued", "enqueued"), ("committed", "committed"), ("superseded", "superseded"),
           ("dead-\nlettered", "deadlettered"))


class Child:
    """A pipeline process with its peak resident memory sampled."""

    def __init__(self, module, config_path, log_dir, cwd=None):
        self.name = module
        self.log_path = Path(log_dir) / f"demo-{module}.log"
        self._log = open(self.log_path, "wb")
        args = [sys.executable, "-m", module] + (["--config", str(config_path)] if config_path else []) + ["run"]
        self.proc = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT, cwd=cwd)
        self.peak = 0
        self._ps = psutil.Process(self.proc.pid)
        self._done = threading.Event()
        threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self):
        while not self._done.is_set():
            try:
                self.peak = max(self.peak, self._ps.memory_info().rss)
            except psutil.Error:
                return
            self._done.wait(0.1)

    def alive(self):
        return self.proc.poll() is None

    def stop(self, timeout=120):
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self._done.set()
        self._log.close()
        return code


def _sealed_waiting(config):
    return sum(len(staging.sealed_files(config.staging_dir / t)) for t in config.datasets.names)


def _wait(predicate, children, timeout, what):
    deadline = time.monotonic() + timeout
    while not predicate():
        for child in children:
            if not child.alive():
                raise click.ClickException(f"{child.name} exited early ({child.proc.returncode}); "
                                           f"see {child.log_path}")
        if time.monotonic() > deadline:
            raise click.ClickException(f"timed out waiting for {what}")
        time.sleep(0.2)


@click.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              help="Configuration file (default: $DUCKSTAGE_CONFIG, else config/duckstage.yaml).")
@click.option("--stocks", type=click.IntRange(min=1), default=5400, show_default=True,
              help="Stocks listed at the start.")
@click.option("--days", type=click.IntRange(min=1), default=10, show_default=True, help="Trading days of work.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--bad-share", type=click.FloatRange(0, 1), default=0.001, show_default=True,
              help="Share of rows made bad (they must end in the dead letter).")
@click.option("--start", type=click.DateTime(formats=["%Y%m%d"]), default="20240422", show_default=True,
              help="First day, YYYYMMDD (moved to a trading day); late April brings annual and Q1 reports too.")
def main(config_path, stocks, days, seed, bad_share, start):
    """Run the stager and the loader end to end on synthetic A-share data.

    Example: python -m stager.demo --stocks 500 --days 5
    """
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(width=min(WIDTH, Console().width))
    config = read_config(config_path)  # the scaffold's loading, not the stager command's: no cli module
    for folder in (config.run_dir, config.staging_dir):
        folder.mkdir(parents=True, exist_ok=True)
    console.print(f"duckstage demo: Huey queue {_shown(config.huey.path)}, warehouse {_shown(config.loader.database)}")
    before = _table_rows(config)
    huey, enqueue = build_huey(config)
    started = time.monotonic()
    stager = Child("stager", config_path, config.run_dir)
    loader = Child("loader", config_path, config.run_dir)
    children = [stager, loader]
    counts, run = {}, None
    try:
        with Progress(TextColumn("{task.description:<20}"), BarColumn(), TextColumn("{task.fields[n]:>11,} rows"),
                      TimeElapsedColumn(), console=console) as progress:
            enq = progress.add_task("enqueued (producer)", total=None, n=0)
            stg = progress.add_task("sealed (stager)", total=None, n=0)
            ldd = progress.add_task("committed (loader)", total=None, n=0)

            def refresh():
                # Running figures from the status snapshots; the final ones come from the
                # stopped processes and the manifest below.
                s = read_snapshot(config.run_dir / "stager.json") or {}
                lo = read_snapshot(config.run_dir / "loader.json") or {}
                progress.update(stg, n=s.get("totals", {}).get("rows_staged", 0))
                progress.update(ldd, n=(lo.get("since_start") or {}).get("rows", 0))

            def on_batch(_batch, c):
                total = sum(v["rows"] for v in c.values())
                progress.update(enq, n=total)
                if total % 20 == 0:
                    refresh()

            batches = generate(stocks=stocks, days=days, seed=seed, bad_share=bad_share,
                               start=start.strftime("%Y%m%d"), datasets=config.datasets)
            counts = produce(enqueue, batches, progress=on_batch)
            total = sum(v["rows"] for v in counts.values())
            progress.update(enq, total=total, completed=total, n=total)

            def drained():
                refresh()
                return huey.storage.queue_size() == 0

            # Then SIGTERM: the stager finishes the tasks it holds and seals
            # every buffer at once instead of waiting for batch_timeout.
            _wait(drained, children, 600, "the stager to drain the queue")
            if stager.stop() != 0:
                raise click.ClickException(f"stager did not stop cleanly; see {stager.log_path}")
            children.remove(stager)

            def loaded():
                refresh()
                return _sealed_waiting(config) == 0

            _wait(loaded, children, 600, "the loader to commit every sealed file")
            elapsed = time.monotonic() - started
            if loader.stop() != 0:
                raise click.ClickException(f"loader did not stop cleanly; see {loader.log_path}")
            children.remove(loader)
            # The bars end at what the stopped stager reported and the manifest holds,
            # not at the last snapshot a running process happened to write.
            run = RunCounts.read(config, counts, stager.proc.pid)
            progress.update(stg, total=1, completed=1, n=run.total("staged"))
            progress.update(ldd, total=1, completed=1, n=run.total("committed"))
    finally:
        huey.storage.close()
        for child in children:
            if child.alive():
                child.stop()

    _summary(console, config, run, before, elapsed, (stager, loader))
    if run.total("deadlettered") < run.total("bad"):
        raise click.ClickException("fewer dead-lettered rows than injected bad rows")


class RunCounts:
    """This run's rows per task type, from the producer, the stopped stager and the manifest.

    Only this run counts: the stager's figures are its own (one process, one
    instance), and committed rows are the manifest rows of the files that
    instance sealed, so a second run on the same data dir reports its own rows.
    """

    def __init__(self, names, enqueued, stager, committed):
        per_type = stager.get("task_types", {})
        self.rows = {}
        for name in list(names) + sorted((set(enqueued) | set(per_type) | set(committed)) - set(names)):
            e, s = enqueued.get(name, {}), per_type.get(name, {})
            self.rows[name] = {
                "enqueued": e.get("rows", 0), "bad": e.get("bad_rows", 0),
                "taken": s.get("rows_in", 0), "staged": s.get("rows_staged", 0),
                "superseded": s.get("rows_superseded", 0), "deadlettered": s.get("rows_deadlettered", 0),
                "filtered": s.get("rows_filtered", 0),
                "committed": committed.get(name, (0, 0))[1], "files": committed.get(name, (0, 0))[0],
            }

    @classmethod
    def read(cls, config, enqueued, stager_pid):
        """Read once the stager has stopped: its last snapshot then holds its final counts."""
        stager = read_snapshot(config.run_dir / "stager.json") or {}
        if stager.get("pid") != stager_pid:
            raise click.ClickException(f"the stager (pid {stager_pid}) left no status in {config.run_dir}")
        return cls(config.datasets.names, enqueued, stager, _committed(config, stager["instance"]))

    def total(self, field):
        return sum(r[field] for r in self.rows.values())

    def unaccounted(self):
        """Named reasons why enqueued != committed + superseded + dead-lettered: {reason: rows}."""
        t = self.total
        named = {
            "filtered by a processor": t("filtered"),
            "from tasks an earlier run left in the queue": t("taken") - t("enqueued"),
            "sealed but not committed (see loader status)": t("staged") - t("committed"),
        }
        return {reason: n for reason, n in named.items() if n}


def _committed(config, instance):
    """{task type: (files, rows)} of the manifest rows of files sealed by stager ``instance``."""
    import duckdb

    if not config.loader.database.path.exists():
        return {}
    con = duckdb.connect(str(config.loader.database), read_only=True)
    try:
        rows = con.execute("select file, task_type, rows from _duckstage_manifest").fetchall()
    finally:
        con.close()
    out = {}
    for file, task_type, n in rows:
        name = staging.StagedFile.parse(file)
        if name is not None and name.instance == instance:
            files, total = out.get(task_type, (0, 0))
            out[task_type] = (files + 1, total + n)
    return out


def _summary(console, config, run, before, elapsed, children):
    from rich import box
    from rich.table import Table

    after = _table_rows(config)
    table = Table(title="this run's rows, by table", box=box.SIMPLE, show_footer=True)
    table.add_column("table", "total")
    for heading, field in COLUMNS:
        table.add_column(heading, f"{run.total(field):,}", justify="right")
    table.add_column("warehouse\nrows", f"{sum(r for r, _ in after.values()):,}", justify="right")
    for name, r in run.rows.items():
        table.add_row(name, *(f"{r[field]:,}" for _, field in COLUMNS), f"{after.get(name, (0, 0))[0]:,}")
    console.print(table)
    console.print("enqueued = committed + superseded (the same key again in one file, the newest kept; "
                  "for tables with history the same version) + dead-lettered")
    for reason, n in run.unaccounted().items():
        console.print(f"  {'+' if n > 0 else '-'} {abs(n):,} rows {reason}")
    console.print("warehouse rows are distinct keys: re-fetches, qfq re-anchoring and restated reports "
                  "merge into one row per key; the statements' and stock_basic's *_history tables keep "
                  "every version, for as-of queries")
    produced = run.total("enqueued")
    console.print(f"end to end: {produced:,} rows enqueued and committed in {elapsed:.1f} s, "
                  f"{produced / elapsed:,.0f} rows/s (the producer generates while the pipeline runs)")
    quarantined = sum(1 for _ in config.quarantine_dir.rglob("*.error.json")) if config.quarantine_dir.exists() else 0
    console.print(f"files committed: {run.total('files'):,}; files in quarantine: {quarantined:,}")
    console.print(f"dead-lettered rows: {run.total('deadlettered'):,} (injected bad: {run.total('bad'):,})")
    stager, loader = children
    console.print(f"peak memory: stager {stager.peak / 2**20:.0f} MiB, loader {loader.peak / 2**20:.0f} MiB")
    if before:
        console.print(f"before this run the warehouse held {sum(r for r, _ in before.values()):,} rows; "
                      "a rerun merges the same keys again")
    click.echo("\nLook at it with the duckdb CLI:")
    for command in _duckdb_commands(config):
        click.echo(f"  {command}")


def _shown(path):
    """``path`` relative to the working directory when it is below it, else absolute."""
    path = os.path.abspath(path)
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel


def _duckdb_commands(config):
    cli = _shown(shutil.which("duckdb", path=os.path.dirname(sys.executable)) or "duckdb")
    db = _shown(config.loader.database)
    commands = [
        f'{cli} -readonly {db} -c "select ts_code, trade_date, close, pct_chg from stock_daily '
        'order by trade_date desc, pct_chg desc limit 5"',
        f'{cli} -readonly {db} -c "select ts_code, end_date, update_flag, n_income_attr_p from income '
        'order by end_date desc limit 5"',
    ]
    day, restated = _as_of_day(config)
    if restated:  # what was known the day before a restatement, against what the table holds now
        commands.append(
            f'{cli} -readonly {db} -c "select a.ts_code, a.end_date, a.f_ann_date as known_from, a.n_income_attr_p '
            f'as known, c.f_ann_date as restated_on, c.n_income_attr_p as restated from income_asof(DATE \'{day}\') a '
            'join income c using (ts_code, end_date, report_type) where a.n_income_attr_p <> c.n_income_attr_p"')
    elif day is not None:
        commands.append(
            f'{cli} -readonly {db} -c "select ts_code, end_date, f_ann_date, n_income_attr_p '
            f'from income_asof(DATE \'{day}\') order by f_ann_date desc limit 5"')
    return commands + [
        f'{cli} -c "from \'{_shown(config.archive_dir)}/stock_daily/*/*.parquet\' limit 5"',
        f'{cli} -c "select task_type, reason, count(*) from '
        f'read_json_auto(\'{_shown(config.deadletter_dir)}/*/*.jsonl\') group by all"',
    ]


def _as_of_day(config):
    """(day, True): the day before the latest restatement that changed an income figure, so that
    income_asof answers differently from the income table for it; else (the latest announcement,
    False); (None, False) when the warehouse keeps no income history."""
    import duckdb

    if not config.loader.database.path.exists():
        return None, False
    con = duckdb.connect(str(config.loader.database), read_only=True)
    try:
        if not con.execute("select count(*) from information_schema.tables where table_name = 'income_history'"
                           ).fetchone()[0]:
            return None, False
        day = con.execute("select max(restated_on) - 1 from (select max(_valid_from) as restated_on"
                          " from income_history group by ts_code, end_date, report_type"
                          " having count(distinct n_income_attr_p) > 1)").fetchone()[0]
        if day is not None:
            return day, True
        return con.execute("select max(_valid_from) from income_history").fetchone()[0], False
    finally:
        con.close()


def _table_rows(config):
    """{table: (rows, manifest files)} read from the warehouse, or {} if there is none yet."""
    import duckdb

    if not config.loader.database.path.exists():
        return {}
    con = duckdb.connect(str(config.loader.database), read_only=True)
    try:
        tables = {r[0] for r in con.execute("select table_name from information_schema.tables").fetchall()}
        files = {}
        if "_duckstage_manifest" in tables:
            files = dict(con.execute("select task_type, count(*) from _duckstage_manifest group by 1").fetchall())
        return {name: (con.execute(f'select count(*) from "{name}"').fetchone()[0], files.get(name, 0))
                for name in config.datasets.names if name in tables}
    finally:
        con.close()


if __name__ == "__main__":
    main()
