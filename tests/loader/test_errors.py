"""Bad files go to quarantine and the rest loads; a busy database is retried, never dropped."""

import json
import os
import time

import duckdb
import pyarrow as pa
import pytest

from loader import Loader
from loader.exceptions import DatabaseBusy
from loader.lake import LockTimeout
from loader.warehouse import Warehouse

from tests.helpers import hold_database, release
from tests.loader.helpers import (DUCKDB, HELD_FILE, LAKE_POSTGRES, LAKE_SQLITE, daily, files_in, has_table,
                                  hold_writer_lock, loader_config, query, table, write_loader_config)


def _report(config, path):
    return json.loads((config.quarantine_dir / "stock_daily" / (path.name + ".error.json")).read_text())


def test_bad_files_are_quarantined_and_the_rest_loads(config, stage):
    good1 = stage("stock_daily", [daily("000001.SZ", 2, 10.0)])
    truncated = stage("stock_daily", [daily("000002.SZ", 2, 10.0)])
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    not_parquet = stage("stock_daily", [daily("000003.SZ", 2, 10.0)])
    not_parquet.write_text("ts_code,close\n000003.SZ,10\n")
    schema = config.datasets["stock_daily"].arrow_schema
    bad_type = pa.Table.from_pylist([daily("000004.SZ", 2, 10.0)], schema=schema)
    bad_type = bad_type.set_column(bad_type.schema.get_field_index("trade_date"), "trade_date",
                                   pa.array(["20250102"]))  # VARCHAR where the table has DATE
    refused_type = stage("stock_daily", table=bad_type)
    no_key = stage("stock_daily", table=pa.Table.from_pylist([daily("000005.SZ", 2, 10.0)], schema=schema)
                   .drop_columns(["ts_code"]))
    wrong_folder = stage("stock_daily", [daily("000006.SZ", 2, 10.0)], name="stock_basic")
    good2 = stage("stock_daily", [daily("000007.SZ", 2, 10.0)])
    for damaged in (truncated, not_parquet):  # damaged a while ago, not still being copied in
        os.utime(damaged, (time.time() - 60, time.time() - 60))

    loader = Loader(config)
    loader.run_once()
    status = loader.get_status()
    loader.stop()

    assert table(config, "stock_daily", "ts_code") == [("000001.SZ",), ("000007.SZ",)]
    assert files_in(config.archive_dir) == sorted([good1.name, good2.name])
    quarantined = files_in(config.quarantine_dir)
    assert quarantined == sorted(p.name for p in (truncated, not_parquet, refused_type, no_key, wrong_folder))
    assert files_in(config.staging_dir) == []
    assert "unreadable Parquet" in _report(config, truncated)["error"]
    assert "unreadable Parquet" in _report(config, not_parquet)["error"]
    report = _report(config, refused_type)
    assert report["file"] == refused_type.name and "trade_date is VARCHAR" in report["error"]
    assert report["what_to_do"]
    assert "ts_code" in _report(config, no_key)["error"]
    wrong = json.loads((config.quarantine_dir / "stock_basic" / (wrong_folder.name + ".error.json")).read_text())
    assert "stock_basic" in wrong["error"]
    assert [_report(config, p)["reason"] for p in (truncated, not_parquet, refused_type, no_key)] == \
        ["unreadable", "unreadable", "column_type", "missing_key"]
    assert wrong["reason"] == "wrong_file"
    assert status["task_types"]["stock_daily"]["quarantined_by_reason"] == \
        {"unreadable": 2, "column_type": 1, "missing_key": 1}
    assert status["task_types"]["stock_basic"]["quarantined_by_reason"] == {"wrong_file": 1}


def test_a_quarantine_reason_is_the_refusal_not_words_in_its_message(tmp_path, stage):
    """A new column named like another refusal is counted as what it is: a new column."""
    config = loader_config(tmp_path, new_columns="quarantine")
    rows = pa.Table.from_pylist([daily("000001.SZ", 2, 10.0)], schema=config.datasets["stock_daily"].arrow_schema)
    odd = stage("stock_daily", table=rows.append_column("unreadable Parquet", pa.array(["x"])))

    loader = Loader(config)
    loader.run_once()
    status = loader.get_status()
    loader.stop()

    assert files_in(config.quarantine_dir) == [odd.name]
    assert status["task_types"]["stock_daily"]["quarantined_by_reason"] == {"new_column": 1}
    report = _report(config, odd)
    assert "unreadable Parquet" in report["error"] and report["reason"] == "new_column"


def test_a_row_the_table_refuses_quarantines_only_its_file(config, stage):
    # vol is NOT NULL in the table; the file's schema lets a NULL through.
    schema = config.datasets["stock_daily"].arrow_schema
    loose = pa.schema([f.with_nullable(True) for f in schema])
    stage("stock_daily", [daily("000001.SZ", 2, 10.0)])
    bad = stage("stock_daily", table=pa.Table.from_pylist([{**daily("000002.SZ", 2, 10.0), "vol": None}], schema=loose))
    stage("stock_daily", [daily("000003.SZ", 2, 10.0)])
    loader = Loader(config)
    loader.run_once()  # one batch fails, then each file alone
    loader.stop()
    assert table(config, "stock_daily", "ts_code") == [("000001.SZ",), ("000003.SZ",)]
    assert files_in(config.quarantine_dir) == [bad.name]
    assert "NOT NULL" in _report(config, bad)["error"]


@pytest.mark.backends(DUCKDB, reason=HELD_FILE)
def test_a_busy_database_is_retried_then_loaded(tmp_path, stage):
    config = loader_config(tmp_path, max_retries=1)
    stage("stock_daily", [daily("000001.SZ", 2, 10.0)])
    holder = hold_database(config.loader.database)  # a person has the warehouse open in the duckdb CLI
    try:
        loader = Loader(config)
        assert loader.run_once() == 0
        assert loader.run_once() == 0
        retry = loader.get_status()["retry"]
        assert retry["attempts"] == 2 and retry["slow"] and "lock" in retry["error"]
        assert retry["delay"] == config.loader.retry_max_delay
        snapshot = json.loads((config.run_dir / "loader.json").read_text())
        assert snapshot["retry"]["slow"] is True and snapshot["state"] == "retrying"
        assert files_in(config.staging_dir / "stock_daily") != []  # nothing dropped
    finally:
        release(holder)
    assert loader.run_once() == 1
    assert loader.get_status()["retry"] is None
    assert table(config, "stock_daily", "ts_code") == [("000001.SZ",)]
    loader.stop()


@pytest.mark.backends(LAKE_POSTGRES, reason="the catalog is a server that can be down")
def test_an_unreachable_catalog_is_retried_then_loaded(tmp_path, stage, postgres_server):
    config = loader_config(tmp_path, max_retries=1)
    stage("stock_daily", [daily("000001.SZ", 2, 10.0)])
    postgres_server.stop()
    try:
        loader = Loader(config)
        assert loader.run_once() == 0
        assert loader.run_once() == 0
        retry = loader.get_status()["retry"]
        assert retry["attempts"] == 2 and retry["slow"] and retry["what"] == "database busy"
        assert retry["error"].startswith(f"cannot open {config.loader.database}: ")
        assert "connect" in retry["error"].lower()  # what it waits for: the catalog's server
        snapshot = json.loads((config.run_dir / "loader.json").read_text())
        assert snapshot["retry"]["slow"] is True and snapshot["state"] == "retrying"
        assert files_in(config.staging_dir / "stock_daily") != [] and files_in(config.quarantine_dir) == []
    finally:
        postgres_server.start()
    assert loader.run_once() == 1
    assert loader.get_status()["retry"] is None
    assert table(config, "stock_daily", "ts_code") == [("000001.SZ",)]
    loader.stop()


@pytest.mark.backends(DUCKDB, reason=HELD_FILE)
def test_a_busy_database_says_which_database_and_what_failed_as_data(config):
    holder = hold_database(config.loader.database)
    try:
        with pytest.raises(DatabaseBusy) as caught:
            Warehouse(config.loader.database).open()
    finally:
        release(holder)
    busy = caught.value
    assert busy.database == config.loader.database and busy.doing == "open"
    assert isinstance(busy.cause, duckdb.IOException) and "lock" in str(busy.cause)
    assert str(busy).startswith(f"cannot open {config.loader.database}: ")


@pytest.mark.backends(LAKE_POSTGRES, reason="the catalog is a server that can be down")
def test_an_unreachable_catalog_says_which_database_and_what_failed_as_data(config, postgres_server):
    postgres_server.stop()
    try:
        with pytest.raises(DatabaseBusy) as caught:
            Warehouse(config.loader.database).open()
    finally:
        postgres_server.start()
    busy = caught.value
    assert busy.database == config.loader.database and busy.doing == "open"
    assert isinstance(busy.cause, duckdb.IOException) and "connect" in str(busy.cause).lower()
    assert str(busy).startswith(f"cannot open {config.loader.database}: ")


@pytest.mark.backends(LAKE_SQLITE, LAKE_POSTGRES, reason="only a DuckLake has a writer lock per task type")
def test_a_held_writer_lock_says_which_task_type_and_which_database_as_data(tmp_path, config):
    wh = Warehouse(config.loader.database)
    holder = hold_writer_lock(write_loader_config(tmp_path), "stock_daily")
    try:
        with pytest.raises(DatabaseBusy) as caught:
            with wh.writing("stock_daily", timeout=0.5):
                pass
        with wh.writing("stock_basic", timeout=0.5):  # another task type's lock is free
            pass
    finally:
        holder.close()
        wh.close()
    busy = caught.value
    assert busy.database == config.loader.database and busy.doing == "take the writer lock of stock_daily in"
    assert isinstance(busy.cause, LockTimeout) and "held by another loader" in str(busy.cause)
    assert str(busy).startswith(f"cannot take the writer lock of stock_daily in {config.loader.database}: ")


def test_a_failed_commit_leaves_the_file_in_staging_and_nothing_in_the_table(config, stage, monkeypatch):
    """Guarantee 1: a sealed file leaves staging/ only after its merge has committed."""
    from loader import warehouse

    path = stage("stock_daily", [daily("000001.SZ", 2, 10.0), daily("600000.SH", 2, 8.0)])
    real_commit = warehouse.Warehouse.commit
    failures = {"left": 1}

    def commit(self):
        if failures["left"]:
            failures["left"] -= 1
            raise duckdb.IOException("IO Error: could not write to the write-ahead log (disk full)")
        return real_commit(self)

    monkeypatch.setattr(warehouse.Warehouse, "commit", commit)
    loader = Loader(config)
    loader.run_once()
    assert path.exists()  # still staged: not archived, not quarantined
    assert files_in(config.quarantine_dir) == []
    # The rolled-back transaction had created the table too: nothing of it is left.
    assert not has_table(config, "stock_daily")
    assert query(config, "SELECT count(*) FROM _duckstage_manifest") == [(0,)]
    assert loader.get_status()["retry"] is not None  # an I/O error is retried, not a refused file
    loader.clock = lambda: 10**9  # past the backoff
    loader.run_once()
    assert not path.exists()
    assert table(config, "stock_daily", "ts_code, close") == [("000001.SZ", 10.0), ("600000.SH", 8.0)]
    loader.stop()


@pytest.mark.backends(LAKE_SQLITE, LAKE_POSTGRES, reason="a DuckDB file has one writer; a DuckLake's commit can"
                                                        " lose to another loader's")
def test_a_commit_that_loses_to_another_task_types_loader_is_retried_not_quarantined(config, stage, monkeypatch):
    """Another loader commits first, to the manifest rows of another task type (whose writer lock
    it holds, not this one's); DuckLake refuses this commit, and the loader tries it again."""
    from loader import warehouse

    stage("stock_basic", [{"ts_code": "000001.SZ", "symbol": "000001", "name": "PA", "_task_id": "t",
                           "_fetched_at": daily("x", 1, 1.0)["_fetched_at"]}])
    loader = Loader(config)
    assert loader.run_once() == 1
    path = stage("stock_daily", [daily("000001.SZ", 2, 10.0)])
    real_commit = warehouse.Warehouse.commit
    raced = []

    def commit(self):
        if not raced:  # a `loader reload` of stock_basic elsewhere, committed while this transaction is open
            query(config, "UPDATE _duckstage_manifest SET loads = loads + 1 WHERE task_type = 'stock_basic'")
            raced.append(self)
        return real_commit(self)

    monkeypatch.setattr(warehouse.Warehouse, "commit", commit)
    assert loader.run_once() == 0
    retry = loader.get_status()["retry"]
    assert retry is not None and retry["what"] == "database busy", retry
    assert retry["error"].startswith(f"cannot commit to {config.loader.database}: TransactionContext Error"), retry
    assert path.exists() and files_in(config.quarantine_dir) == []
    assert not has_table(config, "stock_daily")
    loader.clock = lambda: 10**9  # past the backoff
    assert loader.run_once() == 1
    loader.stop()
    assert table(config, "stock_daily", "ts_code, close") == [("000001.SZ", 10.0)]
    assert query(config, "SELECT task_type, loads FROM _duckstage_manifest ORDER BY task_type") == \
        [("stock_basic", 2), ("stock_daily", 1)]


def test_a_file_that_cannot_be_archived_is_loaded_once_and_archived_later(config, stage, monkeypatch):
    from loader import filing

    path = stage("stock_daily", [daily("000001.SZ", 2, 10.0)])
    real_archive = filing.archive
    failures = {"left": 1}

    def archive(*args, **kwargs):
        if failures["left"]:
            failures["left"] -= 1
            raise OSError(28, "No space left on device")
        return real_archive(*args, **kwargs)

    monkeypatch.setattr(filing, "archive", archive)
    loader = Loader(config)
    loader.run_once()
    assert path.exists()  # committed, not moved
    assert query(config, "SELECT loads FROM _duckstage_manifest") == [(1,)]
    loader.run_once()
    assert not path.exists() and files_in(config.archive_dir) == [path.name]
    assert query(config, "SELECT loads FROM _duckstage_manifest") == [(1,)]  # not merged twice
    assert table(config, "stock_daily", "ts_code, close") == [("000001.SZ", 10.0)]
    loader.stop()


def test_an_unreadable_staging_folder_is_retried_not_fatal(config, stage):
    path = stage("stock_daily", [daily("000001.SZ", 2, 10.0)])
    folder = config.staging_dir / "stock_daily"
    moved = folder.with_name("stock_daily.away")
    folder.rename(moved)
    folder.write_text("not a folder")  # staging/stock_daily is now a file
    loader = Loader(config)
    assert loader.run_once() == 0  # no exception: the step is retried with backoff
    assert loader.get_status()["retry"] is not None
    folder.unlink()
    moved.rename(folder)
    loader.clock = lambda: 10**9
    assert loader.run_once() == 1
    assert not path.exists() and table(config, "stock_daily", "ts_code, close") == [("000001.SZ", 10.0)]
    loader.stop()
