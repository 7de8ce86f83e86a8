"""Rebuild replays every file the manifest lists or stops; reload never moves anything outside data/."""

import os
import shutil

import pytest

from loader import Loader
from loader.exceptions import LoaderError
from loader.load import rebuild, resolve_paths
from loader.warehouse import MANIFEST, Warehouse

from tests.loader.helpers import (DUCKDB, NO_WAREHOUSE, Stage, daily, files_in, loader_config, query, reload_files,
                                  run_cli, table, write_loader_config)


def _load(config, stage, files=3):
    paths = [stage("stock_daily", [daily(f"{i:06d}.SZ", day, 10.0 + day) for day in (2, 3)])
             for i in range(1, files + 1)]
    loader = Loader(config)
    loader.run_once()
    loader.stop()
    return [next(config.archive_dir.rglob(p.name)) for p in paths]


def _rebuild(config, task_types=("stock_daily",)):
    wh = Warehouse(config.loader.database).open()
    try:
        return rebuild(wh, config, list(task_types))
    finally:
        wh.close()


def _state(config):
    return table(config, "stock_daily"), query(config, f"SELECT file, rows, loads FROM {MANIFEST} ORDER BY file")


# -- 2. rebuild: every file the manifest lists, or nothing ----------------------------------------


def test_rebuild_stops_on_an_archived_file_whose_name_ends_in_a_newline(config, stage):
    archived = _load(config, stage)
    # What an older loader left: it took a name with a final newline, and the manifest lists it.
    odd = archived[1].with_name(archived[1].name + "\n")
    archived[1].rename(odd)
    query(config, f"UPDATE {MANIFEST} SET file = ? WHERE file = ?", [odd.name, archived[1].name])
    before = _state(config)

    with pytest.raises(LoaderError) as raised:
        _rebuild(config)

    assert repr(odd.name) in str(raised.value) and "old table is kept" in str(raised.value)
    assert _state(config) == before and len(before[0]) == 6
    assert odd.exists() and files_in(config.quarantine_dir) == []


def test_rebuild_stops_on_an_archived_symlink_whose_target_vanished_and_moves_nothing(config, stage, tmp_path):
    archived = _load(config, stage)
    gone = tmp_path / "gone.parquet"
    archived[0].unlink()
    archived[0].symlink_to(gone)
    before = _state(config)

    with pytest.raises(LoaderError) as raised:
        _rebuild(config)

    message = str(raised.value)
    assert archived[0].name in message and "symbolic link" in message and str(gone) in message
    assert _state(config) == before
    assert archived[0].is_symlink() and files_in(config.quarantine_dir) == []


def test_rebuild_stops_when_a_listed_file_is_missing_from_the_archive(config, stage):
    archived = _load(config, stage)
    archived[2].unlink()
    before = _state(config)
    with pytest.raises(LoaderError, match=archived[2].name):
        _rebuild(config)
    assert _state(config) == before


def test_rebuild_cli_exits_1_unfinished_and_keeps_the_table(tmp_path):
    config_path = write_loader_config(tmp_path)
    config = loader_config(tmp_path)
    archived = _load(config, Stage(config))
    archived[0].unlink()
    before = _state(config)
    done = run_cli(config_path, "rebuild")
    # The request was sound; the work did not finish (exit 1, not 2, which is a person's mistake).
    assert done.returncode == 1, done.stdout + done.stderr
    assert archived[0].name in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert _state(config) == before


def test_rebuild_leaves_out_files_removed_by_retention_and_says_so(tmp_path):
    config_path = write_loader_config(tmp_path, archive_retention_days=30)  # the files are from January 2025
    config = loader_config(tmp_path, archive_retention_days=30)
    archived = _load(config, Stage(config))
    shutil.rmtree(archived[0].parent)  # what the retention sweep does to a day folder
    done = run_cli(config_path, "rebuild")
    assert done.returncode == 0, done.stderr
    assert "3 file(s) in the manifest were removed by archive retention" in done.stderr
    assert "0 file(s) merged" in done.stdout
    assert query(config, f"SELECT count(*) FROM {MANIFEST}") == [(0,)]


def test_rebuild_replays_a_duplicate_as_a_duplicate(config, stage):
    archived = _load(config, stage, files=1)
    dup = stage("stock_daily", [daily("000001.SZ", 2, 12.0), daily("000001.SZ", 3, 13.0)])
    shutil.copy(archived[0], dup)  # the same content under a later name
    loader = Loader(config)
    loader.run_once()
    loader.stop()
    before = _state(config)
    out = _rebuild(config)
    assert out.loaded == [archived[0].name] and out.duplicates == [dup.name]
    assert _state(config) == before
    done = run_cli(write_loader_config(config.data_dir.parent), "reload", str(next(config.archive_dir.rglob(dup.name))))
    assert done.returncode == 0, done.stderr
    assert "0 file(s) merged" in done.stdout and "1 duplicate(s) of loaded files" in done.stdout
    assert _state(config) == before


# -- 4. reload never moves, renames or deletes anything outside data/ -----------------------------


def _outside_copy(config, archived, tmp_path):
    """Move an archived file out of data/ and forget it was loaded; return its new path."""
    outside = tmp_path / "elsewhere"
    outside.mkdir(exist_ok=True)
    target = outside / archived.name
    shutil.move(archived, target)
    query(config, "DELETE FROM stock_daily WHERE ts_code = '000001.SZ'")
    query(config, f"DELETE FROM {MANIFEST} WHERE file = ?", [archived.name])
    return target


def test_reload_of_a_quarantined_symlink_copies_the_target_in_and_leaves_it_where_it_is(config, stage, tmp_path):
    archived = _load(config, stage)
    target = _outside_copy(config, archived[0], tmp_path)
    content = target.read_bytes()
    folder = config.quarantine_dir / "stock_daily"
    folder.mkdir(parents=True)
    link = folder / archived[0].name
    link.symlink_to(target)
    (folder / (link.name + ".error.json")).write_text("{}")

    out = reload_files(config, [link])

    assert out.loaded == [link.name]
    assert target.read_bytes() == content and os.listdir(target.parent) == [target.name]
    copy = config.archive_dir / "stock_daily" / archived[0].parent.name / link.name
    assert copy.is_file() and not copy.is_symlink() and copy.read_bytes() == content
    assert os.listdir(folder) == []  # the link and its report went, the target did not
    assert query(config, "SELECT count(*) FROM stock_daily WHERE ts_code = '000001.SZ'") == [(2,)]


def test_reload_of_a_link_to_a_file_that_is_not_parquet_moves_nothing_outside(config, stage, tmp_path):
    secret = tmp_path / "etc" / "passwd"
    secret.parent.mkdir()
    secret.write_text("root:x:0:0:root:/root:/bin/bash\n")
    archived = _load(config, stage, files=1)
    link = config.quarantine_dir / "stock_daily" / archived[0].name.replace("000001", "000009")
    link.parent.mkdir(parents=True)
    link.symlink_to(secret)

    out = reload_files(config, [link])

    assert out.quarantined == [link.name] and out.loaded == []
    assert secret.read_text().startswith("root:") and os.listdir(secret.parent) == ["passwd"]
    assert link.is_file() and not link.is_symlink()  # the quarantined copy replaced the link


def test_reload_of_a_file_outside_data_copies_it_into_the_archive(config, stage, tmp_path):
    archived = _load(config, stage)
    target = _outside_copy(config, archived[0], tmp_path)
    content = target.read_bytes()
    out = reload_files(config, [target])
    assert out.loaded == [target.name]
    assert target.read_bytes() == content
    assert archived[0].read_bytes() == content  # back in the archive, as a copy
    assert query(config, "SELECT count(*) FROM stock_daily WHERE ts_code = '000001.SZ'") == [(2,)]
    # A rebuild can replay it, since its copy is archived.
    before = _state(config)
    _rebuild(config)
    assert _state(config)[0] == before[0]


def test_reload_of_an_archived_symlink_replaces_the_link_with_a_copy(config, stage, tmp_path):
    archived = _load(config, stage)
    target = _outside_copy(config, archived[0], tmp_path)
    archived[0].symlink_to(target)
    reload_files(config, [archived[0]])
    assert target.exists() and not archived[0].is_symlink() and archived[0].read_bytes() == target.read_bytes()
    assert query(config, f"SELECT count(*) FROM {MANIFEST}") == [(3,)]


def test_reload_refuses_a_different_file_under_an_archived_name(config, stage, tmp_path):
    archived = _load(config, stage)
    other = tmp_path / "elsewhere" / archived[0].name
    other.parent.mkdir()
    shutil.copy(archived[1], other)
    with pytest.raises(LoaderError, match="different file"):
        reload_files(config, [other])
    assert other.exists()


@pytest.mark.backends(DUCKDB, reason=NO_WAREHOUSE)
def test_reload_refuses_a_link_to_something_that_is_not_a_regular_file(config, tmp_path):
    link = tmp_path / "stock_daily-20250106T080001000000Z-t1-000001.parquet"
    link.symlink_to(tmp_path / "nothing")
    with pytest.raises(LoaderError, match="not a regular file"):
        resolve_paths(config, [str(link)])
    fifo = tmp_path / "stock_daily-20250106T080002000000Z-t1-000002.parquet"
    os.mkfifo(fifo)
    with pytest.raises(LoaderError, match="not a regular file"):
        resolve_paths(config, [str(fifo)])


def test_reload_cli_leaves_the_target_of_a_quarantined_link_in_place(tmp_path):
    config_path = write_loader_config(tmp_path)
    config = loader_config(tmp_path)
    archived = _load(config, Stage(config))
    target = _outside_copy(config, archived[0], tmp_path)
    link = config.quarantine_dir / "stock_daily" / archived[0].name
    link.parent.mkdir(parents=True)
    link.symlink_to(target)
    done = run_cli(config_path, "reload", str(link))
    assert done.returncode == 0, done.stderr
    assert "1 file(s) merged" in done.stdout
    assert target.exists() and not link.exists() and archived[0].is_file()
