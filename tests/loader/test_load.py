"""The load cycle, one ``run_once`` at a time: merge, manifest, archive, version order."""

import datetime as dt
import shutil

import pyarrow as pa
import pytest

from loader import Loader
from loader.warehouse import MANIFEST

from tests.loader.helpers import DUCKDB, NO_WAREHOUSE, daily, fetched, files_in, has_table, query, table


def test_sealed_files_are_merged_once_and_archived(config, stage):
    stage("stock_daily", [daily("000001.SZ", 2, 10.0), daily("600000.SH", 2, 8.0)])
    stage("stock_daily", [daily("000001.SZ", 3, 10.5), daily("000001.SZ", 2, 11.0, minutes=5)])
    loader = Loader(config)
    assert loader.run_once() == 2
    assert table(config, "stock_daily", "ts_code, trade_date, close") == [
        ("000001.SZ", dt.date(2025, 1, 2), 11.0),
        ("000001.SZ", dt.date(2025, 1, 3), 10.5),
        ("600000.SH", dt.date(2025, 1, 2), 8.0),
    ]
    assert files_in(config.staging_dir) == []
    archived = sorted(p.relative_to(config.archive_dir).parts[:2] for p in config.archive_dir.rglob("*.parquet"))
    assert archived == [("stock_daily", "2025-01-06")] * 2
    manifest = query(config, f"SELECT rows, inserted, updated, loads FROM {MANIFEST} ORDER BY file")
    # One transaction, deduplicated across both files: the later file's 000001.SZ/2 wins as an insert.
    assert manifest == [(2, 1, 0, 1), (2, 2, 0, 1)]
    assert loader.run_once() == 0
    loader.stop()


@pytest.mark.backends(DUCKDB, reason=NO_WAREHOUSE)
def test_temporary_files_are_never_loaded(config, stage):
    path = stage("stock_daily", [daily("000001.SZ", 2, 10.0)])
    path.rename(path.with_name("." + path.name + ".tmp"))
    loader = Loader(config)
    assert loader.run_once() == 0
    assert not has_table(config, "stock_daily")
    loader.stop()


def test_duplicate_keys_in_one_file_and_across_files_follow_the_version_order(config, stage):
    # In one file: the newest _fetched_at wins, whatever the row order.
    stage("stock_daily", [daily("000001.SZ", 2, 12.0, minutes=9), daily("000001.SZ", 2, 10.0, minutes=1)])
    # A later file with an older version does not win; a full tie goes to the later file.
    stage("stock_daily", [daily("000001.SZ", 2, 99.0, minutes=5), daily("600000.SH", 2, 1.0, minutes=3)])
    stage("stock_daily", [daily("600000.SH", 2, 2.0, minutes=3)])
    loader = Loader(config.with_loader(max_rows_per_transaction=2))  # spread over several transactions
    loader.run_once()
    assert table(config, "stock_daily", "ts_code, close") == [("000001.SZ", 12.0), ("600000.SH", 2.0)]
    loader.stop()


def test_tables_have_no_key_constraint_and_the_merge_keeps_one_row_per_key(config, stage):
    """No PRIMARY KEY constraint (it made loading 1.7x slower): the MERGE alone keeps keys unique,
    across files, transactions and versions that come again."""
    loader = Loader(config.with_loader(max_rows_per_transaction=2))
    for minutes in (1, 2, 2):
        stage("stock_daily", [daily("000001.SZ", 2, 10.0 + minutes, minutes=minutes),
                              daily("600000.SH", 2, 8.0, minutes=minutes), daily("600000.SH", 3, 8.5)])
        loader.run_once()
    assert query(config, "SELECT count(*) FROM duckdb_constraints() WHERE table_name = 'stock_daily'"
                         " AND constraint_type IN ('PRIMARY KEY', 'UNIQUE')") == [(0,)]
    assert query(config, "SELECT count(*), count(DISTINCT (ts_code, trade_date)) FROM stock_daily") == [(3, 3)]
    assert table(config, "stock_daily", "ts_code, close") == [("000001.SZ", 12.0), ("600000.SH", 8.0),
                                                              ("600000.SH", 8.5)]
    loader.stop()


def test_the_loader_holds_duckdb_to_loader_memory_limit(config, stage):
    stage("stock_daily", [daily("000001.SZ", 2, 10.0)])
    loader = Loader(config.with_loader(memory_limit="256MB"))
    assert loader.run_once() == 1
    con = loader.warehouse.open().con
    assert con.execute("SELECT current_setting('memory_limit'), current_setting('enable_progress_bar')"
                       ).fetchone() == ("244.1 MiB", False)
    loader.stop()


def test_balancesheet_version_order_update_flag_before_fetch_time(config, stage):
    def row(flag, ann, minutes, total):
        return {"ts_code": "600000.SH", "end_date": dt.date(2024, 12, 31), "report_type": "1",
                "ann_date": dt.date(2025, 4, ann), "f_ann_date": dt.date(2025, 4, ann), "update_flag": flag,
                "total_assets": total, "_task_id": "t", "_fetched_at": fetched(minutes)}

    stage("balancesheet", [row("1", 20, 0, 200.0), row("0", 10, 50, 100.0)])
    loader = Loader(config)
    loader.run_once()
    # The corrected row ('1') wins although the original was fetched later.
    assert query(config, "SELECT update_flag, total_assets FROM balancesheet") == [("1", 200.0)]
    stage("balancesheet", [row("0", 10, 90, 100.0)])  # re-fetched original, newer fetch time
    loader.run_once()
    assert query(config, "SELECT update_flag, total_assets FROM balancesheet") == [("1", 200.0)]
    loader.stop()


def test_columns_are_matched_by_name_not_position(config, stage):
    stage("stock_daily", [daily("000001.SZ", 2, 10.0)])
    rows = [daily("000001.SZ", 3, 20.0)]
    t = pa.Table.from_pylist(rows, schema=config.datasets["stock_daily"].arrow_schema)
    names = t.column_names
    i, j = names.index("open"), names.index("close")
    order = list(range(len(names)))
    order[i], order[j] = j, i  # two DOUBLE columns swap places in the file
    stage("stock_daily", table=t.select(order))
    loader = Loader(config)
    loader.run_once()
    assert table(config, "stock_daily", "open, close") == [(9.5, 10.0), (19.5, 20.0)]
    loader.stop()


def test_a_new_column_is_added_to_the_table(config, stage):
    stage("stock_daily", [daily("000001.SZ", 2, 10.0)])
    t = pa.Table.from_pylist([daily("000001.SZ", 3, 11.0)], schema=config.datasets["stock_daily"].arrow_schema)
    stage("stock_daily", table=t.append_column("turnover_rate", pa.array([1.25])))
    loader = Loader(config)
    loader.run_once()
    assert table(config, "stock_daily", "close, turnover_rate") == [(10.0, None), (11.0, 1.25)]
    loader.stop()


def test_new_column_policy_quarantine_and_ignore(tmp_path, stage):
    from tests.loader.helpers import loader_config

    t = pa.Table.from_pylist([daily("000001.SZ", 3, 11.0)], schema=stage.config.datasets["stock_daily"].arrow_schema)
    extra = t.append_column("turnover_rate", pa.array([1.25]))
    stage("stock_daily", table=extra)
    ignoring = loader_config(tmp_path, new_columns="ignore")
    loader = Loader(ignoring)
    loader.run_once()
    loader.stop()
    assert "turnover_rate" not in [r[0] for r in query(ignoring, "DESCRIBE stock_daily")]
    assert table(ignoring, "stock_daily", "close") == [(11.0,)]

    stage("stock_daily", table=extra)
    strict = loader_config(tmp_path, new_columns="quarantine")
    loader = Loader(strict)
    loader.run_once()
    loader.stop()
    assert len(files_in(strict.quarantine_dir / "stock_daily")) == 1
    assert len(files_in(strict.quarantine_dir / "stock_daily", "*.error.json")) == 1


def test_a_file_merged_but_not_archived_is_not_merged_again(config, stage):
    stage("stock_daily", [daily("000001.SZ", 2, 10.0)])
    loader = Loader(config)
    loader.run_once()
    # The disk state of a crash between COMMIT and the archive rename.
    archived = next(config.archive_dir.rglob("*.parquet"))
    shutil.move(archived, config.staging_dir / "stock_daily" / archived.name)
    loader.warehouse.open().con.execute("UPDATE stock_daily SET close = 999")  # a second merge would undo this
    assert loader.run_once() == 1
    assert table(config, "stock_daily", "close") == [(999.0,)]
    assert query(config, f"SELECT loads FROM {MANIFEST}") == [(1,)]
    assert files_in(config.staging_dir) == [] and len(files_in(config.archive_dir)) == 1
    loader.stop()


@pytest.mark.backends(DUCKDB, reason=NO_WAREHOUSE)
def test_unknown_task_type_folder_is_left_alone_and_reported(config, stage):
    stage("stock_daily", [daily("000001.SZ", 2, 10.0)], name="not_configured")
    loader = Loader(config)
    assert loader.run_once() == 0
    assert loader.get_status()["unknown_task_types"] == {"not_configured": 1}
    loader.stop()
