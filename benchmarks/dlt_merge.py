"""dlt's Parquet merge into DuckDB, for bench_backfill.py: run by a Python that has dlt installed.

    <python with dlt> benchmarks/dlt_merge.py SPEC.json

SPEC names the DuckDB file to create, a folder for dlt's own state, the rows
per ``pipeline.run`` and, per table, its primary key and the Parquet files in
load order. Each run is ``write_disposition="merge"`` on that primary key, as
a user of dlt would load the same files. Prints one JSON line: rows, seconds,
peak RSS, versions. Imports nothing from duckstage: dlt lives in its own
environment.
"""

import json
import os
import resource
import sys
import time


def chunks(files, rows_per_run, pq):
    batch, rows = [], 0
    for f in files:
        batch.append(f)
        rows += pq.read_metadata(f).num_rows
        if rows >= rows_per_run:
            yield batch
            batch, rows = [], 0
    if batch:
        yield batch


def main():
    with open(sys.argv[1]) as f:
        spec = json.load(f)
    os.environ.setdefault("RUNTIME__DLTHUB_TELEMETRY", "false")
    import dlt
    import duckdb
    import pyarrow as pa
    import pyarrow.parquet as pq

    pipeline = dlt.pipeline(pipeline_name="backfill", destination=dlt.destinations.duckdb(spec["database"]),
                            dataset_name="warehouse", pipelines_dir=spec["pipelines_dir"])
    rows, runs = 0, 0
    started = time.perf_counter()
    for name, table in spec["tables"].items():
        for batch in chunks(table["files"], spec["rows_per_run"], pq):
            data = pa.concat_tables([pq.read_table(f) for f in batch], promote_options="default")
            pipeline.run(data, table_name=name, write_disposition="merge", primary_key=table["primary_key"])
            rows += data.num_rows
            runs += 1
    seconds = time.perf_counter() - started
    con = duckdb.connect(spec["database"], read_only=True)
    stored = {name: con.execute(f'SELECT count(*) FROM warehouse."{name}"').fetchone()[0] for name in spec["tables"]}
    con.close()
    print(json.dumps({"rows": rows, "runs": runs, "seconds": seconds, "stored": stored,
                      "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                      "dlt": dlt.__version__, "duckdb": duckdb.__version__,
                      "size": os.path.getsize(spec["database"])}))


if __name__ == "__main__":
    main()
