"""What the loader takes in from staging/: regular files with full-match names, sane footers,
no column names that clash with its own, and one merge per content.

Everything else is quarantined as itself or listed as "not a staged file";
nothing outside data/ is read, moved or deleted.
"""

import datetime as dt
import json
import os
import shutil
import stat
import subprocess
import sys
import textwrap
import threading

import pyarrow as pa
import pytest

from loader import Loader
from loader.metrics import families
from loader.status import collect, render
from loader.warehouse import MANIFEST
from duckstage.staging import StagedFile

from tests.loader.helpers import (BASE, DUCKDB, NO_WAREHOUSE, daily, files_in, has_table, query, table,
                                  write_loader_config)


def _report(config, name, task_type="stock_daily"):
    return json.loads((config.quarantine_dir / task_type / (name + ".error.json")).read_text())


def _load_once(config):
    loader = Loader(config)
    try:
        loader.run_once()
        return loader.get_status()
    finally:
        loader.stop()


def _sealed_name(seq, task_type="stock_daily", instance="x9"):
    """A sealed name that sorts after every file the ``stage`` fixture seals."""
    return StagedFile.new(task_type, instance, seq, now=BASE + dt.timedelta(hours=1)).name


def _metric(status, name):
    for family in families(status):
        for sample in family.samples:
            if sample.name == name:
                return sample.value
    return None


# -- 1. column names the loader uses itself ----------------------------------------------


def _twice_each(config, name):
    """60 keys, each twice (an older and a newer version), with an extra column ``name``."""
    rows = [daily(f"{i:06d}.SZ", 2, 10.0, minutes=1) for i in range(1, 61)]
    rows += [daily(f"{i:06d}.SZ", 2, 11.0, minutes=2) for i in range(1, 61)]
    t = pa.Table.from_pylist(rows, schema=config.datasets["stock_daily"].arrow_schema)
    # Each key's two rows share one value: a column read as DuckDB's rowid would match both.
    return t.append_column(name, pa.array([i % 60 for i in range(120)], pa.int64()))


@pytest.mark.parametrize("name", ["rowid", "__ord", "__row", "__file", "__rank", "filename", "file_index"])
def test_a_data_column_named_like_an_internal_or_pseudo_column_loads_every_row(config, stage, name):
    path = stage("stock_daily", table=_twice_each(config, name))
    _load_once(config)
    assert files_in(config.quarantine_dir) == []
    assert query(config, "SELECT count(*), min(close), max(close) FROM stock_daily") == [(60, 11.0, 11.0)]
    assert query(config, f'SELECT count(DISTINCT "{name}") FROM stock_daily') == [(60,)]
    assert query(config, f"SELECT file, rows, inserted, updated FROM {MANIFEST}") == [(path.name, 120, 60, 0)]


@pytest.mark.parametrize("name", ["file_row_number", "File_Row_Number", "__duckstage_ord", "__DuckStage_x"])
def test_a_column_with_a_reserved_name_is_quarantined_with_that_reason(config, stage, name):
    good = stage("stock_daily", [daily("000001.SZ", 2, 10.0)])
    path = stage("stock_daily", table=_twice_each(config, name))
    _load_once(config)
    assert table(config, "stock_daily", "ts_code") == [("000001.SZ",)]
    assert files_in(config.archive_dir) == [good.name]
    report = _report(config, path.name)
    assert name in report["error"] and "reserved" in report["error"] and report["reason"] == "reserved_column"
    assert "rename" in report["what_to_do"]


@pytest.mark.backends(DUCKDB, reason=NO_WAREHOUSE)
@pytest.mark.parametrize("name", ["file_row_number", "File_Row_Number", "__duckstage_ord", "__DuckStage_x"])
def test_the_stager_never_stages_a_column_the_loader_would_quarantine(config, name):
    from duckstage.datasets import reserved_by_loader, undeclared_name_problem

    assert reserved_by_loader(name)
    assert undeclared_name_problem(name, config.datasets["stock_daily"]) is not None


# -- 3. symbolic links -------------------------------------------------------------------------


def test_a_symlinked_staged_file_is_quarantined_as_a_link_and_its_target_left_alone(config, stage, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    source = stage("stock_daily", [daily("000009.SZ", 2, 10.0)])
    target = outside / source.name
    shutil.move(source, target)
    before = target.read_bytes()
    link = config.staging_dir / "stock_daily" / _sealed_name(99)
    link.symlink_to(target)
    good = stage("stock_daily", [daily("000001.SZ", 2, 10.0)])

    _load_once(config)

    assert table(config, "stock_daily", "ts_code") == [("000001.SZ",)]
    assert files_in(config.archive_dir) == [good.name]
    moved = config.quarantine_dir / "stock_daily" / link.name
    assert moved.is_symlink() and os.readlink(moved) == str(target)
    assert target.read_bytes() == before and sorted(os.listdir(outside)) == [target.name]
    report = _report(config, link.name)
    assert "symbolic link" in report["error"] and str(target) in report["error"]


def test_a_symlinked_task_type_folder_is_quarantined_and_nothing_in_it_is_read_or_moved(config, stage, tmp_path):
    stage("stock_daily", [daily("000009.SZ", 2, 10.0)])
    outside = tmp_path / "outside"
    shutil.move(config.staging_dir / "stock_daily", outside)
    inside = sorted(os.listdir(outside))
    (config.staging_dir / "stock_daily").symlink_to(outside, target_is_directory=True)
    basic = stage("stock_basic", [{"ts_code": "000001.SZ", "symbol": "000001", "name": "PA",
                                   "_task_id": "t", "_fetched_at": BASE.replace(tzinfo=None)}])

    _load_once(config)

    assert sorted(os.listdir(outside)) == inside  # nothing moved out of the outside folder
    assert not has_table(config, "stock_daily")
    assert table(config, "stock_basic", "ts_code", order="ts_code") == [("000001.SZ",)]
    assert files_in(config.archive_dir) == [basic.name]
    moved = config.quarantine_dir / "stock_daily" / "stock_daily"
    assert moved.is_symlink() and os.readlink(moved) == str(outside)
    assert not (config.staging_dir / "stock_daily").exists()
    assert str(outside) in _report(config, "stock_daily")["error"]


# -- 5. names ---------------------------------------------------------------------------------


def test_names_that_are_not_full_sealed_names_are_never_loaded_and_always_listed(config, stage):
    good = stage("stock_daily", [daily("000001.SZ", 2, 10.0)])
    folder = config.staging_dir / "stock_daily"
    other = stage("stock_daily", [daily("000002.SZ", 2, 10.0)])
    newline = folder / (_sealed_name(7) + "\n")
    other.rename(newline)
    odd = ["stock_daily-2025'01.parquet", "x;rm.parquet", "notes.txt"]
    for name in odd:
        shutil.copy(good, folder / name)
    (config.staging_dir / "loose.parquet").write_bytes(good.read_bytes())

    status = _load_once(config)

    assert table(config, "stock_daily", "ts_code") == [("000001.SZ",)]
    expected = sorted([f"stock_daily/{n}" for n in [newline.name, *odd]] + ["loose.parquet"])
    assert status["not_staged"] == {"files": 5, "names": expected}
    assert _metric(status, "duckstage_loader_not_staged_files") == 5
    st = collect(config)
    assert st["not_staged"] == {"files": 5, "names": expected}
    text = render(st)
    assert "not a staged file: stock_daily/x;rm.parquet" in text
    assert repr(newline.name)[1:-1] in text  # the newline is shown, not printed
    assert os.path.exists(newline) and files_in(config.quarantine_dir) == []


# -- 6. files that are not regular files ----------------------------------------------------


def _in_thread(fn, fifo, timeout=20):
    """Run ``fn``; if it is still blocked after ``timeout``, open the FIFO's write end to free it."""
    result = {}
    worker = threading.Thread(target=lambda: result.setdefault("value", fn()), daemon=True)
    worker.start()
    worker.join(timeout)
    blocked = worker.is_alive()
    if blocked:
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        worker.join(10)
    return blocked, result.get("value")


def test_a_fifo_named_like_a_sealed_file_is_quarantined_without_blocking(config, stage):
    good = stage("stock_daily", [daily("000001.SZ", 2, 10.0)])
    fifo = config.staging_dir / "stock_daily" / _sealed_name(8)
    os.mkfifo(fifo)

    blocked, st = _in_thread(lambda: collect(config), fifo)
    assert not blocked, "loader status blocked on a FIFO"
    assert st["pending"]["stock_daily"]["files"] == 2

    loader = Loader(config)
    try:
        blocked, _ = _in_thread(loader.run_once, fifo)
    finally:
        loader.stop()
    assert not blocked, "the load step blocked on a FIFO"
    assert table(config, "stock_daily", "ts_code") == [("000001.SZ",)]
    assert files_in(config.archive_dir) == [good.name]
    assert stat.S_ISFIFO(os.lstat(config.quarantine_dir / "stock_daily" / fifo.name).st_mode)
    assert "not a regular file" in _report(config, fifo.name)["error"]


# -- 10. footers --------------------------------------------------------------------------------


@pytest.mark.backends(DUCKDB, reason=NO_WAREHOUSE)
def test_a_footer_claiming_a_huge_length_is_refused_before_it_is_read(tmp_path):
    """A 200 MB (sparse) file whose last 8 bytes claim a 190 MB footer."""
    config_path = write_loader_config(tmp_path)
    folder = tmp_path / "data" / "staging" / "stock_daily"
    folder.mkdir(parents=True)
    path = folder / _sealed_name(1)
    size, claimed = 200 * 2**20, 190 * 2**20
    with open(path, "wb") as f:
        f.write(b"PAR1")
        f.truncate(size - 8)
        f.seek(size - 8)
        f.write(claimed.to_bytes(4, "little") + b"PAR1")
    script = textwrap.dedent("""
        import json, resource, sys
        from loader.discovery import inspect
        from loader.exceptions import FileRefused
        from duckstage.config import load_config
        dataset = load_config(sys.argv[1]).datasets["stock_daily"]
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        try:
            inspect(sys.argv[2], dataset)
            error = None
        except FileRefused as exc:
            error = exc.error
        grew = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
        print(json.dumps({"grew_kb": grew, "error": error}))
    """)
    done = subprocess.run([sys.executable, "-c", script, str(config_path), str(path)], capture_output=True,
                          text=True, timeout=60, cwd=str(tmp_path))
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["error"] and "footer" in out["error"] and str(claimed) in out["error"]
    assert out["grew_kb"] < 50 * 1024, f"peak memory grew by {out['grew_kb']} KB reading a refused footer"


@pytest.mark.parametrize("tail", [b"\x00\x00\x00\x00PAR1", (2**31).to_bytes(4, "little") + b"PAR1", b"PAR1PAR2"])
def test_a_footer_length_that_cannot_be_right_is_a_clear_quarantine(config, stage, tail):
    path = stage("stock_daily", [daily("000001.SZ", 2, 10.0)])
    data = path.read_bytes()
    path.write_bytes(data[:-8] + tail)
    os.utime(path, (path.stat().st_mtime - 60,) * 2)  # damaged a while ago, not still being copied in
    _load_once(config)
    assert files_in(config.quarantine_dir) == [path.name]
    error = _report(config, path.name)["error"]
    assert "unreadable Parquet file" in error and ("footer" in error or "magic" in error)


# -- 12. the same content under a second name ------------------------------------------------


def test_the_same_content_under_a_second_name_is_archived_not_merged_again(config, stage):
    rows = [daily("000001.SZ", 2, 10.0), daily("600000.SH", 2, 8.0)]
    first = stage("stock_daily", rows)
    second = first.with_name(_sealed_name(50))  # in the same scan as the first
    shutil.copy(first, second)

    status = _load_once(config)

    assert query(config, f"SELECT file, rows, inserted FROM {MANIFEST}") == [(first.name, 2, 2)]
    assert files_in(config.archive_dir) == sorted([first.name, second.name])
    assert files_in(config.staging_dir) == []
    assert status["task_types"]["stock_daily"]["files_duplicate"] == 1
    assert status["since_start"]["files_duplicate"] == 1
    assert status["manifest"]["stock_daily"]["rows"] == 2

    third = config.staging_dir / "stock_daily" / _sealed_name(60)  # a later step, the first committed
    third.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(next(config.archive_dir.rglob(first.name)), third)
    status = _load_once(config)
    assert status["task_types"]["stock_daily"]["files_duplicate"] == 1
    assert query(config, f"SELECT count(*), sum(rows) FROM {MANIFEST}") == [(1, 2)]
    assert table(config, "stock_daily", "ts_code, close") == [("000001.SZ", 10.0), ("600000.SH", 8.0)]
    assert len(files_in(config.archive_dir)) == 3


def test_a_duplicate_of_a_refused_file_is_refused_too_not_skipped(config, stage):
    """The first copy never committed, so the second is judged on its own (and refused the same way)."""
    schema = config.datasets["stock_daily"].arrow_schema
    loose = pa.schema([f.with_nullable(True) for f in schema])
    bad = stage("stock_daily", table=pa.Table.from_pylist([{**daily("000002.SZ", 2, 10.0), "vol": None}],
                                                          schema=loose))
    copy = bad.with_name(_sealed_name(50))
    shutil.copy(bad, copy)
    _load_once(config)
    assert files_in(config.quarantine_dir) == sorted([bad.name, copy.name])
    assert files_in(config.archive_dir) == []
