"""A full staging disk: the stager pauses, keeps every row, and carries on by itself.

Disk-full is injected at the edge (``fsync`` raising ENOSPC, passed to the
Stager) for the step-by-step tests, and for real with a small tmpfs mounted on
``staging/`` (or on the whole data folder) where the tests run as root.
"""

import errno
import os
import subprocess

import pytest

from duckstage.exceptions import ResourceError
from stager import TaskType
from stager.service import Stager
from tests.helpers import wait_for
from tests.stager.helpers import daily_rows, deadletters, staged_keys, staged_paths, staged_rows


class DiskFull:
    """An ``fsync`` that fails with ENOSPC, while ``full`` is set, for files and folders under ``folder``."""

    def __init__(self, folder):
        self.folder = str(folder)
        self.full = False
        self.failures = 0

    def __call__(self, fd):
        if self.full and os.readlink(f"/proc/self/fd/{fd}").startswith(self.folder):
            self.failures += 1
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        os.fsync(fd)


def basic_row(code):
    return dict(ts_code=code, symbol=code[:6], name="浦发银行")


def test_a_seal_failing_inside_a_lease_batch_keeps_every_claim_and_needs_no_restart(make_queue_config, producer):
    """One lease batch: the first task fills the buffer and its seal fails. The later
    claims of that batch, a claim whose rows were all refused, and the other task
    types' group must neither be left leased (waiting for a restart) nor re-run."""
    _, config = make_queue_config(stager={"batch_size": 10})
    enqueue = producer(config)
    enqueue(TaskType.STOCK_DAILY, daily_rows(10))                      # fills the buffer: seal inside stage()
    enqueue(TaskType.STOCK_DAILY, daily_rows(3, start=10))             # a later claim of the same group
    all_bad = daily_rows(2, start=20)
    for row in all_bad:
        row["close"] = "abc"
    enqueue(TaskType.STOCK_DAILY, all_bad)                             # every row refused: nothing to seal
    enqueue(TaskType.STOCK_BASIC, [basic_row("600000.SH")])           # another group of the batch
    disk = DiskFull(config.staging_dir)
    stager = Stager(config, fsync=disk)
    stager.prepare()
    disk.full = True
    try:
        stager.stage_next()
    except Exception as exc:  # noqa: BLE001 - the step may report the failure; what matters is below
        assert "ENOSPC" in str(exc)
    assert disk.failures >= 1
    assert staged_paths(config) == []
    assert stager.huey.storage.lease_count() == 4 - 1  # the all-bad task is done: its rows are in the dead letter

    disk.full = False  # space is back: the sealer's next round seals everything, no restart
    stager.seal_all()
    assert len(staged_keys(config)) == 13
    assert [r["name"] for r in staged_rows(config, "stock_basic")] == ["浦发银行"]
    assert stager.huey.storage.queue_size() == 0 and stager.huey.storage.lease_count() == 0
    assert len(deadletters(config)) == 2  # once each

    # Nothing is left for a restart to re-run (which would dead-letter the bad rows twice).
    again = Stager(config)
    again.prepare()
    assert again.stage_next() == 0
    assert len(deadletters(config)) == 2


def test_a_dead_letter_write_that_fails_is_taken_back_and_its_task_runs_again_once(make_queue_config, producer):
    """The dead letter on a full disk: the failed write leaves no line behind (a re-run
    would double it), the task goes back to the queue (no restart), its good rows are
    not buffered twice, and once there is space every row lands exactly once."""
    _, config = make_queue_config(stager={"batch_size": 1000})
    enqueue = producer(config)
    rows = daily_rows(4)
    rows[1]["close"] = "abc"
    task = enqueue(TaskType.STOCK_DAILY, rows)
    disk = DiskFull(config.deadletter_dir)
    stager = Stager(config, fsync=disk)
    earlier = stager.deadletter.path_for("stock_daily")
    earlier.parent.mkdir(parents=True)
    earlier.write_text('{"task_id": "cut short by a crash", "row": {')  # an earlier crash mid-line
    stager.prepare()
    disk.full = True
    with pytest.raises(ResourceError) as failed:
        stager.stage_next()
    assert "ENOSPC" in str(failed.value)
    assert earlier.read_text() == '{"task_id": "cut short by a crash", "row": {'  # the failed write taken back
    assert stager.buffers["stock_daily"].rows == 0  # nothing of the task kept half
    assert stager.huey.storage.queue_size() == 1 and stager.huey.storage.lease_count() == 0  # back in the queue

    disk.full = False
    assert stager.stage_next() == 4  # the same stager runs it again
    stager.seal_all()
    assert len(staged_keys(config)) == 3
    [dead] = deadletters(config)  # once, on a line of its own after the cut one
    assert dead["task_id"] == task.id and dead["row"]["close"] == "abc"
    assert stager.huey.storage.queue_size() == 0 and stager.huey.storage.lease_count() == 0


# -- a real small file system -------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path):
    """``mount(size, *folders)``: one tmpfs of ``size`` bytes, bind-mounted on each folder
    (so they share its space, as folders of one full disk do). Unmounted at teardown."""
    if os.geteuid() != 0:
        pytest.skip("SKIPPED LOUDLY: needs root to mount a tmpfs (CI runs the tests as root); "
                    "the disk-full path is still covered by the ENOSPC fsync tests above")
    mounted = []

    def mount(size, *folders):
        disk = tmp_path / "small-disk"
        disk.mkdir()
        run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(disk)])
        mounted.append(disk)
        for folder in folders:
            folder.mkdir(parents=True, exist_ok=True)
            (disk / folder.name).mkdir()
            run(["mount", "--bind", str(disk / folder.name), str(folder)])
            mounted.append(folder)
        return disk

    def run(args):
        out = subprocess.run(args, capture_output=True, text=True)
        if out.returncode != 0:
            pytest.skip(f"SKIPPED LOUDLY: cannot mount a tmpfs here ({' '.join(args)}: {out.stderr.strip()})")

    yield mount
    for path in reversed(mounted):
        if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill(disk, leave):
    """Fill ``disk`` with one file, leaving about ``leave`` bytes free; return that file."""
    filler = disk / "filler"
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    size = filler.stat().st_size
    os.truncate(filler, max(0, size - leave))
    return filler


def test_a_seal_that_runs_out_of_space_leaves_no_temporary_file(small_disk, tmp_path):
    import pyarrow as pa

    from duckstage import staging

    folder = tmp_path / "staging"
    disk = small_disk("1m", folder)
    fill(disk, leave=8192)
    free = os.statvfs(folder).f_bavail
    table = pa.table({"v": [os.urandom(16).hex() for _ in range(4000)]})  # ~140 KB that do not compress
    final = folder / "stock_daily" / staging.StagedFile.new("stock_daily", "t1", 1).name
    with pytest.raises(ResourceError) as failed:
        staging.seal(table, final, {})
    assert "ENOSPC" in str(failed.value)
    assert list((folder / "stock_daily").iterdir()) == []  # neither a sealed file nor a .tmp
    assert os.statvfs(folder).f_bavail == free  # the half-written temporary file gave its space back


@pytest.mark.parametrize("on_the_small_disk", [("staging",), ("staging", "deadletter")],
                         ids=["staging", "staging and dead letter"])
def test_a_running_stager_pauses_on_a_full_disk_and_carries_on_when_space_returns(
        make_config, producer, spawn, small_disk, on_the_small_disk):
    """`python -m stager run` with staging/ (and the dead letter) on a real tmpfs that is
    full: no file is sealed half-written, nothing is lost or doubled, and once space is
    freed every row lands without a restart."""
    import json
    import random

    import pyarrow.parquet as pq

    from duckstage import staging

    path, config = make_config(stager={"batch_size": 1000, "batch_timeout": 0.3, "worker_threads": 2,
                                       "queue_check_interval": 0.05, "status_interval": 0.2})
    disk = small_disk("2m", *[config.data_dir / name for name in on_the_small_disk])
    filler = fill(disk, leave=8192)  # room for the start of a file, not for a whole one
    rng = random.Random(5)
    enqueue, expected, bad = producer(config), set(), []
    for i in range(12):
        rows = daily_rows(250, day=f"202401{i + 1:02d}")
        for r in rows:
            r.update(close=round(rng.uniform(1, 100), 2), vol=rng.uniform(1e3, 1e6))  # files that do not shrink
        if i % 3 == 0:
            rows[7]["close"] = "abc"
            bad.append((rows[7]["ts_code"], rows[7]["trade_date"]))
        enqueue(TaskType.STOCK_DAILY, rows)
        expected |= {(r["ts_code"], r["trade_date"]) for r in rows if r["close"] != "abc"}

    def status():
        try:
            return json.loads((config.run_dir / "stager.json").read_text())
        except (OSError, ValueError):
            return {}

    def sealed_files_are_whole():
        for p in staging.sealed_files(config.staging_dir / "stock_daily"):
            assert pq.read_metadata(p).num_rows == int(staging.read_footer(p)["row_count"]), p
        return True

    proc = spawn("stager", path, "run")
    wait_for(lambda: sealed_files_are_whole() and status().get("task_types", {}).get("stock_daily", {})
             .get("seal_failures", 0) >= 2, timeout=30, message="seals failing on the full disk")
    assert "ENOSPC" in status()["sealing_error"]
    assert proc.proc.poll() is None  # paused, not dead

    filler.unlink()  # space returns
    wait_for(lambda: sealed_files_are_whole() and {(r["ts_code"], r["trade_date"].strftime("%Y%m%d"))
                                                   for r in staged_rows(config, "stock_daily")} == expected,
             timeout=60, message="every row staged without a restart")
    wait_for(lambda: status().get("backlog", {}).get("leased_tasks") == 0
             and status()["backlog"]["queued_tasks"] == 0, timeout=20, message="every task acknowledged")
    assert status()["sealing_error"] is None
    assert proc.stop() == 0, proc.log()
    assert sealed_files_are_whole()
    assert [p for p in config.staging_dir.rglob("*") if staging.is_temporary(p)] == []
    refused = sorted((d["row"]["ts_code"], d["row"]["trade_date"]) for d in deadletters(config))
    assert refused == sorted(bad)  # each bad row once: a failed dead-letter write left nothing behind


def test_an_unforeseen_error_while_sealing_keeps_the_rows_and_the_sealer_alive(make_config, producer):
    _, config = make_config(stager={"batch_size": 1000, "batch_timeout": 0.2, "worker_threads": 1,
                                    "queue_check_interval": 0.05})
    producer(config)(TaskType.STOCK_DAILY, daily_rows(5))
    failures = {"left": 2}

    def fsync(fd):
        if failures["left"]:
            failures["left"] -= 1
            raise ValueError("a bug nobody foresaw")
        os.fsync(fd)

    stager = Stager(config, fsync=fsync).start()
    try:
        wait_for(lambda: len(staged_keys(config)) == 5, timeout=20, message="rows sealed after the errors")
        assert all(t.is_alive() for t in stager._threads)
        assert stager.get_status()["errors"]["internal"] == 2
    finally:
        assert stager.stop(timeout=20)
