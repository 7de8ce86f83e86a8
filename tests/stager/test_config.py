import subprocess
import sys

import pytest
import yaml

from stager.config import from_mapping, load_config
from stager.datasets import parse_datasets
from stager.exceptions import ConfigError
from tests.conftest import CONFIG_DIR, write_config


def test_defaults_follow_the_original_design(tmp_path):
    config = from_mapping({}, config_dir=CONFIG_DIR, cwd=tmp_path)
    s, lo = config.stager, config.loader
    assert (s.worker_threads, s.batch.batch_size, s.batch.batch_timeout, s.queue_check_interval) == (4, 1000, 30, 0.1)
    assert (lo.max_retries, lo.retry_delay) == (3, 5)
    assert s.run_huey_consumer is True
    assert config.huey.backend == "sqlite" and config.huey.name == "duckstage"
    assert config.data_dir == tmp_path / "data"
    assert config.huey.path == tmp_path / "data" / "huey.db"
    assert config.loader.database == tmp_path / "data" / "warehouse.duckdb"


def test_shipped_config_file_equals_the_defaults(tmp_path):
    shipped = load_config(CONFIG_DIR / "duckstage.yaml", cwd=tmp_path)
    defaults = from_mapping({}, config_dir=CONFIG_DIR, cwd=tmp_path)
    assert shipped.stager == defaults.stager and shipped.loader == defaults.loader
    assert shipped.huey == defaults.huey


@pytest.mark.parametrize("raw, key, expected", [
    ({"stager": {"batch_sise": 10}}, "stager.batch_sise", "unknown key"),
    ({"stager": {"batch_size": "many"}}, "stager.batch_size", "a positive number of rows"),
    ({"stager": {"batch_size": 0}}, "stager.batch_size", "a positive number of rows"),
    ({"stager": {"worker_threads": True}}, "stager.worker_threads", "an integer from 1 to 64"),
    ({"huey": {"backend": "redis"}}, "huey.backend", "sqlite"),
    ({"loader": {"new_columns": "merge"}}, "loader.new_columns", "one of add, quarantine, ignore"),
    ({"log_level": "LOUD"}, "log_level", "one of DEBUG"),
    ({"stager": {"task_types": {"incomes": {"batch_size": 5}}}}, "stager.task_types.incomes", "a task type declared"),
    ({"stager": {"task_types": {"income": {"batch_size": -5}}}}, "stager.task_types.income.batch_size", "positive"),
    ({"stager": 5}, "stager", "a mapping"),
])
def test_wrong_keys_types_and_values_are_refused_with_the_key(tmp_path, raw, key, expected):
    with pytest.raises(ConfigError) as err:
        from_mapping(raw, source="x.yaml", config_dir=CONFIG_DIR, cwd=tmp_path)
    assert err.value.key == key
    assert expected in str(err.value)
    assert str(err.value).startswith("x.yaml: " + key)


def test_per_task_type_batch_settings_override_the_global_ones(tmp_path):
    config = from_mapping({"stager": {"batch_size": 500, "task_types": {"income": {"batch_timeout": 300}}}},
                          config_dir=CONFIG_DIR, cwd=tmp_path)
    assert config.stager.batch_for("income").batch_timeout == 300
    assert config.stager.batch_for("income").batch_size == 500
    assert config.stager.batch_for("stock_daily").batch_timeout == 30


def test_environment_variable_chooses_the_file(tmp_path):
    path = write_config(tmp_path, stager={"batch_size": 7})
    config = load_config(environ={"DUCKSTAGE_CONFIG": str(path)})
    assert config.stager.batch.batch_size == 7 and config.source == str(path)


@pytest.mark.parametrize("command", ["run", "status"])
def test_cli_refuses_a_typo_in_one_line_without_traceback(tmp_path, command):
    path = tmp_path / "bad.yaml"
    path.write_text("stager:\n  bach_size: 10\n")
    out = subprocess.run([sys.executable, "-m", "stager", "--config", str(path), command],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "stager.bach_size" in out.stderr and "unknown key" in out.stderr
    assert "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_cli_refuses_unreadable_yaml(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("stager: [unclosed\n")
    out = subprocess.run([sys.executable, "-m", "stager", "--config", str(path), "status"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "valid YAML" in out.stderr and "Traceback" not in out.stderr


def _datasets(**overrides):
    raw = yaml.safe_load((CONFIG_DIR / "datasets.yaml").read_text())
    raw["datasets"]["stock_daily"].update(overrides)
    return raw


@pytest.mark.parametrize("overrides, key", [
    ({"primary_key": ["ts_code", "nope"]}, "datasets.stock_daily.primary_key"),
    ({"primary_key": ["pre_close"]}, "datasets.stock_daily.primary_key"),
    ({"version_order": ["_anchor_date"]}, "datasets.stock_daily.version_order"),
    ({"colums": []}, "datasets.stock_daily.colums"),
])
def test_datasets_file_errors_name_the_key(overrides, key):
    with pytest.raises(ConfigError) as err:
        parse_datasets(_datasets(**overrides), "datasets.yaml")
    assert err.value.key == key


def test_unknown_column_type_is_refused():
    raw = _datasets()
    raw["datasets"]["stock_daily"]["columns"][2]["type"] = "MONEY"
    with pytest.raises(ConfigError) as err:
        parse_datasets(raw, "datasets.yaml")
    assert err.value.key == "datasets.stock_daily.columns[2].type"


def test_a_new_task_type_needs_no_code(tmp_path):
    raw = yaml.safe_load((CONFIG_DIR / "datasets.yaml").read_text())
    raw["datasets"]["adj_factor"] = {
        "primary_key": ["ts_code", "trade_date"],
        "columns": [{"name": "ts_code", "type": "VARCHAR", "nullable": False},
                    {"name": "trade_date", "type": "DATE", "nullable": False},
                    {"name": "adj_factor", "type": "DOUBLE"}]}
    path = tmp_path / "datasets.yaml"
    path.write_text(yaml.safe_dump(raw, allow_unicode=True))
    config = from_mapping({"datasets": str(path)}, cwd=tmp_path)
    assert "adj_factor" in config.datasets
    assert config.datasets["adj_factor"].version_order == ("_fetched_at",)


@pytest.mark.parametrize("command", ["run", "status"])
def test_cli_refuses_an_unusable_data_dir_in_one_line(tmp_path, command):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    path = write_config(tmp_path, data_dir=str(blocker / "data"))
    out = subprocess.run([sys.executable, "-m", "stager", "--config", str(path), command],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr and str(blocker) in out.stderr
