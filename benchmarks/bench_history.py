"""History of the statements: its size, as-of query times, and what keeping it costs per loaded file.

A realistic universe, generated directly as staged Parquet files (the stager
is not involved): 5,400 stocks x 30 years x 4 reports a year x 3 statements
(income, balancesheet, cashflow), 5 % of the reports restated. Each period is
fetched once when its reports are out (every report, update_flag 1) and once
after its corrections (for each restated report the original, now
update_flag 0, and the correction with a later f_ann_date), so a restated
report has three versions, as a warehouse fed day by day would hold.

The same files are loaded, in the same run, into a warehouse whose datasets
keep history and into one whose datasets do not: the backfill as the loader
batches it, then a re-fetch of the latest period file by file (one
transaction each, as ``loader run`` takes a file that arrives alone). Then the
as-of queries run on the warehouse with history.

    python benchmarks/bench_history.py                  # the full universe (~2.1M history rows)
    python benchmarks/bench_history.py --stocks 500     # small and quick

Not a test: the figures depend on the machine.
"""

import argparse
import datetime as dt
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import duckdb
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from duckstage import staging  # noqa: E402
from duckstage.config import from_mapping  # noqa: E402
from duckstage.staging import StagedFile  # noqa: E402
from loader.load import load_files  # noqa: E402
from loader.warehouse import Warehouse  # noqa: E402

STATEMENTS = ("income", "balancesheet", "cashflow")
T0 = dt.datetime(2025, 1, 6, tzinfo=dt.timezone.utc)
RESTATED = 20  # one report in 20 is restated: 5 %


def periods(years, last_year=2024):
    ends = ("03-31", "06-30", "09-30", "12-31")
    return [dt.date.fromisoformat(f"{y}-{e}") for y in range(last_year - years + 1, last_year + 1) for e in ends]


def rows_sql(dataset, period, stocks, fetch, fetched_at):
    """SQL for one fetch of one period: ``fetch`` 'first' (every report) or 'corrections' (restated ones, twice)."""
    ann = f"(DATE '{period}' + (20 + hash(s, '{period}', 'ann') % 100)::INTEGER)"
    restated = f"hash(s, '{period}', 'restated') % {RESTATED} = 0"
    select = []
    for c in dataset.columns:
        n = c.name
        if n == "ts_code":
            v = "printf('%06d.SZ', s)"
        elif n == "end_date":
            v = f"DATE '{period}'"
        elif n == "ann_date":
            v = ann
        elif n == "f_ann_date":
            v = f"CASE WHEN v = 2 THEN {ann} + (5 + hash(s, '{period}', 'fix') % 85)::INTEGER ELSE {ann} END"
        elif n == "report_type":
            v = "'1'"
        elif n == "comp_type":
            v = "'1'"
        elif n == "end_type":
            v = f"'{(period.month // 3)}'"
        elif n == "update_flag":
            v = "CASE WHEN v = 1 THEN '0' ELSE '1' END"
        elif c.type == "DOUBLE":
            v = f"round((hash(s, '{period}', '{n}') % 100000000) / 100.0 * CASE WHEN v = 2 THEN 1.05 ELSE 1 END, 2)"
        else:
            v = f"NULL::{c.type}"
        select.append(f"{v} AS {n}")
    versions = "[0]" if fetch == "first" else "[1, 2]"  # 0: as first published, 1: the original later, 2: the fix
    where = "" if fetch == "first" else f"WHERE {restated}"
    return (f"SELECT {', '.join(select)}, 'bench' AS _task_id, TIMESTAMP '{fetched_at}' AS _fetched_at"
            f" FROM range({stocks}) t(s), unnest({versions}) u(v) {where}")


def stage_all(config, stocks, years):
    """Seal every fetch of every period of the three statements; returns {statement: [paths]} in seal order."""
    con = duckdb.connect()
    seq, out = 0, {t: [] for t in STATEMENTS}
    for period in periods(years):
        for fetch, days in (("first", 130), ("corrections", 230)):
            fetched_at = dt.datetime.combine(period, dt.time(10)) + dt.timedelta(days=days)
            for t in STATEMENTS:
                dataset = config.datasets[t]
                table = con.sql(rows_sql(dataset, period, stocks, fetch, fetched_at)).to_arrow_table()
                table = table.cast(dataset.arrow_schema)
                seq += 1
                sf = StagedFile.new(t, "bench", seq, now=T0 + dt.timedelta(milliseconds=seq))
                meta = staging.footer_metadata(dataset, table.num_rows, {"bench"}, "bench", sf.created_at, 1)
                out[t].append(staging.seal(table, config.staging_dir / t / sf.name, meta))
    con.close()
    return out


def configs(work, database, without_history):
    """The configuration with the shipped datasets, and one whose datasets keep no history."""
    raw = yaml.safe_load((ROOT / "config" / "datasets.yaml").read_text(encoding="utf-8"))
    for body in raw["datasets"].values():
        body.pop("history", None)
    plain = work / "datasets-without-history.yaml"
    plain.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")

    def config(name, datasets=None):
        mapping = {"data_dir": str(work / name), "loader": {"database": database}}
        if datasets:
            mapping["datasets"] = str(datasets)
        return from_mapping(mapping, "<bench>", ROOT / "config", work)

    return config("with"), config("without", plain) if without_history else None


def load(config, files, one_at_a_time=False):
    """Load the files (as staged) into the configuration's warehouse; the seconds it took."""
    wh = Warehouse(config.loader.database).open()
    try:
        started = time.perf_counter()
        for t, paths in files.items():
            for group in ([[p] for p in paths] if one_at_a_time else [paths]):
                out = load_files(wh, config.datasets[t], group, config)
                assert not out.quarantined and len(out.loaded) == len(group), out
        return time.perf_counter() - started
    finally:
        wh.close()


def copy_files(files, config):
    """The same sealed files in another configuration's staging/."""
    out = {}
    for t, paths in files.items():
        folder = config.staging_dir / t
        folder.mkdir(parents=True, exist_ok=True)
        out[t] = [Path(shutil.copy(p, folder / p.name)) for p in paths]
    return out


def size_of(config):
    """Bytes on disk of the warehouse (after a checkpoint): the DuckDB file, or a DuckLake's catalog and data."""
    database = config.loader.database
    if not database.is_lake:
        con = duckdb.connect(str(database.path), config={"storage_compatibility_version": "v1.5.0"})
        con.execute("CHECKPOINT")
        con.close()
        return database.path.stat().st_size
    files = list(Path(database.data_path).rglob("*")) + ([database.path] if database.path else [])
    return sum(f.stat().st_size for f in files if f.is_file())


def timed(con, sql, runs=5):
    """Median seconds of ``runs`` runs of a query fetched whole as Arrow (after one warm-up), and its rows."""
    rows = con.execute(sql).to_arrow_table().num_rows
    seconds = []
    for _ in range(runs):
        started = time.perf_counter()
        con.execute(sql).to_arrow_table()
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds), rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stocks", type=int, default=5400)
    ap.add_argument("--years", type=int, default=30)
    ap.add_argument("--database", default="warehouse.duckdb",
                    help="loader.database: a DuckDB file (default) or ducklake:sqlite:PATH")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench_history-"))
    try:
        with_history, without = configs(work, args.database, without_history=True)
        started = time.perf_counter()
        files = stage_all(with_history, args.stocks, args.years)
        # The last year's files come one by one, as `loader run` takes a fetch that arrives alone.
        last = {t: paths[-8:] for t, paths in files.items()}
        backfill = {t: paths[:-8] for t, paths in files.items()}
        count = sum(len(p) for p in files.values())
        print(f"duckdb {duckdb.__version__}; {args.stocks:,} stocks x {args.years} years x 4 reports x"
              f" {len(STATEMENTS)} statements, 1 in {RESTATED} restated: {count} staged files made in"
              f" {time.perf_counter() - started:.0f} s; warehouse {args.database}")
        plain_files = copy_files(files, without)
        plain_backfill = {t: [p for p in paths if p.name in {q.name for q in backfill[t]}]
                          for t, paths in plain_files.items()}
        plain_last = {t: [p for p in paths if p.name in {q.name for q in last[t]}] for t, paths in plain_files.items()}

        backfill_files = sum(len(p) for p in backfill.values())
        seconds = {"without": load(without, plain_backfill), "with": load(with_history, backfill)}
        print(f"backfill, {backfill_files} files batched by the loader: {seconds['without']:.1f} s without history,"
              f" {seconds['with']:.1f} s with (+{(seconds['with'] / seconds['without'] - 1) * 100:.0f} %)")
        last_files = sum(len(p) for p in last.values())
        each = {"without": load(without, plain_last, one_at_a_time=True) / last_files,
                "with": load(with_history, last, one_at_a_time=True) / last_files}
        print(f"then one file per transaction ({last_files} files of the last year, {args.stocks:,} or"
              f" {2 * args.stocks // RESTATED:,} rows each):"
              f" {each['without'] * 1000:.0f} ms without history, {each['with'] * 1000:.0f} ms with"
              f" (+{(each['with'] - each['without']) * 1000:.0f} ms a file)")

        wh = Warehouse(with_history.loader.database).open()
        for t in STATEMENTS:
            history, current = wh.con.execute(f"SELECT (SELECT count(*) FROM {t}_history),"
                                              f" (SELECT count(*) FROM {t})").fetchall()[0]
            print(f"{t}: {history:,} versions in {t}_history beside {current:,} rows in {t}")
        wh.close()
        sizes = {"without": size_of(without), "with": size_of(with_history)}
        print(f"warehouse on disk: {sizes['without'] / 2**20:,.0f} MiB without history,"
              f" {sizes['with'] / 2**20:,.0f} MiB with (+{(sizes['with'] - sizes['without']) / 2**20:,.0f} MiB)")

        wh = Warehouse(with_history.loader.database).open()
        try:
            mid = periods(args.years)[len(periods(args.years)) // 2] + dt.timedelta(days=100)
            for label, sql in (
                    (f"income_asof(DATE '{mid}'): every key known then", f"FROM income_asof(DATE '{mid}')"),
                    ("income_asof(DATE '2100-01-01'): every key", "FROM income_asof(DATE '2100-01-01')"),
                    (f"income_asof(DATE '{mid}') of one stock",
                     f"FROM income_asof(DATE '{mid}') WHERE ts_code = '000042.SZ'"),
                    (f"income_timeline in effect on {mid}",
                     f"FROM income_timeline WHERE _valid_from <= DATE '{mid}'"
                     f" AND (_valid_to IS NULL OR DATE '{mid}' < _valid_to)"),
                    ("the income table (for scale)", "FROM income")):
                median, rows = timed(wh.con, sql)
                print(f"{label:<52} {median * 1000:8.0f} ms  {rows:>9,} rows")
        finally:
            wh.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
