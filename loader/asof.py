"""What was known on a day: a dataset's history read as of a date, printed or exported (``loader asof``).

The query is ``warehouse.asof_select``, the body of the ``<table>_asof`` macro,
so the command and the macro give the same answer; the command does not need
the macro and reads through a read-only connection, so on a DuckLake it runs
beside loaders that write.
"""

import datetime as dt
import os
from pathlib import Path

import duckdb

from .exceptions import LoaderError
from .warehouse import asof_select, q

FORMATS = {".parquet": "parquet", ".csv": "csv"}
SHOWN = 40  # rows printed; --output exports them all
# What DuckDB raises for a condition it cannot parse, bind or evaluate.
_REFUSED = (duckdb.ParserException, duckdb.BinderException, duckdb.CatalogException,
            duckdb.ConversionException, duckdb.InvalidInputException, duckdb.OutOfRangeException)


def parse_day(text):
    """The date in ``text`` (YYYY-MM-DD, or YYYYMMDD as Tushare writes it); LoaderError otherwise."""
    for fmt in ("%Y-%m-%d", "%Y%m%d"):
        try:
            return dt.datetime.strptime(text, fmt).date()
        except ValueError:
            pass
    raise LoaderError(f"DATE: expected YYYY-MM-DD or YYYYMMDD, got {text!r}")


def output_format(path):
    """The COPY format for an output file, by its suffix; LoaderError for another suffix."""
    fmt = FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        raise LoaderError(f"--output: expected a file ending in {' or '.join(FORMATS)}, got {str(path)!r}")
    return fmt


def history_dataset(datasets, table):
    """The dataset ``table`` names if it keeps history; LoaderError naming those that do otherwise."""
    with_history = [d.name for d in datasets if d.history is not None]
    if table not in datasets:
        raise LoaderError(f"TABLE: expected a table with history declared in {datasets.source}"
                          f" ({', '.join(with_history) or 'none'}), got {table!r}")
    if datasets[table].history is None:
        raise LoaderError(f"TABLE: {table} keeps no history (datasets.{table} in {datasets.source} has no"
                          f" history key); tables with history: {', '.join(with_history) or 'none'}")
    return datasets[table]


def query(dataset, day, where=None):
    """SQL: the dataset's versions known on ``day``, one per key, filtered by ``where``, by key."""
    sql = f"SELECT * FROM ({asof_select(dataset, f'DATE {day.isoformat()!r}')})"
    if where:
        sql += f" WHERE ({where})"
    return sql + " ORDER BY " + ", ".join(q(c) for c in dataset.primary_key)


def asof(con, dataset, day, where=None, output=None):
    """Run the as-of query on a warehouse connection: ``(rows, relation of the first SHOWN rows)``,
    or with ``output`` ``(rows written, None)``.

    ``output`` is written to a temporary name, then renamed: a file that is there is whole. Raises
    LoaderError when the warehouse has no history of the dataset yet, when
    DuckDB refuses ``where``, or when ``output`` cannot be written.
    """
    found = con.execute("SELECT count(*) FROM information_schema.tables WHERE table_catalog = current_database()"
                        " AND table_schema = 'main' AND table_name = ?", [dataset.history_table]).fetchall()[0][0]
    if not found:
        raise LoaderError(f"TABLE: {dataset.name} has no history in the warehouse yet: the loader writes"
                          f" {dataset.history_table} with the first file it loads (`loader rebuild --task-type"
                          f" {dataset.name}` replays the archive into it)")
    sql = query(dataset, day, where)
    try:
        con.execute(f"DESCRIBE {sql}")  # binds the condition without running it
        if output is None:
            rows = con.execute(f"SELECT count(*) FROM ({sql})").fetchall()[0][0]
            return rows, con.sql(f"{sql} LIMIT {SHOWN}")
        return _export(con, sql, Path(output)), None
    except _REFUSED as exc:
        if not where:
            raise
        raise LoaderError(f"--where: DuckDB refused {where!r}: {str(exc).splitlines()[0]}") from None


def _export(con, sql, path):
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        quoted = str(tmp).replace("'", "''")
        rows = con.execute(f"COPY ({sql}) TO '{quoted}' (FORMAT {output_format(path)})").fetchall()[0][0]
        os.replace(tmp, path)
    except (duckdb.IOException, OSError) as exc:
        raise LoaderError(f"--output: cannot write {str(path)!r}: {str(exc).splitlines()[0]}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return rows
