"""Each version is stored once, whatever happens to the files: replays, forced reloads, rebuilds
(with archive retention), a table that predates its history, and ``kill -9`` of ``loader run``.

The history is written in the MERGE's transaction, so it commits or rolls back
with the current table and the manifest.
"""

import dataclasses
import random
import shutil
import subprocess
import time

import pyarrow as pa
import pytest

from loader import filing
from loader.load import load_files, rebuild, reload, resolve_paths
from loader.warehouse import RELOAD, Warehouse
from tests.helpers import wait_for
from tests.history.helpers import basic, current, known_on, load, read, statement, versions
from tests.loader.helpers import Stage, files_in, loader_cmd, loader_config, write_loader_config

A = "600000.SH"
DATES = ("2024-03-28", "2024-03-29", "2024-04-25", "2024-04-26", "2030-01-01")


def _restated(stage):
    """The original fetched before its correction, then a fetch with both; and two stock_basic fetches."""
    return [stage("income", [statement(A, "1", "2024-03-29", 1.0, fetched="2024-04-01")]),
            stage("stock_basic", [basic(A, "浦发银行", "2024-04-01")]),
            stage("income", [statement(A, "0", "2024-03-29", 1.0, fetched="2024-05-02"),
                             statement(A, "1", "2024-04-26", 1.2, fetched="2024-05-02")]),
            stage("stock_basic", [basic(A, "ST浦发", "2024-05-02")])]


def _known(wh, config):
    return ({t: versions(wh, config.datasets[t]) for t in ("income", "stock_basic")},
            [known_on(wh, "income", d) for d in DATES])


def test_a_replay_in_any_order_and_a_forced_reload_add_or_erase_no_version(config, stage, warehouse):
    files = _restated(stage)
    load(warehouse, config, files)
    before = _known(warehouse, config)
    assert len(before[0]["income"]) == 3

    load(warehouse, config, files[::-1], mode=RELOAD, one_at_a_time=True)
    assert _known(warehouse, config) == before

    # --force rolls the current table back to the old fetch, on purpose; the history keeps every version.
    out = reload(warehouse, config, resolve_paths(config, [str(files[0])]), force=True)
    assert out.loaded == [files[0].name]
    assert current(warehouse, "income") == [(A, 1.0)]
    assert _known(warehouse, config) == before


def test_a_rebuild_keeps_the_versions_of_files_archive_retention_removed(tmp_path, database, stage, warehouse):
    config = loader_config(tmp_path, database=database, archive_retention_days=1)
    files = _restated(stage)
    for path in files:
        out = load_files(warehouse, config.datasets[path.parent.name], [path], config,
                         settle=lambda p: filing.archive(config.archive_dir, p))
        assert out.loaded == [path.name]
    before = _known(warehouse, config)
    # Retention removed the first fetch from the archive (its day is long past).
    [first] = (config.archive_dir / "income").rglob(files[0].name)
    first.unlink()

    out = rebuild(warehouse, config, ["income", "stock_basic"])
    assert out.expired == [files[0].name]
    assert current(warehouse, "income") == [(A, 1.2)]
    assert _known(warehouse, config) == before


def test_a_rebuild_replays_a_lost_history_from_the_archive(config, stage, warehouse):
    for path in _restated(stage):
        load_files(warehouse, config.datasets[path.parent.name], [path], config,
                   settle=lambda p: filing.archive(config.archive_dir, p))
    before = _known(warehouse, config)
    warehouse.con.execute("DROP TABLE income_history")
    warehouse.con.execute("DROP TABLE stock_basic_history")

    rebuild(warehouse, config, ["income", "stock_basic"])
    assert _known(warehouse, config) == before


def test_a_table_loaded_before_it_kept_history_starts_its_history_with_its_rows(config, stage, warehouse):
    without = dataclasses.replace(config.datasets["income"], history=None)
    load_files(warehouse, without, [stage("income", [
        statement(A, "1", "2024-03-29", 1.0, fetched="2024-04-01"),
        statement("000001.SZ", "1", None, 2.0, fetched="2024-04-01", ann=None)])], config)
    assert read(warehouse, "SELECT count(*) FROM information_schema.tables WHERE table_name = 'income_history'"
                " AND table_catalog = current_database()") == [(0,)]

    load(warehouse, config, [stage("income", [statement(A, "0", "2024-03-29", 1.0, fetched="2024-05-02"),
                                              statement(A, "1", "2024-04-26", 1.2, fetched="2024-05-02")])])
    assert known_on(warehouse, "income", "2024-04-01") == [("000001.SZ", 2.0), (A, 1.0)]
    assert known_on(warehouse, "income", "2024-04-26") == [("000001.SZ", 2.0), (A, 1.2)]


def test_a_column_added_to_the_table_is_added_to_its_history(config, stage, warehouse):
    load(warehouse, config, [stage("income", [statement(A, "1", "2024-03-29", 1.0, fetched="2024-04-01")])])
    dataset = config.datasets["income"]
    row = statement(A, "1", "2024-04-26", 1.2, fetched="2024-05-02")
    arrays = {c.name: pa.array([row.get(c.name)], c.arrow_type) for c in dataset.all_columns}
    load(warehouse, config, [stage("income", table=pa.table({**arrays, "new_field": pa.array([7.5])}))])
    assert read(warehouse, "SELECT basic_eps, new_field FROM income_history ORDER BY 1") == [(1.0, None), (1.2, 7.5)]


@pytest.mark.timeout(240)
def test_kill_9_at_random_moments_stores_each_version_once(tmp_path, database):
    calm = loader_config(tmp_path / "calm")  # a DuckDB file, loaded without a crash, in-process
    _many_fetches(calm, seed=5, fetches=8)
    path = write_loader_config(tmp_path / "crash", database=database, max_rows_per_transaction=60)
    crash = loader_config(tmp_path / "crash", database=database)
    shutil.copytree(calm.staging_dir, crash.staging_dir)
    wh = Warehouse(calm.loader.database).open()
    try:
        load(wh, calm, sorted(calm.staging_dir.rglob("*.parquet")))
        expected = _known(wh, calm), current(wh, "income")
    finally:
        wh.close()

    total = len(files_in(crash.staging_dir))
    lives = _kill_9_after_progress(path, crash.staging_dir, random.Random(3))
    assert files_in(crash.staging_dir) == [], f"not done after {lives} lives"
    assert lives >= 2, "the first life loaded everything: no kill landed mid-work"
    assert files_in(crash.quarantine_dir) == [] and len(files_in(crash.archive_dir)) == total
    wh = Warehouse(crash.loader.database).open()
    try:
        assert (_known(wh, crash), current(wh, "income")) == expected
    finally:
        wh.close()


def _kill_9_after_progress(config_path, staging_dir, rng, lives=30):
    """``loader run``, killed with SIGKILL a random moment (up to half a second) after it was seen
    to load a file, life after life until staging/ is empty: most kills land in the next
    transaction. Returns the lives it took."""
    for life in range(lives):
        before = len(files_in(staging_dir))
        if not before:
            return life
        proc = subprocess.Popen(loader_cmd(config_path, "run"), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            wait_for(lambda: len(files_in(staging_dir)) < before or proc.poll() is not None, 60,
                     message="the loader to load a file")
            time.sleep(rng.uniform(0, 0.5))
        finally:
            proc.kill()
            proc.wait()
    return lives


def _many_fetches(config, seed, fetches):
    """Fetches of a small market over months: reports announced, some restated, some names changed."""
    rng = random.Random(seed)
    stage = Stage(config)
    codes = [f"{600000 + i:06d}.SH" for i in range(12)]
    restated = {c: f"2024-04-{rng.randint(10, 28)}" for c in rng.sample(codes, 5)}
    for n in range(fetches):
        when = f"2024-{4 + n // 4:02d}-{1 + (n % 4) * 7:02d}"
        rows = []
        for code in codes:
            fix = restated.get(code)
            if fix is not None and fix <= when:
                rows += [statement(code, "0", "2024-03-29", 1.0, when), statement(code, "1", fix, 1.5, when)]
            else:
                rows.append(statement(code, "1", "2024-03-29", 1.0, when))
        stage("income", rows)
        stage("stock_basic", [basic(code, ("ST" if (n + i) % 7 == 0 else "") + f"股票{i}", when)
                              for i, code in enumerate(codes)])
