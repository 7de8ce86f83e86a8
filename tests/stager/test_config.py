import subprocess
import sys

import pytest
import yaml

from duckstage.config import from_mapping, load_config
from duckstage.datasets import parse_datasets
from duckstage.exceptions import ConfigError
from tests.helpers import CONFIG_DIR, write_config


def test_defaults_follow_the_original_design(tmp_path):
    config = from_mapping({}, config_dir=CONFIG_DIR, cwd=tmp_path)
    s, lo = config.stager, config.loader
    assert (s.worker_threads, s.batch.batch_size, s.batch.batch_timeout, s.queue_check_interval) == (4, 1000, 30, 0.1)
    assert (lo.max_retries, lo.retry_delay) == (3, 5)
    assert s.run_huey_consumer is True
    assert config.huey.backend == "sqlite" and config.huey.name == "duckstage"
    assert config.data_dir == tmp_path / "data"
    assert config.huey.path == tmp_path / "data" / "huey.db"
    assert config.loader.database.path == tmp_path / "data" / "warehouse.duckdb"


def test_shipped_config_file_equals_the_defaults(tmp_path):
    shipped = load_config(CONFIG_DIR / "duckstage.yaml", cwd=tmp_path)
    # Its data_dir (../data) is the repository's data folder, wherever the process starts.
    defaults = from_mapping({}, config_dir=CONFIG_DIR, cwd=CONFIG_DIR.parent)
    assert shipped.data_dir == CONFIG_DIR.parent / "data"
    assert shipped.stager == defaults.stager and shipped.loader == defaults.loader
    assert shipped.huey == defaults.huey


@pytest.mark.parametrize("raw, key, expected", [
    ({"stager": {"batch_sise": 10}}, "stager.batch_sise", "unknown key"),
    ({"stager": {"batch_size": "many"}}, "stager.batch_size", "a positive number of rows"),
    ({"stager": {"batch_size": 0}}, "stager.batch_size", "a positive number of rows"),
    ({"stager": {"worker_threads": True}}, "stager.worker_threads", "an integer from 1 to 64"),
    ({"huey": {"backend": "postgres"}}, "huey.backend", "one of sqlite, redis"),
    ({"huey": {"backend": "redis"}}, "huey.url", "a Redis URL, redis://HOST:PORT/DB (required with huey.backend: redis)"),
    ({"huey": {"backend": "redis", "url": "http://127.0.0.1:6379/0"}}, "huey.url", "a Redis URL"),
    ({"huey": {"backend": "redis", "url": "redis://127.0.0.1:port/0"}}, "huey.url", "a Redis URL"),
    ({"huey": {"backend": "redis", "url": "redis://127.0.0.1:6379/zero"}}, "huey.url", "a Redis URL"),
    ({"huey": {"backend": "redis", "url": "redis://127.0.0.1:6379/0", "path": "huey.db"}}, "huey.path",
     "no huey.path with huey.backend: redis (only backend sqlite reads it)"),
    ({"huey": {"backend": "redis", "url": "redis://127.0.0.1:6379/0", "fsync": False}}, "huey.fsync",
     "no huey.fsync with huey.backend: redis"),
    ({"huey": {"url": "redis://127.0.0.1:6379/0"}}, "huey.url",
     "no huey.url with huey.backend: sqlite (only backend redis reads it)"),
    ({"huey": {"lease_timeout": 10}}, "huey.lease_timeout", "no huey.lease_timeout with huey.backend: sqlite"),
    ({"huey": {"backend": "redis", "url": "redis://h/0", "lease_timeout": 0.5}}, "huey.lease_timeout",
     "a number of seconds >= 1"),
    ({"loader": {"new_columns": "merge"}}, "loader.new_columns", "one of add, quarantine, ignore"),
    ({"loader": {"memory_limit": "lots"}}, "loader.memory_limit", "a size of at least 64MB, such as 512MB"),
    ({"loader": {"memory_limit": 512}}, "loader.memory_limit", "a size of at least 64MB, such as 512MB or 2GB"),
    ({"loader": {"memory_limit": "10MB"}}, "loader.memory_limit", "a size of at least 64MB"),
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


def test_cli_refuses_a_typo_in_one_line_without_traceback(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("stager:\n  bach_size: 10\n")
    out = subprocess.run([sys.executable, "-m", "stager", "--config", str(path), "run"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "stager.bach_size" in out.stderr and "unknown key" in out.stderr
    assert "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_cli_refuses_unreadable_yaml(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("stager: [unclosed\n")
    out = subprocess.run([sys.executable, "-m", "stager", "--config", str(path), "run"],
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


def test_every_invalid_key_is_named_not_only_the_first(tmp_path):
    raw = {"stager": {"batch_size": 0, "bach_timeout": 3, "task_types": {"income": {"batch_size": -5}}},
           "loader": {"new_columns": "merge"}, "log_level": "LOUD"}
    with pytest.raises(ConfigError) as err:
        from_mapping(raw, source="x.yaml", config_dir=CONFIG_DIR, cwd=tmp_path)
    assert set(err.value.keys) == {"stager.bach_timeout", "log_level", "stager.batch_size",
                                   "loader.new_columns", "stager.task_types.income.batch_size"}
    message = str(err.value)
    assert message.startswith("x.yaml: ") and message.count("x.yaml") == 1 and "\n" not in message
    assert "stager.batch_size: expected a positive number of rows, got 0" in message


def test_every_invalid_key_of_the_datasets_file_is_named():
    raw = _datasets(primary_key=["ts_code", "nope"], colums=[])
    raw["datasets"]["income"]["columns"][1]["type"] = "MONEY"
    raw["datasets"]["income"]["columns"][2]["nullable"] = "yes"
    raw["datasets"]["cashflow"]["processor"] = "no colon here"
    with pytest.raises(ConfigError) as err:
        parse_datasets(raw, "datasets.yaml")
    assert set(err.value.keys) == {"datasets.stock_daily.colums", "datasets.stock_daily.primary_key",
                                   "datasets.income.columns[1].type", "datasets.income.columns[2].nullable",
                                   "datasets.cashflow.processor"}


def test_relative_paths_are_relative_to_the_configuration_file(tmp_path):
    folder = tmp_path / "etc" / "duckstage"
    folder.mkdir(parents=True)
    (folder / "datasets.yaml").write_text((CONFIG_DIR / "datasets.yaml").read_text())
    (folder / "duckstage.yaml").write_text("data_dir: ../../var/data\nloader:\n  database: wh/warehouse.duckdb\n")
    for cwd in (tmp_path, folder, tmp_path / "etc"):
        config = load_config(folder / "duckstage.yaml", cwd=cwd)
        assert config.data_dir == tmp_path / "var" / "data"
        assert config.huey.path == tmp_path / "var" / "data" / "huey.db"
        assert config.loader.database.path == tmp_path / "var" / "data" / "wh" / "warehouse.duckdb"
    # The same file named relative to the working directory, or through the environment.
    assert load_config("etc/duckstage/duckstage.yaml", cwd=tmp_path).data_dir == tmp_path / "var" / "data"
    config = load_config(environ={"DUCKSTAGE_CONFIG": str(folder / "duckstage.yaml")}, cwd=tmp_path / "etc")
    assert config.data_dir == tmp_path / "var" / "data" and config.source == str(folder / "duckstage.yaml")


def test_without_a_file_paths_are_relative_to_the_working_directory(tmp_path):
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "datasets.yaml").write_text((CONFIG_DIR / "datasets.yaml").read_text())
    config = load_config(environ={}, cwd=tmp_path)
    assert config.source == "<defaults>" and config.data_dir == tmp_path / "data"
    assert str(tmp_path / "config" / "duckstage.yaml") in config.note and "defaults" in config.note
    with pytest.raises(ConfigError) as err:
        load_config(environ={}, cwd=tmp_path / "config")  # no datasets file there either
    assert "no configuration file" in str(err.value) and err.value.key == "datasets"


def test_inspect_config_keeps_the_valid_keys_and_names_the_invalid_ones(tmp_path):
    from duckstage.config import inspect_config

    path = write_config(tmp_path, stager={"batch_size": "lots", "batch_timeout": 7}, loader={"retry_delay": -1})
    config, refused = inspect_config(path)
    assert config.data_dir == tmp_path / "data"  # valid: kept, so status finds the running process
    assert config.stager.batch.batch_timeout == 7 and config.stager.batch.batch_size == 1000
    assert refused.keys == ["stager.batch_size", "loader.retry_delay"]
    path.write_text("stager: [unclosed\n")
    config, refused = inspect_config(path)
    assert refused.key == "(file)" and "valid YAML" in str(refused)


def test_a_redis_password_is_never_shown(tmp_path):
    from duckstage.config import running_values

    config = from_mapping({"huey": {"backend": "redis", "url": "redis://user:s3cret@queue.internal:6379/2"}},
                          config_dir=CONFIG_DIR, cwd=tmp_path)
    assert config.huey.url == "redis://user:s3cret@queue.internal:6379/2"  # what the client connects with
    assert config.huey.location == running_values(config)["huey.url"] == "redis://user:***@queue.internal:6379/2"
    assert "s3cret" not in repr(config)
    with pytest.raises(ConfigError) as err:  # refused for its port: still not shown
        from_mapping({"huey": {"backend": "redis", "url": "redis://:s3cret@queue.internal:port/2"}},
                     config_dir=CONFIG_DIR, cwd=tmp_path)
    assert err.value.key == "huey.url" and "s3cret" not in str(err.value)
