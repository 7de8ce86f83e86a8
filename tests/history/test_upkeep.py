"""DuckLake upkeep compacts a history as it compacts its table: every commit adds a data file to
both, and a history read through hundreds of small files would make every as-of query slow."""

import pytest

from loader import lake
from loader.service import Loader
from tests.history.helpers import known_on, statement, versions


@pytest.mark.parametrize("database", ["ducklake-sqlite", "ducklake-postgres"], indirect=True)
def test_upkeep_compacts_the_history_and_keeps_every_version(config, stage):
    config = config.with_loader(maintenance_interval=0, idle_release=60)  # keeps the lake attached
    loader = Loader(config)
    for n in range(12):  # a period a commit, 30 stocks: files too big to be inlined in the catalog
        end = f"{2000 + n // 4}-{('03-31', '06-30', '09-30', '12-31')[n % 4]}"
        stage("income", [statement(f"{600000 + i:06d}.SH", "1", f"{2000 + n // 4 + 1}-01-20", float(n), "2024-05-02",
                                   ann=f"{2000 + n // 4 + 1}-01-20", end=end) for i in range(30)])
        assert loader.run_once() == 1
    wh = loader.warehouse.open()
    before = versions(wh, config.datasets["income"]), known_on(wh, "income", "2003-06-30", "ts_code, end_date")
    assert lake.file_counts(wh.con)["income_history"]["data_files"] >= 10

    left = loader.upkeep.run(loader.warehouse, config.datasets.names, config.loader, delete_after=0)
    assert left["income_history"]["data_files"] <= 2 and left["income_history"]["delete_files"] == 0, left
    wh = loader.warehouse.open()
    assert (versions(wh, config.datasets["income"]), known_on(wh, "income", "2003-06-30", "ts_code, end_date")) \
        == before
    loader.warehouse.close()
