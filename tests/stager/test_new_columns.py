"""Columns datasets.yaml does not declare: staged, typed, unified, or refused by name; never dropped.

The first tests run the stager's steps in-process on a real SqliteHuey file;
the last ones take the staged files through a real ``python -m loader run``
into a real DuckDB file under each ``loader.new_columns`` policy, and then
declare the column in ``datasets.yaml``.
"""

import datetime as dt
import json
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from stager import TaskType
from duckstage.config import load_config
from stager.service import Stager
from tests.helpers import CONFIG_DIR, duckdb_cli, wait_for, write_config
from tests.stager.helpers import daily_rows, deadletters, staged_paths, staged_rows


def stage(config, producer, *tasks, batch=False):
    """Enqueue ``tasks`` ((task type, data) pairs), stage them and seal every buffer.

    With ``batch`` they are claimed as one lease batch (cleaned together);
    otherwise one lease batch each, so the buffer joins them.
    """
    enqueue = producer(config)
    ids = [enqueue(task_type, data).id for task_type, data in tasks]
    stager = Stager(config)
    stager.source.LEASE_BATCH = 8 if batch else 1
    stager.prepare()
    while stager.stage_next(0.0):
        pass
    stager.seal_all()
    assert stager.huey.storage.queue_size() == 0 and stager.huey.storage.lease_count() == 0
    stager.huey.storage.close()
    return ids


def staged_schema(config, task_type="stock_daily"):
    [path] = staged_paths(config, task_type)
    return pq.read_schema(path)


def by_code(config, task_type="stock_daily"):
    return {r["ts_code"]: r for r in staged_rows(config, task_type)}


def with_columns(rows, **columns):
    """``rows`` with each column's values (a list, one per row) added."""
    return [dict(r, **{name: values[i] for name, values in columns.items()}) for i, r in enumerate(rows)]


def test_undeclared_columns_are_staged_with_the_type_arrow_infers(make_config, producer):
    _, config = make_config(stager={"batch_size": 1000})
    rows = with_columns(
        daily_rows(3),
        turnover_rate=[1.5, float("nan"), 2.0],                    # DOUBLE, NaN is NULL as everywhere
        limit_count=[1, 2, None],                                   # BIGINT
        suspend_type=["S", None, "R"],                              # VARCHAR
        is_st=[True, False, None],                                  # BOOLEAN
        list_day=[dt.date(2024, 1, 2), None, None],                 # DATE
        tags=[["a", "b"], None, {"k": 1}],                          # no column type: text (JSON)
        empty_field=[None, None, None],                             # no value at all: nothing to stage
    )
    stage(config, producer, (TaskType.STOCK_DAILY, rows))
    schema = staged_schema(config)
    assert schema.names[:13] == [c.name for c in config.datasets["stock_daily"].columns]
    assert schema.names[13:] == ["_task_id", "_fetched_at", "turnover_rate", "limit_count", "suspend_type",
                                 "is_st", "list_day", "tags"]
    assert [schema.field(n).type for n in schema.names[15:]] == [
        pa.float64(), pa.int64(), pa.string(), pa.bool_(), pa.date32(), pa.string()]
    got = by_code(config)
    assert [got[r["ts_code"]]["turnover_rate"] for r in rows] == [1.5, None, 2.0]
    assert [got[r["ts_code"]]["limit_count"] for r in rows] == [1, 2, None]
    assert [got[r["ts_code"]]["tags"] for r in rows] == ['["a", "b"]', None, '{"k": 1}']
    assert not deadletters(config)


def test_a_dataframe_column_tushare_added_is_staged(make_config, producer):
    pd = pytest.importorskip("pandas")
    _, config = make_config(stager={"batch_size": 1000})
    frame = pd.DataFrame(daily_rows(2))
    frame["ah_new"] = [3.25, float("nan")]
    frame["report_at"] = pd.to_datetime(["2024-01-02 09:30", "2024-01-02 15:00"])
    stage(config, producer, (TaskType.STOCK_DAILY, frame))
    schema = staged_schema(config)
    assert schema.field("ah_new").type == pa.float64() and schema.field("report_at").type == pa.timestamp("us")
    assert sorted(r["ah_new"] for r in staged_rows(config, "stock_daily") if r["ah_new"] is not None) == [3.25]


@pytest.mark.parametrize("batch", [True, False], ids=["one lease batch", "one buffer"])
def test_tasks_that_disagree_on_an_undeclared_column_still_seal_together(make_config, producer, batch):
    """Tasks cleaned together, or joined in the buffer: a column some lack is NULL
    there, integers and floats make DOUBLE, a number and a text make text."""
    _, config = make_config(stager={"batch_size": 1000})
    ids = stage(
        config, producer,
        (TaskType.STOCK_DAILY, pa.Table.from_pylist(with_columns(daily_rows(2), n=[1, 2], x=[7, 8]))),
        (TaskType.STOCK_DAILY, pa.Table.from_pylist(with_columns(daily_rows(2, start=2), n=[2.5, None],
                                                                 x=["seven", "eight"]))),
        (TaskType.STOCK_DAILY, with_columns(daily_rows(2, start=4), x=[9, "mixed in one task"])),
        (TaskType.STOCK_DAILY, daily_rows(2, start=6)),                         # has neither column
        batch=batch)
    schema = staged_schema(config)
    assert schema.field("n").type == pa.float64() and schema.field("x").type == pa.string()
    got = by_code(config)
    assert [got[f"60000{i}.SH"]["n"] for i in range(8)] == [1.0, 2.0, 2.5, None, None, None, None, None]
    assert [got[f"60000{i}.SH"]["x"] for i in range(8)] == ["7", "8", "seven", "eight", "9", "mixed in one task",
                                                            None, None]
    assert {r["_task_id"] for r in got.values()} == set(ids)
    assert not deadletters(config)


@pytest.mark.parametrize("name, why", [
    ("_task_id", "names starting with _ are duckstage's own"),
    ("_fetched_at", "names starting with _ are duckstage's own"),
    ("_anchor_date", "names starting with _ are duckstage's own"),
    ("__ord", "names starting with _ are duckstage's own"),
    ("rowid", "rowid is reserved"),
    ("ROWID", "rowid is reserved"),
    ("file_row_number", "file_row_number is reserved"),
    ("filename", "filename is reserved"),
    ("Close", "DuckDB would take it for the column close"),
    ("TS_CODE", "DuckDB would take it for the column ts_code"),
    ("净利润", "a column name is letters, digits and _"),
    ("pct chg", "a column name is letters, digits and _"),
])
def test_an_undeclared_column_whose_name_would_clash_refuses_its_rows_with_the_reason(make_config, producer,
                                                                                       name, why):
    _, config = make_config(stager={"batch_size": 1000})
    rows = daily_rows(3)
    rows[0][name] = "a value"
    rows[1][name] = None  # no value: nothing is lost by staging the row without the column
    [task] = stage(config, producer, (TaskType.STOCK_DAILY, rows))
    assert sorted(by_code(config)) == ["600001.SH", "600002.SH"]
    assert all(value != "a value" for row in staged_rows(config, "stock_daily") for value in row.values())
    assert name in ("_task_id", "_fetched_at") or name not in staged_schema(config).names
    [dead] = deadletters(config)
    assert dead["task_id"] == task and dead["row"][name] == "a value" and dead["row"]["ts_code"] == "600000.SH"
    assert dead["reason"].startswith(f"{name}: column not declared in datasets.yaml that cannot be staged")
    assert why in dead["reason"] and "rename it in the producer" in dead["reason"]


def test_a_qfq_anchor_sent_as_a_column_is_refused_not_overwritten(make_config, producer):
    """_anchor_date is the stager's own: a producer's value must not pass for it, nor vanish."""
    _, config = make_config(stager={"batch_size": 1000})
    rows = with_columns(daily_rows(2, day="20240105"), _anchor_date=["20991231", "20991231"])
    stage(config, producer, (TaskType.DAILY_BAR_QFQ, rows))
    assert staged_paths(config, "daily_bar_qfq") == []
    assert len(deadletters(config)) == 2
    assert all(d["row"]["_anchor_date"] == "20991231" for d in deadletters(config))


def test_undeclared_columns_reach_a_processor_and_are_staged_from_what_it_returns(make_config, producer, tmp_path,
                                                                                 monkeypatch):
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "duckstage_new_column_rules.py").write_text(
        "import pyarrow as pa\n"
        "def refuse_first(table):\n"
        "    assert 'turnover_rate' in table.column_names\n"
        "    error = pa.array(['first row refused'] + [None] * (table.num_rows - 1), pa.string())\n"
        "    return table.append_column('_error', error)\n")
    monkeypatch.syspath_prepend(str(folder))
    datasets = yaml.safe_load((CONFIG_DIR / "datasets.yaml").read_text())
    datasets["datasets"]["stock_daily"]["processor"] = "duckstage_new_column_rules:refuse_first"
    (tmp_path / "datasets.yaml").write_text(yaml.safe_dump(datasets, allow_unicode=True))
    config = load_config(write_config(tmp_path, datasets=str(tmp_path / "datasets.yaml"),
                                      stager={"batch_size": 1000}))
    stage(config, producer, (TaskType.STOCK_DAILY, with_columns(daily_rows(3), turnover_rate=[1.0, 2.0, 3.0])))
    assert sorted(r["turnover_rate"] for r in staged_rows(config, "stock_daily")) == [2.0, 3.0]
    [dead] = deadletters(config)
    assert dead["row"]["turnover_rate"] == 1.0  # kept in the dead letter too, for a requeue


# -- through a real loader into a real warehouse -------------------------------------

def loader_config(tmp_path, new_columns="add", datasets=None):
    """A config for both processes: fast loader, and ``datasets`` (a path) if given."""
    extra = {"datasets": str(datasets)} if datasets else {}
    path = write_config(tmp_path, stager={"batch_size": 1000},
                        loader={"new_columns": new_columns, "rescan_interval": 0.2, "idle_release": 0,
                                "retry_delay": 0.05, "retry_max_delay": 0.2}, **extra)
    return path, load_config(path)


def load_all(config, path, spawn):
    """Run ``python -m loader run`` until staging/ is empty, then stop it (SIGTERM)."""
    loader = spawn("loader", path, "run")
    wait_for(lambda: not staged_paths(config), timeout=30, message="the loader took every staged file")
    assert loader.stop() == 0, loader.log()


def cli(config, sql):
    """The real duckdb CLI, read-only, as a person looks at the warehouse; rows as dicts."""
    out = subprocess.run([duckdb_cli(), "-readonly", "-json", str(config.loader.database), "-c", sql],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout or "[]")


def column_types(config, table="stock_daily"):
    rows = cli(config, "SELECT column_name, data_type FROM information_schema.columns "
                       f"WHERE table_name = '{table}'")
    return {r["column_name"]: r["data_type"] for r in rows}


def quarantined(config, task_type="stock_daily"):
    folder = config.quarantine_dir / task_type
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.error.json"))] if folder.is_dir() else []


@pytest.mark.parametrize("policy", ["add", "quarantine", "ignore"])
def test_a_new_tushare_field_reaches_the_warehouse_as_the_loader_policy_says(tmp_path, producer, spawn, policy):
    path, config = loader_config(tmp_path, policy)
    stage(config, producer, (TaskType.STOCK_DAILY, daily_rows(2)))
    stage(config, producer, (TaskType.STOCK_DAILY, with_columns(daily_rows(2, start=2), turnover_rate=[1.5, 2.5])))
    load_all(config, path, spawn)
    codes = [r["ts_code"] for r in cli(config, "SELECT ts_code FROM stock_daily ORDER BY 1")]
    if policy == "add":
        assert codes == ["600000.SH", "600001.SH", "600002.SH", "600003.SH"]
        assert column_types(config)["turnover_rate"] == "DOUBLE"
        rows = cli(config, "SELECT ts_code, turnover_rate FROM stock_daily ORDER BY 1")
        assert [r["turnover_rate"] for r in rows] == [None, None, 1.5, 2.5]
    elif policy == "quarantine":
        assert codes == ["600000.SH", "600001.SH"]  # the file with the new column waits for a person
        [report] = quarantined(config)
        assert "turnover_rate" in report["error"] and "new_columns: quarantine" in report["error"]
        assert "turnover_rate" not in column_types(config)
    else:
        assert codes == ["600000.SH", "600001.SH", "600002.SH", "600003.SH"]
        assert "turnover_rate" not in column_types(config)
        archived = [p for p in config.archive_dir.rglob("*.parquet") if "turnover_rate" in pq.read_schema(p).names]
        assert len(archived) == 1  # the values are kept in the archive
        # Changing one's mind: switch to `add` and replay the archive.
        path, config = loader_config(tmp_path, "add")
        out = subprocess.run([sys.executable, "-m", "loader", "--config", str(path), "rebuild", "--task-type",
                              "stock_daily"], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        rows = cli(config, "SELECT ts_code, turnover_rate FROM stock_daily ORDER BY 1")
        assert [r["turnover_rate"] for r in rows] == [None, None, 1.5, 2.5]


def declare(tmp_path, **columns):
    """A datasets.yaml where stock_daily also declares ``columns`` (name -> DuckDB type)."""
    datasets = yaml.safe_load((CONFIG_DIR / "datasets.yaml").read_text())
    declared = datasets["datasets"]["stock_daily"]["columns"]
    declared += [{"name": name, "type": type_} for name, type_ in columns.items()]
    path = tmp_path / "declared" / "datasets.yaml"
    path.parent.mkdir()
    path.write_text(yaml.safe_dump(datasets, allow_unicode=True))
    return path


def test_declaring_a_staged_column_later_with_another_type(tmp_path, producer, spawn):
    """Text and an inferred BIGINT in the warehouse, later declared DOUBLE: the first file
    of the new type is quarantined with a reason that says what to do, and doing it
    (ALTER the column in the duckdb CLI, `loader reload` the file) loads it. Nothing is lost."""
    path, config = loader_config(tmp_path)
    stage(config, producer, (TaskType.STOCK_DAILY, with_columns(daily_rows(2), note_pct=["1.5", "2.5"],
                                                                 cnt=[1, 2])))
    load_all(config, path, spawn)
    assert {k: v for k, v in column_types(config).items() if k in ("note_pct", "cnt")} == \
        {"note_pct": "VARCHAR", "cnt": "BIGINT"}

    declared = declare(tmp_path, note_pct="DOUBLE", cnt="DOUBLE")
    path, config = loader_config(tmp_path, datasets=declared)  # both processes restarted with it
    stage(config, producer, (TaskType.STOCK_DAILY, with_columns(daily_rows(2, start=1, close=11.0),
                                                                 note_pct=["3.5", "4.5"], cnt=[3, 4])))
    assert staged_schema(config).field("note_pct").type == pa.float64()  # now converted as declared
    load_all(config, path, spawn)
    [report] = quarantined(config)
    assert "is DOUBLE in the file but" in report["error"] and "in table stock_daily" in report["error"]
    assert "change the table's column type in DuckDB and `loader reload` this file" in report["what_to_do"]

    out = subprocess.run([duckdb_cli(), str(config.loader.database), "-c",
                          "ALTER TABLE stock_daily ALTER note_pct TYPE DOUBLE; "
                          "ALTER TABLE stock_daily ALTER cnt TYPE DOUBLE"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    [file] = (config.quarantine_dir / "stock_daily").glob("*.parquet")
    out = subprocess.run([sys.executable, "-m", "loader", "--config", str(path), "reload", str(file)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    rows = cli(config, "SELECT ts_code, close, note_pct, cnt FROM stock_daily ORDER BY 1")
    assert [(r["ts_code"], r["close"], r["note_pct"], r["cnt"]) for r in rows] == [
        ("600000.SH", 10.2, 1.5, 1.0), ("600001.SH", 11.0, 3.5, 3.0), ("600002.SH", 11.0, 4.5, 4.0)]
    assert quarantined(config) == []

