"""File system faults around a load: staging on its own file system, a name too long
for its report, archive/ or quarantine/ that takes no file, a file still being copied in.

Each test builds the real state on disk (a tmpfs mounted on staging/, a folder
replaced by a plain file, a file written slowly by another thread) and checks
where the files end up and what the warehouse holds.
"""

import contextlib
import json
import logging
import os
import random
import subprocess
import threading
import time

import pytest

from loader import Loader, filing
from loader.warehouse import MANIFEST
from duckstage.staging import StagedFile

from tests.helpers import eventually, hold_database, release
from tests.loader.helpers import (DUCKDB, LAKE_POSTGRES, LAKE_SQLITE, NO_WAREHOUSE, Stage, daily, files_in, has_table,
                                  kill_9_lives, loader_config, query, run_cli, table, write_loader_config)


def _loads(config):
    return query(config, f"SELECT file, loads FROM {MANIFEST} ORDER BY file")


def _aged(path, seconds=60):
    """Make ``path`` look untouched for ``seconds``: damaged a while ago, not still being copied in."""
    then = time.time() - seconds
    os.utime(path, (then, then))
    return path


def _basic(code):
    return {"ts_code": code, "symbol": code[:6], "name": f"name {code}", "_task_id": "task-1",
            "_fetched_at": daily(code, 1, 1.0)["_fetched_at"]}


# -- staging/ on its own file system ------------------------------------------------


@contextlib.contextmanager
def tmpfs(folder, size, what):
    """A real tmpfs of ``size`` mounted on ``folder`` (``what`` names it in a skip), unmounted after."""
    if os.geteuid() != 0:
        pytest.skip(f"needs root to mount a tmpfs on {what} (CI runs the tests as root)")
    folder.mkdir(parents=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                             capture_output=True, text=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs on {what} here: {mounted.stderr.strip()}")
    try:
        assert os.stat(folder).st_dev != os.stat(folder.parent).st_dev
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)


@pytest.fixture
def staging_on_tmpfs(tmp_path):
    """``data/staging`` as a real tmpfs: another file system than ``data/archive``."""
    with tmpfs(tmp_path / "data" / "staging", "64m", "staging/") as folder:
        yield folder


def test_staging_on_another_file_system_is_archived_by_copy(tmp_path, staging_on_tmpfs):
    config = loader_config(tmp_path)
    stage = Stage(config)
    first = stage("stock_daily", [daily("000001.SZ", 2, 10.0)])
    basic = stage("stock_basic", [_basic("600000.SH")])
    # A name near the file system's limit (copied in by hand: too long to be sealed in place),
    # too long for ".<name>.tmp": its temporary copy needs a shorter name.
    sealed = stage("stock_daily", [daily("000002.SZ", 2, 20.0)], instance="x" * 150)
    sealed = sealed.rename(sealed.with_name(sealed.name.replace("x" * 150, "x" * 202)))
    assert len(sealed.name) == 252
    expected = {p.name: p.read_bytes() for p in (first, basic, sealed)}

    loader = Loader(config)
    assert loader.run_once() == 3
    loader.stop()

    assert files_in(config.staging_dir) == [] and loader.get_status()["retry"] is None
    archived = {p.name: p.read_bytes() for p in config.archive_dir.rglob("*") if p.is_file()}
    assert archived == expected  # whole copies, no temporary file left beside them
    assert table(config, "stock_daily", "ts_code, close") == [("000001.SZ", 10.0), ("000002.SZ", 20.0)]
    assert [n for _, n in _loads(config)] == [1, 1, 1]


def _loaded_then_crashed(config, stage):
    """Load one file, then put it back in staging/: committed, the move to archive/ cut short."""
    path = stage("stock_daily", [daily("000001.SZ", 2, 10.0)])
    body = path.read_bytes()
    loader = Loader(config)
    assert loader.run_once() == 1
    loader.stop()
    archived = filing.archive_path(config.archive_dir, path)
    path.write_bytes(archived.read_bytes())
    return path, archived, body


def test_a_crash_after_the_copy_before_the_unlink_is_finished_not_reloaded(tmp_path, staging_on_tmpfs):
    config = loader_config(tmp_path)
    path, archived, body = _loaded_then_crashed(config, Stage(config))
    assert path.exists() and archived.exists()  # the file in both places, as the crash left it

    loader = Loader(config)
    assert loader.run_once() == 1  # recognised by the manifest: archived, not merged
    loader.stop()
    assert not path.exists() and archived.read_bytes() == body
    assert _loads(config) == [(path.name, 1)]
    assert table(config, "stock_daily", "ts_code, close") == [("000001.SZ", 10.0)]


def test_a_half_copied_archive_file_never_passes_for_a_whole_one(tmp_path, staging_on_tmpfs):
    config = loader_config(tmp_path)
    path, archived, body = _loaded_then_crashed(config, Stage(config))
    archived.unlink()
    half = archived.with_name("." + archived.name + ".tmp")  # the copy a crash cut in the middle
    half.write_bytes(body[: len(body) // 2])
    assert filing.archived_files(config.archive_dir, "stock_daily") == []  # no replay would read it

    loader = Loader(config)
    assert loader.run_once() == 1
    loader.stop()
    assert not path.exists() and not half.exists()
    assert filing.archived_files(config.archive_dir, "stock_daily") == [archived]
    assert archived.read_bytes() == body
    assert _loads(config) == [(path.name, 1)]


@pytest.mark.backends(DUCKDB, reason=NO_WAREHOUSE)
def test_a_leftover_temporary_copy_of_a_file_long_gone_is_removed(tmp_path, staging_on_tmpfs):
    config = loader_config(tmp_path)
    leftover = config.archive_dir / "stock_daily" / "2025-01-06" / ".stock_daily-x.parquet.tmp"
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(b"PAR1 half")
    loader = Loader(config)
    loader.run_once()
    loader.stop()
    assert not leftover.exists()


@pytest.mark.timeout(240)
def test_kill_9_while_archiving_across_file_systems_converges(tmp_path, backend, staging_on_tmpfs):
    path = write_loader_config(tmp_path, max_rows_per_transaction=400)
    config = loader_config(tmp_path)
    stage = Stage(config)
    rng = random.Random(5)
    # A DuckLake's commits and connections cost more (test_process's kill -9 test): fewer files, longer lives.
    files, first = (10, (1.5, 3.0)) if backend.is_lake else (40, (0.6, 1.2))
    for n in range(files):
        stage("stock_daily", [daily(f"{rng.randint(1, 30):06d}.SZ", rng.randint(1, 28), float(n), minutes=n)
                              for _ in range(50)])
    total = len(files_in(config.staging_dir))
    kill_9_lives(path, config.staging_dir, rng, 30, first=first)
    assert files_in(config.staging_dir) == [], "not done after 30 lives"
    assert files_in(config.quarantine_dir) == []
    archived = [p for p in config.archive_dir.rglob("*") if p.is_file()]
    assert len(archived) == total and all(StagedFile.parse(p.name) for p in archived)
    assert query(config, f"SELECT count(*), count(DISTINCT file), max(loads) FROM {MANIFEST}") == [(total, total, 1)]


# -- quarantine: names too long, a folder that takes no file ------------------------


def test_a_name_too_long_for_its_report_is_quarantined_under_a_short_one(config, stage):
    # stock_basic loads before stock_daily: a good file queued behind the refused one.
    damaged = stage("stock_basic", [_basic("000001.SZ")], instance="y" * 195)
    assert len(damaged.name) == 245  # fits; "<name>.error.json" does not
    damaged.write_bytes(damaged.read_bytes()[:100])
    _aged(damaged)
    good = stage("stock_daily", [daily("600000.SH", 2, 8.0)])

    loader = Loader(config)
    assert loader.run_once() == 2
    status = loader.get_status()
    loader.stop()

    assert status["retry"] is None
    assert not damaged.exists() and files_in(config.archive_dir) == [good.name]
    assert table(config, "stock_daily", "ts_code") == [("600000.SH",)]
    [kept] = files_in(config.quarantine_dir / "stock_basic")
    assert kept != damaged.name and kept.endswith(".parquet") and StagedFile.parse(kept) is None
    report = json.loads((config.quarantine_dir / "stock_basic" / (kept + ".error.json")).read_text())
    assert report["file"] == damaged.name and report["quarantined_as"] == kept
    assert "unreadable Parquet" in report["error"] and kept in report["what_to_do"]
    assert status["task_types"]["stock_basic"]["quarantined_by_reason"] == {"unreadable": 1}

    # loader status names the file as it lies in quarantine, its report, and why.
    from loader.status import collect, render
    lines = [line for line in render(collect(config)).splitlines() if line.startswith("quarantined:")]
    assert lines == [f"quarantined: stock_basic/{kept} (unreadable; see {kept}.error.json)"]


def test_a_quarantine_that_takes_no_file_is_named_and_waited_out(tmp_path, config, stage, caplog):
    damaged = stage("stock_basic", [_basic("000001.SZ")])
    damaged.write_bytes(b"not parquet at all")
    _aged(damaged)
    good = stage("stock_daily", [daily("600000.SH", 2, 8.0)])
    config.quarantine_dir.parent.mkdir(parents=True, exist_ok=True)
    config.quarantine_dir.write_text("a file where the quarantine folder should be")

    loader = Loader(config)
    assert loader.run_once() == 0
    retry = loader.get_status()["retry"]
    assert retry["what"] == "quarantine failing" and f"cannot quarantine {damaged.name}" in retry["error"]
    assert files_in(config.archive_dir) == [good.name]  # the other task type went on
    assert damaged.exists()
    human = run_cli(write_loader_config(tmp_path), "status")
    assert "quarantine failing since" in human.stdout and "database busy" not in human.stdout

    config.quarantine_dir.unlink()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="loader"):
        loader.run_once()
    loader.stop()
    assert files_in(config.quarantine_dir) == [damaged.name]
    assert loader.get_status()["retry"] is None
    messages = [r.getMessage() for r in caplog.records]
    assert "quarantine failing: resolved after 1 retries" in messages
    assert not any("database" in m for m in messages), messages


def test_an_archive_that_takes_no_file_backs_off_and_releases_the_database(tmp_path, caplog):
    config = loader_config(tmp_path, retry_delay=0.2, retry_max_delay=0.4, max_retries=2, rescan_interval=0.1)
    stage = Stage(config)
    paths = [stage("stock_daily", [daily(f"00000{i}.SZ", 2, 10.0)]) for i in range(1, 3)]
    config.archive_dir.parent.mkdir(parents=True, exist_ok=True)
    config.archive_dir.write_text("a file where the archive folder should be")

    loader = Loader(config)
    with caplog.at_level(logging.INFO, logger="loader"):
        loader.start()
        try:
            assert eventually(lambda: (loader.get_status()["retry"] or {}).get("attempts", 0) >= 2, 10)
            time.sleep(2.0)  # a while of waiting: backoff of 0.2, 0.4, then every 0.4 s
            status = loader.get_status()
            retries = [r for r in caplog.records if r.levelno >= logging.WARNING]
            assert status["retry"]["what"] == "archive failing" and "cannot archive" in status["retry"]["error"]
            assert status["retry"]["attempts"] <= 12 and len(retries) <= 12, [r.getMessage() for r in retries]
            assert any(p.startswith("archive:") for p in loader.ready())
            assert any(p.startswith("archive failing (retry") for p in loader.ready())
            if not config.loader.database.is_lake:  # a DuckLake is never held from readers
                holder = hold_database(config.loader.database)  # released between attempts: a person gets in
                release(holder)
            assert all(p.exists() for p in paths)  # loaded, kept in staging/ until archived

            config.archive_dir.unlink()
            assert eventually(lambda: files_in(config.staging_dir) == [], 10)
        finally:
            assert loader.stop(10)
    assert sorted(files_in(config.archive_dir)) == sorted(p.name for p in paths)
    assert [n for _, n in _loads(config)] == [1, 1]  # merged once, archived later
    assert table(config, "stock_daily", "ts_code") == [("000001.SZ",), ("000002.SZ",)]


# -- a file still being copied in ---------------------------------------------------


def test_a_file_still_being_copied_in_is_loaded_once_complete(tmp_path):
    config = loader_config(tmp_path, rescan_interval=0.2)
    elsewhere = Stage(loader_config(tmp_path / "elsewhere"))
    rows = [daily(f"{i:06d}.SZ", 2, float(i)) for i in range(1, 2000)]
    sealed = elsewhere("stock_daily", rows)
    body = sealed.read_bytes()
    target = config.staging_dir / "stock_daily" / sealed.name
    target.parent.mkdir(parents=True)

    def copy_slowly():  # as `cp` of a large file: written in pieces, in place, over seconds
        with open(target, "wb") as out:
            for i in range(0, len(body), len(body) // 12 + 1):
                out.write(body[i:i + len(body) // 12 + 1])
                out.flush()
                time.sleep(0.2)

    loader = Loader(config).start()
    writer = threading.Thread(target=copy_slowly)
    try:
        writer.start()
        writer.join(30)
        assert eventually(lambda: files_in(config.archive_dir) == [sealed.name], 10)
    finally:
        assert loader.stop(10)
    assert files_in(config.quarantine_dir) == []
    assert query(config, "SELECT count(*) FROM stock_daily") == [(len(rows),)]


def test_a_damaged_file_is_left_while_fresh_and_quarantined_once_still(config, stage):
    damaged = stage("stock_daily", [daily("000001.SZ", 2, 10.0)])
    damaged.write_bytes(damaged.read_bytes()[:200])
    loader = Loader(config)
    loader.run_once()
    assert damaged.exists() and files_in(config.quarantine_dir) == []
    assert loader.next_delay() > 0  # looked at again soon, not in a busy loop
    _aged(damaged)
    loader.run_once()
    loader.stop()
    assert files_in(config.quarantine_dir) == [damaged.name]


# -- a DuckLake's data folder that takes no file --------------------------------------


@pytest.mark.backends(LAKE_SQLITE, LAKE_POSTGRES, reason="only a DuckLake keeps its data in a folder of files")
def test_a_full_lake_data_folder_is_waited_out_not_blamed_on_the_file(tmp_path):
    config = loader_config(tmp_path)
    with tmpfs(config.loader.database.data_path, "1m", "the DuckLake's data folder") as folder:
        filler = folder / "filler"
        with open(filler, "wb") as f:  # the disk is full: not one more block
            with contextlib.suppress(OSError):
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
        staged = Stage(config)("stock_daily", [daily(f"{i:06d}.SZ", 2, float(i)) for i in range(1, 200)])

        loader = Loader(config)
        try:
            assert loader.run_once() == 0
            retry = loader.get_status()["retry"]
            assert retry is not None and retry["what"] == "database busy", retry
            assert "No space left on device" in retry["error"]
            assert staged.exists() and files_in(config.quarantine_dir) == []
            assert not has_table(config, "stock_daily")

            filler.unlink()  # room again
            loader.clock = lambda: 10**9  # past the backoff
            assert loader.run_once() == 1
        finally:
            loader.stop()
        assert loader.get_status()["retry"] is None
        assert query(config, "SELECT count(*) FROM stock_daily") == [(199,)]
        assert files_in(config.archive_dir) == [staged.name] and files_in(config.quarantine_dir) == []
