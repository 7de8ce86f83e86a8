"""Custom processors: named in datasets.yaml or registered by an entry point, applied before staging."""

import textwrap

import pyarrow.parquet as pq
import pytest
import yaml

from stager import TaskType
from duckstage.config import load_config
from duckstage.exceptions import ConfigError
from stager.service import Stager
from tests.helpers import CONFIG_DIR, write_config
from tests.stager.helpers import daily_rows, deadletters, staged_paths

RULES = '''
import pyarrow as pa
import pyarrow.compute as pc

def double_close(table):
    i = table.schema.get_field_index("close")
    return table.set_column(i, "close", pc.multiply(table["close"], 2))

def explode(table):
    raise ValueError("boom")

def drop_a_column(table):
    return table.drop_columns(["close"])

def refuse_sz(table):
    codes = table["ts_code"]
    error = pc.if_else(pc.ends_with(codes, ".SZ"), pa.scalar("no Shenzhen rows here"), pa.scalar(None, pa.string()))
    return table.append_column("_error", error)

def only_sh_reversed(table):
    kept = table.filter(pc.ends_with(table["ts_code"], ".SH"))
    return kept.take(list(reversed(range(kept.num_rows))))
'''


@pytest.fixture
def rules(tmp_path, monkeypatch):
    """A module of processors, importable as ``duckstage_test_rules``."""
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "duckstage_test_rules.py").write_text(RULES)
    monkeypatch.syspath_prepend(str(folder))
    return folder


def configured(tmp_path, processor, **stager):
    """A config whose datasets file gives stock_daily ``processor``."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    datasets = yaml.safe_load((CONFIG_DIR / "datasets.yaml").read_text())
    if processor:
        datasets["datasets"]["stock_daily"]["processor"] = processor
    path = tmp_path / "datasets.yaml"
    path.write_text(yaml.safe_dump(datasets, allow_unicode=True))
    return load_config(write_config(tmp_path, datasets=str(path), stager={"batch_size": 1000, **stager}))


def run(config, producer, *tasks):
    enqueue = producer(config)
    results = [enqueue(task_type, rows) for task_type, rows in tasks]
    stager = Stager(config)
    stager.prepare()
    while stager.stage_next(0.0):
        pass
    stager.seal_all()
    return stager, [r.id for r in results]


def staged(config, task_type="stock_daily"):
    return [r for p in staged_paths(config, task_type) for r in pq.read_table(p).to_pylist()]


def queue_empty(stager):
    return stager.huey.storage.queue_size() == 0 and stager.huey.storage.lease_count() == 0


def test_a_processor_named_in_datasets_yaml_transforms_the_rows(tmp_path, rules, producer):
    config = configured(tmp_path, "duckstage_test_rules:double_close")
    stager, ids = run(config, producer, ("stock_daily", daily_rows(2)), ("stock_daily", daily_rows(3, start=10)))
    rows = staged(config)
    assert sorted(r["close"] for r in rows) == [20.4] * 5
    assert sorted(r["_task_id"] for r in rows) == sorted([ids[0]] * 2 + [ids[1]] * 3)
    assert queue_empty(stager)
    st = stager.get_status()
    assert st["processors"] == {"stock_daily": "duckstage_test_rules:double_close"}
    assert st["task_types"]["stock_daily"]["rows_staged"] == 5


def test_a_processor_that_raises_dead_letters_its_rows_and_the_stager_goes_on(tmp_path, rules, producer):
    config = configured(tmp_path, "duckstage_test_rules:explode")
    basic = [dict(ts_code="600000.SH", symbol="600000", name="浦发银行")]
    stager, ids = run(config, producer, ("stock_daily", daily_rows(4)), (TaskType.STOCK_BASIC, basic))
    assert staged(config) == []
    dead = deadletters(config)
    assert len(dead) == 4 and {d["task_id"] for d in dead} == {ids[0]}
    assert all("duckstage_test_rules:explode raised ValueError: boom" in d["reason"] for d in dead)
    assert dead[0]["row"]["trade_date"] == "2024-01-02" and "_task_id" not in dead[0]["row"]
    assert [r["ts_code"] for r in staged(config, "stock_basic")] == ["600000.SH"]  # other types go on
    assert queue_empty(stager)  # the failed task is acknowledged: its rows are in the dead letter
    st = stager.get_status()["task_types"]["stock_daily"]
    assert st["deadlettered_by_reason"] == {"processor_error": 4} and st["rows_deadlettered"] == 4

    # The same processor again, the stager still stages what it can: a wrong table is refused the same way.
    config = configured(tmp_path / "wrong", "duckstage_test_rules:drop_a_column")
    stager, _ = run(config, producer, ("stock_daily", daily_rows(2)))
    assert staged(config) == [] and queue_empty(stager)
    assert all("not the staged schema: missing close" in d["reason"] for d in deadletters(config))


def test_a_processor_refuses_rows_with_an_error_column_and_may_filter(tmp_path, rules, producer):
    config = configured(tmp_path, "duckstage_test_rules:refuse_sz")
    stager, ids = run(config, producer, ("stock_daily", daily_rows(2) + daily_rows(1, exchange="SZ")))
    assert [r["ts_code"] for r in staged(config)] == ["600000.SH", "600001.SH"]
    [dead] = deadletters(config)
    assert dead["row"]["ts_code"] == "600000.SZ" and dead["task_id"] == ids[0]
    assert dead["reason"] == "processor duckstage_test_rules:refuse_sz: no Shenzhen rows here"
    assert stager.get_status()["task_types"]["stock_daily"]["deadlettered_by_reason"] == {"processor_rejected": 1}

    config = configured(tmp_path / "filter", "duckstage_test_rules:only_sh_reversed")
    stager, ids = run(config, producer, ("stock_daily", daily_rows(2)),
                      ("stock_daily", daily_rows(1, start=5, exchange="SZ")),
                      ("stock_daily", daily_rows(2, start=10)))
    rows = staged(config)
    # Reordered and filtered by the processor, still attributed task by task.
    assert [r["_task_id"] for r in rows] == [ids[0], ids[0], ids[2], ids[2]]
    assert queue_empty(stager) and deadletters(config) == []
    assert stager.get_status()["task_types"]["stock_daily"]["rows_filtered"] == 1


def test_a_processor_that_does_not_import_is_refused_at_start_naming_the_key(tmp_path, rules):
    for spec, why in (("duckstage_test_rules:nope", "has no nope"), ("no_such_module_xyz:f", "import failed")):
        config = configured(tmp_path, spec)  # the configuration itself is fine: the loader never imports it
        with pytest.raises(ConfigError) as refused:
            Stager(config)
        assert refused.value.key == "datasets.stock_daily.processor" and why in str(refused.value)
    with pytest.raises(ConfigError) as refused:
        configured(tmp_path, "just_a_name")  # not even of the form module:function
    assert refused.value.key == "datasets.stock_daily.processor" and "module:function" in str(refused.value)


def test_a_package_registers_a_processor_by_entry_point(tmp_path, rules, producer, monkeypatch):
    site = tmp_path / "site"
    dist = site / "duckstage_test_plugin-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: duckstage-test-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(textwrap.dedent("""\
        [duckstage.processors]
        stock_daily = duckstage_test_rules:double_close
        """))
    monkeypatch.syspath_prepend(str(site))
    config = configured(tmp_path, None)
    stager, _ = run(config, producer, ("stock_daily", daily_rows(1)))
    assert stager.processors["stock_daily"].origin == "entry point"
    assert [r["close"] for r in staged(config)] == [20.4]
