"""Reload and rebuild: replays are idempotent, never roll back unless forced, and rebuild reproduces."""

import pytest

from loader import Loader
from loader.exceptions import LoaderError
from loader.load import rebuild, resolve_paths
from loader.warehouse import MANIFEST, Warehouse

from tests.loader.helpers import DUCKDB, NO_WAREHOUSE, daily, files_in, query, reload_files, table


def _load(config, stage):
    old = stage("stock_daily", [daily("000001.SZ", 2, 10.0, minutes=1), daily("600000.SH", 2, 5.0, minutes=1)])
    stage("stock_daily", [daily("000001.SZ", 2, 11.0, minutes=2), daily("000001.SZ", 3, 12.0, minutes=2)])
    loader = Loader(config)
    loader.run_once()
    loader.stop()
    return next(config.archive_dir.rglob(old.name))


def test_reload_of_a_loaded_file_changes_nothing(config, stage):
    _load(config, stage)
    before = table(config, "stock_daily")
    out = reload_files(config, [config.archive_dir / "stock_daily" / "*" / "*.parquet"])
    assert len(out.loaded) == 2
    assert table(config, "stock_daily") == before
    assert query(config, f"SELECT count(*), sum(loads) FROM {MANIFEST}") == [(2, 4)]
    assert len(files_in(config.archive_dir)) == 2  # archived files stay where they are


def test_an_old_file_replayed_does_not_roll_back_but_force_does(config, stage):
    old = _load(config, stage)
    out = reload_files(config, [old])
    assert out.updated == 0
    assert table(config, "stock_daily", "ts_code, close") == [("000001.SZ", 11.0), ("000001.SZ", 12.0),
                                                              ("600000.SH", 5.0)]
    out = reload_files(config, [old], force=True)
    assert out.updated == 2
    assert table(config, "stock_daily", "ts_code, close") == [("000001.SZ", 10.0), ("000001.SZ", 12.0),
                                                              ("600000.SH", 5.0)]
    assert query(config, f"SELECT forced FROM {MANIFEST} WHERE file = ?", [old.name]) == [(True,)]


def test_reload_of_a_quarantined_file_archives_it(config, stage):
    path = stage("stock_daily", [daily("000001.SZ", 2, 10.0)])
    (config.quarantine_dir / "stock_daily").mkdir(parents=True)
    moved = config.quarantine_dir / "stock_daily" / path.name
    path.rename(moved)
    moved.with_name(moved.name + ".error.json").write_text("{}")
    reload_files(config, [moved])
    assert table(config, "stock_daily", "close") == [(10.0,)]
    assert files_in(config.quarantine_dir, "*.*") == []
    assert files_in(config.archive_dir) == [path.name]


@pytest.mark.backends(DUCKDB, reason=NO_WAREHOUSE)
def test_reload_refuses_paths_that_are_not_staged_files(config, tmp_path):
    (tmp_path / "x.parquet").write_text("no")
    with pytest.raises(LoaderError, match="not a staged file"):
        resolve_paths(config, [str(tmp_path / "x.parquet")])
    with pytest.raises(LoaderError, match="no such file"):
        resolve_paths(config, [str(tmp_path / "nothing-*.parquet")])


def test_rebuild_reproduces_the_tables(config, stage):
    _load(config, stage)
    before = table(config, "stock_daily")
    manifest = query(config, f"SELECT file, rows, inserted, updated FROM {MANIFEST} ORDER BY file")
    wh = Warehouse(config.loader.database).open()
    wh.con.execute("UPDATE stock_daily SET close = -1")
    wh.con.execute("INSERT INTO stock_daily (ts_code, trade_date, open, high, low, close, vol, amount, _task_id,"
                   " _fetched_at) VALUES ('999999.SH', DATE '2025-01-01', 1, 1, 1, 1, 1, 1, 'x', now()::TIMESTAMP)")
    try:
        out = rebuild(wh, config, ["stock_daily"])
    finally:
        wh.close()
    assert len(out.loaded) == 2
    assert table(config, "stock_daily") == before
    assert query(config, f"SELECT file, rows, inserted, updated FROM {MANIFEST} ORDER BY file") == manifest
