"""A fetch that returns a restated report returns its original too: both must reach the history.

The stager keeps one row per key in a file for other datasets; for a dataset
with history it keeps one row per distinct version, and only an identical
repeat is superseded. Run through the real stager (in-process, real SqliteHuey
file) and the loader's load cycle.
"""

from duckstage.config import load_config
from stager import TaskType
from loader.warehouse import Warehouse
from stager.service import Stager
from tests.helpers import write_config
from tests.history.helpers import day, known_on, load, read


def test_every_version_of_a_fetch_is_staged_and_kept(tmp_path, database, producer):
    config = load_config(write_config(tmp_path, stager={"batch_size": 100}, loader={"database": database}))
    enqueue = producer(config)
    report = dict(ts_code="600000.SH", end_date="20231231", report_type="1", ann_date="20240329")
    original = dict(report, update_flag="0", f_ann_date="20240329", basic_eps=1.0)
    restated = dict(report, update_flag="1", f_ann_date="20240426", basic_eps=1.2)
    enqueue(TaskType.INCOME, [original, restated], fetched_at="2024-05-02T10:00:00")
    enqueue(TaskType.INCOME, [original], fetched_at="2024-05-02T11:00:00")  # the same version again
    enqueue(TaskType.STOCK_BASIC, [dict(ts_code="600000.SH", symbol="600000", name="浦发银行")],
            fetched_at="2024-05-02T10:00:00")
    enqueue(TaskType.STOCK_BASIC, [dict(ts_code="600000.SH", symbol="600000", name="浦发银行")],
            fetched_at="2024-05-02T12:00:00")  # fetched again the same day: one version
    stager = Stager(config)
    stager.prepare()
    while stager.stage_next(0.0):
        pass
    stager.seal_all()
    assert stager.get_status()["task_types"]["income"]["rows_superseded"] == 1
    assert stager.get_status()["task_types"]["stock_basic"]["rows_superseded"] == 1

    wh = Warehouse(config.loader.database).open()
    try:
        load(wh, config, sorted(config.staging_dir.rglob("*.parquet")))
        assert read(wh, "SELECT update_flag, basic_eps, _valid_from FROM income_history ORDER BY 1") == [
            ("0", 1.0, day("2024-03-29")), ("1", 1.2, day("2024-04-26"))]
        assert known_on(wh, "income", "2024-04-25") == [("600000.SH", 1.0)]
        assert read(wh, "SELECT update_flag, basic_eps FROM income") == [("1", 1.2)]
        assert read(wh, "SELECT name, _valid_from FROM stock_basic_history") == [("浦发银行", day("2024-05-02"))]
    finally:
        wh.close()
