"""config/grafana-dashboard.json and config/alerts.yml: valid, and naming only metrics the processes expose."""

import json
import re

import yaml

from loader.metrics import families as loader_families
from loader.service import Loader
from duckstage.config import load_config
from stager.metrics import families as stager_families
from stager.service import Stager
from tests.helpers import CONFIG_DIR, write_config

NAME = re.compile(r"\bduckstage_[a-z_]+")
SUFFIXES = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "gauge": [""]}


def exposed(tmp_path):
    """Every sample name the real Stager and Loader expose (families built from their get_status())."""
    config = load_config(write_config(tmp_path, stager={"metrics_port": 0}))
    stager = Stager(config)
    stager.prepare()
    loader = Loader(config)
    loader.run_once()
    names = set()
    try:
        for fam in [*stager_families(stager.get_status()), *loader_families(loader.get_status())]:
            names.update(fam.name + suffix for suffix in SUFFIXES[fam.type])
    finally:
        stager.huey.storage.close()
        loader.stop()
    return names


def exprs(node):
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("expr", "definition") and isinstance(value, str):
                yield value
            elif key == "query" and isinstance(value, dict):
                yield value.get("query", "")
            else:
                yield from exprs(value)
    elif isinstance(node, list):
        for item in node:
            yield from exprs(item)


def test_the_dashboard_is_valid_json_and_names_only_metrics_that_exist(tmp_path):
    dashboard = json.loads((CONFIG_DIR / "grafana-dashboard.json").read_text())
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    assert all(p["targets"] and all(t["expr"] for t in p["targets"]) for p in panels)
    used = {n for e in exprs(dashboard) for n in NAME.findall(e)}
    names = exposed(tmp_path)
    assert used and used <= names, sorted(used - names)
    # The panels the issue asks for are there.
    for metric in ("duckstage_stager_rows_in_total", "duckstage_stager_tasks_total", "duckstage_huey_queue_tasks",
                   "duckstage_huey_result_store_entries", "duckstage_stager_buffer_rows",
                   "duckstage_stager_buffer_age_seconds", "duckstage_stager_files_sealed_total",
                   "duckstage_loader_files_loaded_total", "duckstage_loader_rows_inserted_total",
                   "duckstage_loader_rows_updated_total", "duckstage_stager_seals_total",
                   "duckstage_loader_batches_total", "duckstage_stager_rows_deadlettered_total",
                   "duckstage_loader_files_quarantined_total", "duckstage_loader_retry_attempts",
                   "duckstage_stager_thread_state", "duckstage_loader_manifest_last_loaded_timestamp_seconds",
                   "duckstage_loader_lag_seconds_bucket", "duckstage_stager_rows_per_second"):
        assert metric in used, metric


def test_the_alert_rules_are_valid_yaml_and_name_only_metrics_that_exist(tmp_path):
    rules = yaml.safe_load((CONFIG_DIR / "alerts.yml").read_text())["groups"][0]["rules"]
    names = exposed(tmp_path)
    for rule in rules:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"} and rule["labels"]["severity"]
        used = set(NAME.findall(rule["expr"]))
        assert used and used <= names, (rule["alert"], sorted(used - names))
    alerts = {r["alert"] for r in rules}
    assert {"DuckstageLoaderNotLoading", "DuckstageQueueBacklogGrowing", "DuckstageDeadLetters",
            "DuckstageLoaderRetriesNotEnding"} <= alerts
