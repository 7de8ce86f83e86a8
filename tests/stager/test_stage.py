"""The stager's steps, run in-process on a real SqliteHuey file and real folders."""

import datetime as dt
import errno
import math
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from duckstage import staging
from duckstage.exceptions import ResourceError
from stager import TaskType
from stager.service import Stager
from tests.helpers import wait_for
from tests.stager.helpers import d, daily_rows, deadletters, staged_keys, staged_paths, staged_rows


def drain(stager, now=0.0):
    while stager.stage_next(now):
        pass


def test_rows_are_cleaned_and_sealed_with_a_self_describing_footer(make_queue_config, producer):
    _, config = make_queue_config(stager={"batch_size": 10})
    enqueue = producer(config)
    result = enqueue(TaskType.STOCK_DAILY, daily_rows(10), trade_date="20240102")
    stager = Stager(config)
    stager.prepare()
    drain(stager)
    [path] = staged_paths(config, "stock_daily")
    table = pq.read_table(path)
    assert table.num_rows == 10
    assert table.schema.field("trade_date").type == pa.date32()
    row = table.to_pylist()[0]
    assert row["trade_date"] == dt.date(2024, 1, 2) and row["_task_id"] == result.id
    footer = staging.read_footer(path)
    assert footer["task_type"] == "stock_daily" and footer["row_count"] == "10"
    assert footer["primary_key"] == ["ts_code", "trade_date"] and footer["task_ids"] == [result.id]
    assert footer["instance"] == stager.instance and footer["schema_version"] == "1"
    assert staging.StagedFile.parse(path.name).task_type == "stock_daily"
    # acknowledged: nothing left in the queue or leased
    assert stager.huey.storage.queue_size() == 0 and stager.huey.storage.lease_count() == 0


def test_every_accepted_data_shape(make_config, producer):
    pd = pytest.importorskip("pandas")
    _, config = make_config(stager={"batch_size": 1})
    enqueue = producer(config)
    rows = daily_rows(4)
    columns = {k: [r[k] for r in rows] for k in rows[0]}
    enqueue(TaskType.STOCK_DAILY, rows[:1])
    enqueue(TaskType.STOCK_DAILY, {k: v[1:2] for k, v in columns.items()})
    enqueue(TaskType.STOCK_DAILY, pa.Table.from_pylist(rows[2:3]))
    frame = pd.DataFrame(rows[3:4])
    frame.loc[0, "pre_close"] = float("nan")  # Tushare DataFrames carry NaN for missing values
    enqueue(TaskType.STOCK_DAILY, frame)
    enqueue("stock_daily", rows[:0])  # an empty fetch is fine and stages nothing
    stager = Stager(config)
    stager.prepare()
    drain(stager)
    got = {r["ts_code"]: r for r in staged_rows(config, "stock_daily")}
    assert set(got) == {r["ts_code"] for r in rows}
    assert got[rows[3]["ts_code"]]["pre_close"] is None
    assert not deadletters(config)


def test_cleaning_rules(make_config, producer):
    _, config = make_config(stager={"batch_size": 100})
    enqueue = producer(config)
    rows = daily_rows(3)
    rows[0].update(open="10.5", pre_close=float("nan"), change=float("inf"))   # numeric string, NaN, inf
    rows[0].update(new_field=1.5)                                             # undeclared: kept
    rows[1].update(trade_date="2024-01-02", ah_vol="")                        # ISO date, empty string
    rows[2].update(vol=7, amount=None, extra_column="gone with its row")      # int for DOUBLE; amount missing
    enqueue(TaskType.STOCK_DAILY, rows)
    stager = Stager(config)
    stager.prepare()
    drain(stager)
    stager.seal_all()
    got = {r["ts_code"]: r for r in staged_rows(config, "stock_daily")}
    first = got[rows[0]["ts_code"]]
    assert first["open"] == 10.5 and first["pre_close"] is None and first["change"] is None
    assert first["new_field"] == 1.5
    second = got[rows[1]["ts_code"]]
    assert second["trade_date"] == dt.date(2024, 1, 2) and second["ah_vol"] is None
    assert second["new_field"] is None
    assert rows[2]["ts_code"] not in got  # amount is required
    [dl] = deadletters(config)
    assert dl["reason"].startswith("amount: required value is missing")
    assert dl["row"]["extra_column"] == "gone with its row"  # the row as sent, undeclared column included
    assert "extra_column" not in pq.read_schema(staged_paths(config)[0]).names  # no value left to stage


@pytest.mark.parametrize("change, reason", [
    ({"close": "abc"}, "close: 'abc' is not a number"),
    ({"ts_code": None}, "ts_code: required value is missing"),
    ({"ts_code": "60000.SH"}, "ts_code: '60000.SH' does not match"),
    ({"trade_date": "2024-13-45"}, "trade_date: '2024-13-45' is not a YYYYMMDD date"),
    ({"trade_date": "20241345"}, "trade_date: '20241345' is not a YYYYMMDD date"),
    ({"trade_date": "20230230"}, "trade_date: '20230230' is not a YYYYMMDD date"),
    ({"trade_date": "2024-02-30"}, "trade_date: '2024-02-30' is not a YYYYMMDD date"),
    ({"trade_date": "2024012"}, "trade_date: '2024012' is not a YYYYMMDD date"),
    ({"vol": {"lots": 5}}, "vol: expected a number, got dict"),
    ({"high": [1, 2]}, "high: expected a number, got list"),
])
def test_bad_rows_go_to_the_dead_letter_with_reason_and_task_id(make_config, producer, change, reason):
    _, config = make_config(stager={"batch_size": 100})
    enqueue = producer(config)
    rows = daily_rows(5)
    rows[2].update(change)
    res = enqueue(TaskType.STOCK_DAILY, rows, trade_date="20240102")
    stager = Stager(config)
    stager.prepare()
    drain(stager)
    stager.seal_all()
    [dl] = deadletters(config)
    assert dl["reason"].startswith(reason)
    assert dl["task_id"] == res.id and dl["task_type"] == "stock_daily"
    assert dl["params"]["trade_date"] == "20240102"
    assert dl["row"]["open"] == rows[2]["open"]  # the row as the producer sent it
    assert len(staged_rows(config, "stock_daily")) == 4  # the rest of the batch goes on
    assert stager.get_status()["errors"]["data_format"] == 1


def test_a_foreign_task_in_the_queue_is_dead_lettered_not_lost(make_queue_config, producer):
    _, config = make_queue_config()
    producer(config)
    stager = Stager(config)

    @stager.huey.task()
    def other_job(x):
        return x

    other_job(1)
    stager.huey.storage.enqueue(b"not a pickle")
    stager.prepare()
    drain(stager)
    reasons = [r["reason"] for r in deadletters(config)]
    assert any("other_job is not process_fetched_data" in r for r in reasons)
    assert any("cannot read queued task" in r for r in reasons)
    assert stager.huey.storage.queue_size() == 0


def test_duplicate_keys_keep_the_newest_version(make_config, producer):
    _, config = make_config(stager={"batch_size": 100})
    enqueue = producer(config)
    base = dict(ts_code="600000.SH", end_date="20231231", report_type="1", ann_date="20240330")
    enqueue(TaskType.INCOME, [dict(base, update_flag="1", f_ann_date="20240330", basic_eps=1.0),
                              dict(base, update_flag="0", f_ann_date="20240420", basic_eps=0.5)])
    enqueue(TaskType.INCOME, [dict(base, update_flag="0", f_ann_date="20240330", basic_eps=0.1),
                              dict(base, update_flag="1", f_ann_date="20240330", basic_eps=1.0)],
            fetched_at="2030-01-01T00:00:00")
    enqueue(TaskType.STOCK_DAILY, daily_rows(1, close=1.0), fetched_at="2024-01-03T00:00:00")
    enqueue(TaskType.STOCK_DAILY, daily_rows(1, close=2.0), fetched_at="2024-01-02T00:00:00")
    stager = Stager(config)
    stager.prepare()
    drain(stager)
    stager.seal_all()
    # income keeps history: every distinct version is staged, an identical one only once
    # (the loader keeps the newest per key in the current table).
    income = staged_rows(config, "income")
    assert sorted((r["update_flag"], r["f_ann_date"], r["basic_eps"]) for r in income) == [
        ("0", d("20240330"), 0.1), ("0", d("20240420"), 0.5), ("1", d("20240330"), 1.0)]
    assert stager.get_status()["task_types"]["income"]["rows_superseded"] == 1
    [bar] = staged_rows(config, "stock_daily")
    assert bar["close"] == 1.0  # the later fetch wins even though it was enqueued first


def test_qfq_rows_carry_their_anchor(make_config, producer):
    _, config = make_config()
    enqueue = producer(config)
    rows = [dict(r, adj_factor=1.0) for r in daily_rows(2, day="20240105")]
    enqueue(TaskType.DAILY_BAR_QFQ, rows, ts_code="600000.SH", start_date="20240101", end_date="20240110")
    enqueue(TaskType.DAILY_BAR_QFQ, daily_rows(1, day="20240104", start=5))
    stager = Stager(config)
    stager.prepare()
    drain(stager)
    stager.seal_all()
    anchors = {r["ts_code"]: r["_anchor_date"] for r in staged_rows(config, "daily_bar_qfq")}
    assert anchors["600000.SH"] == d("20240110")  # the request's end_date
    assert anchors["600005.SH"] == d("20240104")  # no end_date: the latest trade_date fetched


@pytest.mark.parametrize("settings, expected_files", [
    ({"batch_size": 25, "batch_bytes": 10**9}, [30]),            # rows: whole tasks, sealed at >= 25
    ({"batch_size": 10**6, "batch_bytes": 4096}, None),          # bytes: computed below
])
def test_rotation_by_rows_and_by_bytes(make_config, producer, settings, expected_files):
    _, config = make_config(stager=settings)
    enqueue = producer(config)
    for i in range(5):
        enqueue(TaskType.STOCK_DAILY, daily_rows(10, start=10 * i))
    stager = Stager(config)
    stager.prepare()
    drain(stager)
    files = staged_paths(config, "stock_daily")
    sizes = [pq.read_metadata(p).num_rows for p in files]
    if expected_files is None:
        per_task = stager.buffers["stock_daily"].nbytes / (stager.buffers["stock_daily"].rows / 10)
        expected_files = [10 * math.ceil(4096 / per_task)] * (50 // (10 * math.ceil(4096 / per_task)))
    assert sizes == expected_files
    assert sum(sizes) + stager.buffers["stock_daily"].rows == 50
    names = [p.name for p in files]
    assert names == sorted(names)  # file names sort in seal order


def test_batch_settings_per_task_type(make_config, producer):
    _, config = make_config(stager={"batch_size": 1000, "task_types": {"income": {"batch_size": 2}}})
    enqueue = producer(config)
    for i in range(4):
        enqueue(TaskType.INCOME, [dict(ts_code=f"60000{i}.SH", end_date="20231231", report_type="1")])
        enqueue(TaskType.CASHFLOW, [dict(ts_code=f"60000{i}.SH", end_date="20231231", report_type="1")])
    stager = Stager(config)
    stager.prepare()
    drain(stager)
    assert [pq.read_metadata(p).num_rows for p in staged_paths(config, "income")] == [2, 2]
    assert staged_paths(config, "cashflow") == [] and stager.buffers["cashflow"].rows == 4


def test_age_trigger_seals_a_lone_row_on_its_own_timer(make_config, producer):
    _, config = make_config(stager={"batch_timeout": 30})
    enqueue = producer(config)
    enqueue(TaskType.STOCK_BASIC, [dict(ts_code="600000.SH", symbol="600000", name="浦发银行")])
    stager = Stager(config, clock=lambda: 0.0)
    stager.prepare()
    stager.stage_next(now=100.0)
    assert stager.seal_due(now=129.9) == 0 and not staged_paths(config)
    assert stager.seal_due(now=130.0) == 1
    [row] = staged_rows(config, "stock_basic")
    assert row["name"] == "浦发银行"


def test_a_task_stays_leased_until_its_rows_are_sealed(make_config, producer):
    """The state a kill -9 leaves between claim and seal: a new stager re-runs the task."""
    _, config = make_config(stager={"batch_size": 1000})
    enqueue = producer(config)
    enqueue(TaskType.STOCK_DAILY, daily_rows(10))
    crashed = Stager(config)
    crashed.prepare()
    assert crashed.stage_next() == 10
    assert crashed.huey.storage.queue_size() == 0 and crashed.huey.storage.lease_count() == 1
    assert not staged_paths(config)  # buffered only; the process now "dies"
    crashed.huey.storage.close()

    restarted = Stager(config)
    restarted.prepare()  # puts the orphaned lease back in the queue
    assert restarted.huey.storage.queue_size() == 1
    drain(restarted)
    restarted.seal_all()
    assert len(staged_keys(config)) == 10
    assert restarted.huey.storage.lease_count() == 0


def test_leftover_temporary_files_are_removed_at_start_and_never_sealed(make_config, producer):
    _, config = make_config()
    folder = config.staging_dir / "stock_daily"
    folder.mkdir(parents=True)
    leftover = staging.tmp_path(folder / staging.StagedFile.new("stock_daily", "dead0001", 1).name)
    leftover.write_bytes(b"PAR1 half written")
    Stager(config).prepare()
    assert not leftover.exists()
    assert staging.sealed_files(folder) == []


def test_disk_full_while_sealing_pauses_and_loses_nothing(make_config, producer):
    _, config = make_config(stager={"batch_size": 10})
    enqueue = producer(config)
    enqueue(TaskType.STOCK_DAILY, daily_rows(10))
    failures = {"left": 2}

    def fsync(fd):
        if failures["left"]:
            failures["left"] -= 1
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        os.fsync(fd)

    stager = Stager(config, fsync=fsync)
    stager.prepare()
    with pytest.raises(ResourceError) as err:
        stager.stage_next()
    assert "ENOSPC" in str(err.value)
    folder = config.staging_dir / "stock_daily"
    assert list(folder.iterdir()) == []  # no sealed file, no temporary file
    assert stager.huey.storage.lease_count() == 1  # not acknowledged
    assert stager.buffers["stock_daily"].rows == 10  # rows kept for the retry
    with pytest.raises(ResourceError):
        stager.seal_due(now=0)
    assert "ENOSPC" in stager.get_status()["sealing_error"]
    assert stager.seal_due(now=0) == 1
    assert stager.get_status()["sealing_error"] is None
    assert len(staged_keys(config)) == 10 and stager.huey.storage.lease_count() == 0
    assert stager.get_status()["errors"]["system_resource"] == 2


def test_results_mode_claims_only_our_results_and_deletes_them_after_the_seal(make_queue_config):
    _, config = make_queue_config(stager={"run_huey_consumer": False, "batch_size": 1000})
    stager = Stager(config)
    huey = stager.huey
    from stager.tasks import _process_fetched_data

    # What a producer's own consumer leaves in the result store:
    ours = _process_fetched_data(TaskType.STOCK_DAILY, daily_rows(5))
    ours.task_id = "t-ours"
    huey.put_result("t-ours", ours)
    huey.put_result("t-other", {"some": "other application's result"})
    huey.storage.put_data("t-opaque", b"\x00not a pickle", is_result=True)
    stager.prepare()
    assert stager.stage_next() == 5
    assert stager.stage_next() == 0  # the other two are left alone
    # Not deleted before the seal: in the store (SQLite) or moved into this stager's leases (Redis).
    assert huey.storage.result_store_size() + huey.storage.lease_count() == 3
    stager.seal_all()
    assert len(staged_keys(config)) == 5
    keys = {k for k, _ in huey.storage.scan_results(None, 100)[0]}
    assert keys == {"t-other", "t-opaque"}
    assert stager.get_status()["backlog"]["foreign_results"] == 2


def test_results_are_read_a_page_at_a_time(make_config):
    _, config = make_config(stager={"run_huey_consumer": False, "batch_size": 10**6})
    stager = Stager(config)
    from stager.tasks import _process_fetched_data

    for i in range(450):
        r = _process_fetched_data("stock_daily", daily_rows(1, start=i))
        stager.huey.put_result(f"k{i:04d}", r)
    stager.prepare()
    seen = 0
    while n := stager.stage_next():
        seen += n
        assert len(stager.source._page) <= stager.source.PAGE
    assert seen == 450
    stager.seal_all()
    assert len(staged_keys(config)) == 450 and stager.huey.storage.result_store_size() == 0


def test_dead_letter_rows_can_be_requeued_after_a_fix(make_config, producer, tmp_path):
    import subprocess
    import sys

    path, config = make_config()
    enqueue = producer(config)
    rows = daily_rows(3)
    rows[1]["close"] = "10,5"  # a decimal comma: fixed by hand in the dead letter below
    enqueue(TaskType.STOCK_DAILY, rows, trade_date="20240102")
    stager = Stager(config)
    stager.prepare()
    drain(stager)
    [dl_file] = list((config.deadletter_dir / "stock_daily").glob("*.jsonl"))
    dl_file.write_text(dl_file.read_text().replace('"10,5"', '"10.5"'))
    out = subprocess.run([sys.executable, "-m", "stager", "--config", str(path), "requeue", str(dl_file)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "1 row(s) enqueued again as 1 task(s)" in out.stdout
    assert not dl_file.exists() and (dl_file.parent / "replayed" / dl_file.name).exists()
    drain(stager)
    stager.seal_all()
    got = {r["ts_code"]: r for r in staged_rows(config, "stock_daily")}
    assert got[rows[1]["ts_code"]]["close"] == 10.5 and len(got) == 3


def test_tasks_cleaned_together_keep_their_own_task_ids_params_and_anchors(make_config, producer):
    _, config = make_config(stager={"batch_size": 10**6})
    enqueue = producer(config)
    good = [dict(r, adj_factor=1.0) for r in daily_rows(3, day="20240105")]
    bad_date = [dict(r, adj_factor=1.0) for r in daily_rows(3, day="20240105", start=10)]
    bad_date[1]["trade_date"] = "20240230"
    mixed = [dict(r, adj_factor=1.0) for r in daily_rows(3, day="20240104", start=20)]
    mixed[2]["close"] = "abc"  # a column of mixed types: this task cannot be an Arrow table
    nulls = pa.table({"ts_code": ["600030.SH"], "trade_date": ["20240103"], "open": [1.0], "high": [1.0],
                      "low": [1.0], "close": [1.0], "vol": [1.0], "amount": [1.0], "adj_factor": pa.nulls(1)})
    ids = [enqueue(TaskType.DAILY_BAR_QFQ, good, ts_code="x", end_date="20240110").id,
           enqueue(TaskType.DAILY_BAR_QFQ, bad_date, ts_code="y", end_date="20240111").id,
           enqueue(TaskType.DAILY_BAR_QFQ, mixed, ts_code="z").id,
           enqueue(TaskType.DAILY_BAR_QFQ, nulls, ts_code="w", end_date="20240112").id]
    stager = Stager(config)
    stager.prepare()
    assert stager.stage_next() == 10  # one lease batch, cleaned as one group
    stager.seal_all()
    rows = {r["ts_code"]: r for r in staged_rows(config, "daily_bar_qfq")}
    assert len(rows) == 8
    assert {rows[r["ts_code"]]["_task_id"] for r in good} == {ids[0]}
    assert rows["600010.SH"]["_task_id"] == ids[1] and rows["600010.SH"]["_anchor_date"] == d("20240111")
    assert rows["600020.SH"]["_anchor_date"] == d("20240104")  # no end_date: its own latest trade_date
    assert rows["600030.SH"]["_anchor_date"] == d("20240112") and rows["600030.SH"]["adj_factor"] is None
    by_task = {r["task_id"]: r for r in deadletters(config)}
    assert by_task[ids[1]]["params"]["ts_code"] == "y" and "'20240230'" in by_task[ids[1]]["reason"]
    assert by_task[ids[2]]["params"]["ts_code"] == "z" and "close: 'abc'" in by_task[ids[2]]["reason"]


def test_a_locked_huey_file_is_waited_out_and_nothing_is_lost(make_config, producer):
    """Error class 'database connection': another process holds huey.db exclusively."""
    import sqlite3

    _, config = make_config(stager={"batch_size": 10, "worker_threads": 2, "queue_check_interval": 0.05})
    enqueue = producer(config)
    for i in range(3):
        enqueue(TaskType.STOCK_DAILY, daily_rows(10, start=10 * i))
    stager = Stager(config)
    stager.huey.storage.close()
    stager.huey.storage._timeout = 0.2  # Huey's busy timeout (5 s by default), shortened for the test
    holder = sqlite3.connect(str(config.huey.path), isolation_level=None)
    holder.execute("begin exclusive")
    try:
        stager.start()
        wait_for(lambda: stager.get_status()["errors"].get("database_connection", 0) >= 2,
                 message="workers retrying the locked queue")
        assert staged_paths(config) == []
        assert all(t.is_alive() for t in stager._threads)
        holder.execute("commit")
        wait_for(lambda: len(staged_keys(config)) == 30, message="all rows staged after the lock")
    finally:
        holder.close()
        assert stager.stop(timeout=20)
    assert not deadletters(config)


@pytest.mark.parametrize("name, body", [("notes.txt", "hello\n"), ("rows.jsonl", '{"a": 1}\n'),
                                        ("empty.jsonl", "")])
def test_requeue_refuses_a_file_that_is_not_a_dead_letter_and_leaves_it_alone(make_config, tmp_path, name, body):
    import subprocess
    import sys

    path, config = make_config()
    other = tmp_path / name
    other.write_text(body)
    out = subprocess.run([sys.executable, "-m", "stager", "--config", str(path), "requeue", str(other)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert str(other) in out.stderr
    assert other.read_text() == body and not (tmp_path / "replayed").exists()


def test_a_bug_that_ends_a_lease_batch_still_acknowledges_the_claims_already_dead_lettered(make_config, producer):
    """A claim whose rows all went to the dead letter is done. If a bug ends its lease
    batch later on (here a seal that raises what nobody foresaw), it is acknowledged,
    not left leased to run and be dead-lettered a second time after a restart."""
    _, config = make_config(stager={"batch_size": 3})
    enqueue = producer(config)
    bad = daily_rows(1)
    bad[0]["close"] = "abc"
    enqueue(TaskType.STOCK_DAILY, bad)
    enqueue(TaskType.STOCK_DAILY, daily_rows(3, start=10))  # fills the buffer: sealed inside the batch

    def fsync(fd):
        if os.readlink(f"/proc/self/fd/{fd}").startswith(str(config.staging_dir)):
            raise RuntimeError("a bug while sealing")
        os.fsync(fd)

    stager = Stager(config, fsync=fsync)
    stager.prepare()
    with pytest.raises(RuntimeError, match="a bug while sealing"):
        stager.stage_next()
    assert len(deadletters(config)) == 1  # written once, and not to be written again
    assert stager.huey.storage.lease_count() == 1  # only the task whose rows wait in the buffer
    assert stager.buffers["stock_daily"].rows == 3


def test_a_refused_rows_reason_code_travels_with_it_whatever_its_text_says(make_config, producer):
    """The dead-letter count by reason reads the code the refusal carries: a value whose
    text reads like another reason ("required value is missing") is still counted as
    the invalid value it is, and a processor's refusal carries its own code."""
    from stager.exceptions import PROCESSOR_ERROR
    from stager.processors import Refused

    _, config = make_config(stager={"batch_size": 10})
    enqueue = producer(config)
    rows = daily_rows(2)
    rows[0]["close"] = "required value is missing (NULL, NaN, inf or empty)"
    enqueue(TaskType.STOCK_DAILY, rows)
    stager = Stager(config)
    stager.prepare()
    drain(stager)
    status = stager.get_status()["task_types"]["stock_daily"]
    assert status["deadlettered_by_reason"] == {"invalid_value": 1} and status["rows_deadlettered"] == 1
    assert Refused("processor x raised ValueError: missing value").reason == PROCESSOR_ERROR


def test_fetch_times_are_staged_as_naive_utc_whatever_zone_they_came_in(make_config, producer):
    """The staged _fetched_at stays TIMESTAMP without a zone, holding UTC: the stager stamps
    with an aware clock, and a producer may send a time in its own zone."""
    from stager.results import TaskResult

    beijing = dt.timezone(dt.timedelta(hours=8))
    assert TaskResult("stock_daily", [], fetched_at=dt.datetime(2024, 1, 2, 8, tzinfo=beijing)).fetched_at \
        == dt.datetime(2024, 1, 2, 0, 0)
    _, config = make_config(stager={"batch_size": 10})
    enqueue = producer(config)
    enqueue(TaskType.STOCK_DAILY, daily_rows(1), fetched_at="2024-01-02T08:00:00+08:00")
    enqueue(TaskType.STOCK_DAILY, daily_rows(1, start=5))  # stamped at enqueue by the stager's clock
    stager = Stager(config)
    stager.prepare()
    drain(stager)
    assert stager.seal_all() == 1
    [path] = staged_paths(config, "stock_daily")
    table = pq.read_table(path)
    assert table.schema.field("_fetched_at").type == pa.timestamp("us")
    first, second = table.column("_fetched_at").to_pylist()
    assert first == dt.datetime(2024, 1, 2, 0, 0)
    assert abs((dt.datetime.now(dt.timezone.utc).replace(tzinfo=None) - second).total_seconds()) < 600
