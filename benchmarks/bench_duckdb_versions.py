"""What the DuckDB pin costs: the loader's MERGE on two DuckDB versions, same run.

    python benchmarks/bench_duckdb_versions.py .venv/bin/python /tmp/duckdb-2.0.1/bin/python

The project pins duckdb 1.5.5 because the DuckLake, SQLite and PostgreSQL
extension packages are built for that version only. This measures the price
on the DuckDB file: bench_loader.py's main figure (100k-row Parquet files,
half of their rows updates, MERGEd by the real Loader into a 2M-row table it
created) measured by each interpreter in turn, ``--rounds`` times,
alternating, so a change in the machine's load hits both versions alike.

Each interpreter needs the project's dependencies; the code is this
repository's. One for another DuckDB version is a throwaway virtual
environment outside the repository, e.g.:

    python3 -m venv /tmp/duckdb-2.0.1
    /tmp/duckdb-2.0.1/bin/pip install -e .              # the dependencies, duckdb 1.5.5 among them
    /tmp/duckdb-2.0.1/bin/pip install duckdb==2.0.1     # then the other version over it

Not part of ``make bench`` (it needs that second environment); the figures are
in docs/benchmarks.md. Not a test: nothing is asserted on timing.
"""

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def measure(args):
    """In this interpreter: one loader MERGE figure, printed as a JSON line last."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import bench_loader  # noqa: E402 - puts the repository on sys.path itself
    import duckdb
    from duckstage.config import from_mapping

    work = Path(tempfile.mkdtemp(prefix="bench_duckdb_versions-"))
    try:
        base = from_mapping({"data_dir": str(work / "base")}, "<bench>", REPO / "config", work)
        bench_loader.build_table(base, args.rows)
        rate = bench_loader.measure(f"duckdb {duckdb.__version__}", base.loader.database, work, args.file_rows,
                                    args.rows // 2, args.rows, args.max_rows)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({"duckdb": duckdb.__version__, "rows_per_second": rate}))


def compare(args):
    rates = {}  # interpreter -> (version, [rows/s])
    for round_ in range(1, args.rounds + 1):
        for python in args.pythons:
            command = [python, __file__, "--measure", "--rows", str(args.rows), "--file-rows", str(args.file_rows),
                       "--max-rows", str(args.max_rows)]
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                sys.exit(f"{python} failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
            figure = json.loads(done.stdout.strip().splitlines()[-1])
            version, seen = rates.setdefault(python, (figure["duckdb"], []))
            seen.append(figure["rows_per_second"])
            print(f"round {round_}: duckdb {version:<7} {figure['rows_per_second']:>10,.0f} rows/s  ({python})")
    print(f"MERGE of {args.file_rows:,}-row files (half updates) into a {args.rows:,}-row table,"
          f" {args.rows // 2:,} rows merged; median of {args.rounds} rounds:")
    medians = {python: statistics.median(seen) for python, (_, seen) in rates.items()}
    first = medians[args.pythons[0]]
    for python, (version, _) in rates.items():
        print(f"   duckdb {version:<7} {medians[python]:>10,.0f} rows/s  ({medians[python] / first:.2f}x the first)")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("pythons", nargs="*", metavar="PYTHON", help="interpreters to compare, the pinned one first")
    ap.add_argument("--rounds", type=int, default=3, help="measurements per interpreter (default 3)")
    ap.add_argument("--rows", type=int, default=2_000_000, help="rows in the table (default 2M; half that merged)")
    ap.add_argument("--file-rows", type=int, default=100_000, help="rows per staged file (default 100k)")
    ap.add_argument("--max-rows", type=int, default=1_000_000, help="loader.max_rows_per_transaction")
    ap.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)  # one figure, in this interpreter
    args = ap.parse_args()
    if args.measure:
        measure(args)
    elif len(args.pythons) < 2:
        ap.error("give two interpreters or more (e.g. .venv/bin/python /tmp/duckdb-2.0.1/bin/python)")
    else:
        compare(args)


if __name__ == "__main__":
    main()
