"""Which datasets keep history, declared in datasets.yaml: what the shipped file says, and a
wrong declaration refused with its key."""

import subprocess
import sys

import pytest
import yaml

from duckstage.datasets import parse_datasets
from duckstage.exceptions import ConfigError
from tests.helpers import CONFIG_DIR, write_config


def shipped():
    return yaml.safe_load((CONFIG_DIR / "datasets.yaml").read_text(encoding="utf-8"))


def test_statements_keep_history_by_announcement_and_stock_basic_by_fetch():
    datasets = parse_datasets(shipped(), "datasets.yaml")
    kept = {d.name: d.history.valid_from for d in datasets if d.history is not None}
    assert kept == {"income": ("f_ann_date", "ann_date"), "balancesheet": ("f_ann_date", "ann_date"),
                    "cashflow": ("f_ann_date", "ann_date"), "stock_basic": ("_fetched_at",)}
    assert datasets["income"].history_table == "income_history"


@pytest.mark.parametrize("history, expected", [
    ({"valid_from": "ann_date", "by": "x"}, "{valid_from: <column or list of columns>}"),
    ("ann_date", "{valid_from: <column or list of columns>}"),
    ({"valid_from": []}, "a DATE or TIMESTAMP column"),
    ({"valid_from": ["basic_eps"]}, "(basic_eps is not one)"),
    ({"valid_from": ["nope"]}, "(nope is not one)"),
    ({"valid_from": ["_fetched_at", "ann_date"]}, "_fetched_at last"),
    ({"valid_from": [3]}, "a DATE or TIMESTAMP column"),
])
def test_a_wrong_history_is_refused_naming_the_key(history, expected):
    raw = shipped()
    raw["datasets"]["income"]["history"] = history
    with pytest.raises(ConfigError) as err:
        parse_datasets(raw, "datasets.yaml")
    assert err.value.key.startswith("datasets.income.history"), str(err.value)
    assert expected in str(err.value)


def test_a_dataset_may_not_take_the_name_of_another_ones_history():
    raw = shipped()
    raw["datasets"]["income_history"] = raw["datasets"]["stock_daily"]
    with pytest.raises(ConfigError) as err:
        parse_datasets(raw, "datasets.yaml")
    assert err.value.key == "datasets.income_history"
    assert "datasets.income.history keeps its versions in the table income_history" in str(err.value)


def test_the_loader_refuses_a_wrong_history_in_one_line_with_exit_2(tmp_path):
    raw = shipped()
    raw["datasets"]["stock_basic"]["history"] = {"valid_from": "name"}
    (tmp_path / "datasets.yaml").write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    path = write_config(tmp_path, datasets=str(tmp_path / "datasets.yaml"))
    done = subprocess.run([sys.executable, "-m", "loader", "--config", str(path), "asof", "income", "2024-04-30"],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "datasets.stock_basic.history.valid_from: expected a DATE or TIMESTAMP column" in done.stderr
