"""``make demo``: the whole pipeline on the embedded defaults, with synthetic data.

Starts ``stager run`` and ``loader run`` as two processes, enqueues a seeded
synthetic stretch of an A-share downloader's work (with a share of bad rows),
shows progress, waits until every row is committed, stops both processes with
SIGTERM, and prints a summary: rows and files per table, end-to-end rows per
second, dead-lettered and quarantined counts, each process's peak memory, and
the ``duckdb`` commands to look at the results.
"""

import json
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

from . import staging
from .cli import load_or_exit
from .deadletter import read_records
from .produce import generate, produce
from .tasks import build_huey


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


def _snapshot(config, name):
    try:
        return json.loads((config.run_dir / f"{name}.json").read_text())
    except (OSError, ValueError):
        return {}


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
    from rich.table import Table

    console = Console()
    config = load_or_exit(config_path)
    for folder in (config.run_dir, config.staging_dir):
        folder.mkdir(parents=True, exist_ok=True)
    console.print(f"duckstage demo: data in {config.data_dir}, Huey queue {config.huey.path}, "
                  f"warehouse {config.loader.database}")
    before = _table_rows(config)
    huey, enqueue = build_huey(config)
    started = time.monotonic()
    stager = Child("stager", config_path, config.run_dir)
    loader = Child("loader", config_path, config.run_dir)
    children = [stager, loader]
    counts = {}
    try:
        with Progress(TextColumn("{task.description:<22}"), BarColumn(), TextColumn("{task.fields[n]:>12,} rows"),
                      TimeElapsedColumn(), console=console) as progress:
            enq = progress.add_task("enqueued (producer)", total=None, n=0)
            stg = progress.add_task("sealed (stager)", total=None, n=0)
            ldd = progress.add_task("committed (loader)", total=None, n=0)

            def refresh():
                s = _snapshot(config, "stager").get("totals", {})
                lo = _snapshot(config, "loader").get("since_start", {})
                progress.update(stg, n=s.get("rows_staged", 0))
                progress.update(ldd, n=lo.get("rows", 0))

            def on_batch(_batch, c):
                total = sum(v["rows"] for v in c.values())
                progress.update(enq, n=total)
                if total % 20 == 0:
                    refresh()

            counts = produce(enqueue, generate(stocks=stocks, days=days, seed=seed, bad_share=bad_share,
                                                      start=start.strftime("%Y%m%d")),
                             progress=on_batch)
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
            refresh()
            for t in (stg, ldd):
                progress.update(t, total=1, completed=1)
        if loader.stop() != 0:
            raise click.ClickException(f"loader did not stop cleanly; see {loader.log_path}")
    finally:
        huey.storage.close()
        for child in children:
            if child.alive():
                child.stop()

    after = _table_rows(config)
    bad_injected = sum(v["bad_rows"] for v in counts.values())
    produced = sum(v["rows"] for v in counts.values())
    deadlettered = sum(1 for _ in read_records(config.deadletter_dir))
    quarantined = sum(1 for _ in config.quarantine_dir.rglob("*.error.json")) if config.quarantine_dir.exists() else 0

    table = Table("table", "rows enqueued", "bad rows injected", "warehouse rows", "files loaded (manifest)",
                  title="duckstage demo summary")
    for name in config.datasets.names:
        c = counts.get(name, {"rows": 0, "bad_rows": 0})
        rows, files = after.get(name, (0, 0))
        table.add_row(name, f"{c['rows']:,}", f"{c['bad_rows']:,}", f"{rows:,}", f"{files:,}")
    console.print(table)
    console.print("warehouse rows are distinct keys: re-fetches, qfq re-anchoring and restated reports "
                  "merge into one row per key")
    console.print(f"end to end: {produced:,} rows enqueued and committed in {elapsed:.1f}s -> "
                  f"{produced / elapsed:,.0f} rows/s (the synthetic producer generates while the pipeline runs)")
    console.print(f"dead-lettered rows: {deadlettered:,} (injected bad: {bad_injected:,}); "
                  f"quarantined files: {quarantined}")
    console.print(f"peak memory: stager {stager.peak / 2**20:.0f} MiB, loader {loader.peak / 2**20:.0f} MiB")
    if before:
        console.print(f"(the warehouse already held {sum(r for r, _ in before.values()):,} rows before this run; "
                      "a rerun merges the same keys again)")
    duckdb_cli = shutil.which("duckdb", path=os.path.dirname(sys.executable)) or "duckdb"
    rel = os.path.relpath
    click.echo("\nLook at it with the duckdb CLI:")
    click.echo(f"  {rel(duckdb_cli)} -readonly {rel(config.loader.database)} "
                  "-c \"select ts_code, trade_date, close, pct_chg from stock_daily order by trade_date desc limit 5\"")
    click.echo(f"  {rel(duckdb_cli)} -readonly {rel(config.loader.database)} "
               "-c \"select ts_code, end_date, update_flag, n_income_attr_p from income limit 5\"")
    click.echo(f"  {rel(duckdb_cli)} -c \"from '{rel(config.archive_dir)}/stock_daily/*/*.parquet' limit 5\"")
    click.echo(f"  {rel(duckdb_cli)} -c \"select task_type, reason, count(*) from "
               f"read_json_auto('{rel(config.deadletter_dir)}/*/*.jsonl') group by all\"")
    if deadlettered < bad_injected:
        raise click.ClickException("fewer dead-lettered rows than injected bad rows")


def _table_rows(config):
    """{table: (rows, manifest files)} read from the warehouse, or {} if there is none yet."""
    import duckdb

    if not config.loader.database.exists():
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
