"""The loader's Prometheus metrics, built from ``Loader.get_status()`` (see duckstage.ops).

Every metric here is a reading of one status field, so ``loader status`` and
``/metrics`` show the same numbers. Counters count since the process started.
"""

import datetime as dt

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from duckstage.metrics import by_reason, by_result, per_task_type, per_task_type_and, process_families
from duckstage.ops import histogram_buckets

TT = ["task_type"]
STATES = ("idle", "loading", "retrying", "stopped")


def _timestamp(iso):
    try:
        return dt.datetime.fromisoformat(iso).timestamp()
    except (TypeError, ValueError):
        return None


def families(st):
    """Metric families of one loader status dict."""
    per_type = st.get("task_types", {})

    yield GaugeMetricFamily("duckstage_loader_up", "1 while the loader runs", value=0 if st.get("state") == "stopped"
                            else 1)
    if st.get("started_at"):
        yield GaugeMetricFamily("duckstage_loader_start_time_seconds", "When the loader started (unix time)",
                                value=st["started_at"])
    state = GaugeMetricFamily("duckstage_loader_state", "1 for the loader's current state", labels=["state"])
    for name in STATES:
        state.add_metric([name], 1 if st.get("state") == name else 0)
    yield state

    counter = CounterMetricFamily
    yield per_task_type(counter, "duckstage_loader_files_loaded", "Staged files merged", per_type, "files_loaded")
    yield per_task_type(counter, "duckstage_loader_files_skipped",
                        "Staged files already in the manifest (merged before a crash), archived",
                        per_type, "files_skipped")
    yield per_task_type(counter, "duckstage_loader_files_duplicate",
                        "Staged files whose content was loaded under another name: archived, not merged",
                        per_type, "files_duplicate")
    yield per_task_type(counter, "duckstage_loader_rows", "Rows read from merged files", per_type, "rows")
    yield per_task_type(counter, "duckstage_loader_rows_inserted", "Rows inserted by MERGE", per_type, "inserted")
    yield per_task_type(counter, "duckstage_loader_rows_updated", "Rows updated by MERGE", per_type, "updated")

    yield per_task_type_and("duckstage_loader_batches",
                            "Batch saves (a task type's load cycle) by result; failed: the database was busy",
                            per_type, "result", by_result("batches_ok", "batches_failed"))
    yield per_task_type_and("duckstage_loader_files_quarantined", "Files sent to quarantine, by reason",
                            per_type, "reason", by_reason("quarantined_by_reason"))
    waiting = GaugeMetricFamily("duckstage_loader_quarantine_files", "Files in quarantine now", labels=TT)
    for task_type, n in sorted((st.get("quarantine_files") or {}).items()):
        waiting.add_metric([task_type], n)
    yield waiting

    pending = GaugeMetricFamily("duckstage_loader_pending_files", "Sealed files waiting in staging/", labels=TT)
    for task_type in sorted(per_type):
        pending.add_metric([task_type], (st.get("pending_files") or {}).get(task_type, 0))
    yield pending
    unknown = GaugeMetricFamily("duckstage_loader_unknown_task_type_files",
                                "Sealed files of a task type not in datasets.yaml (never loaded)", labels=TT)
    for task_type, n in sorted((st.get("unknown_task_types") or {}).items()):
        unknown.add_metric([task_type], n)
    yield unknown
    yield GaugeMetricFamily("duckstage_loader_not_staged_files",
                            "Entries in staging/ that are not staged files: never loaded, not quarantined",
                            value=(st.get("not_staged") or {}).get("files", 0))

    last = GaugeMetricFamily("duckstage_loader_last_load_timestamp_seconds",
                             "When a load of this task type last committed (unix time)", labels=TT)
    for task_type, t in sorted(per_type.items()):
        if t.get("last_loaded_at"):
            last.add_metric([task_type], t["last_loaded_at"])
    yield last
    manifest_last = GaugeMetricFamily("duckstage_loader_manifest_last_loaded_timestamp_seconds",
                                      "Latest load in the manifest, this process or earlier ones (unix time)",
                                      labels=TT)
    for task_type, m in sorted((st.get("manifest") or {}).items()):
        ts = _timestamp(m.get("last_loaded_at"))
        if ts is not None:
            manifest_last.add_metric([task_type], ts)
    yield manifest_last

    lag = HistogramMetricFamily("duckstage_loader_lag_seconds",
                                "End-to-end lag per merged file: its oldest row's fetch (or enqueue) time to commit",
                                labels=TT)
    for task_type, h in sorted((st.get("lag") or {}).items()):
        lag.add_metric([task_type], histogram_buckets(h), sum_value=h["sum"])
    yield lag
    last_lag = GaugeMetricFamily("duckstage_loader_last_lag_seconds",
                                 "End-to-end lag of the last commit: oldest and newest row", labels=["task_type", "edge"])
    for task_type, t in sorted(per_type.items()):
        for edge, value in sorted((t.get("last_lag_seconds") or {}).items()):
            last_lag.add_metric([task_type, edge], value)
    yield last_lag

    yield GaugeMetricFamily("duckstage_loader_rows_per_second", "Rows merged per second in the last load cycle",
                            value=st.get("rows_per_second") or 0)
    yield GaugeMetricFamily("duckstage_loader_database_open", "1 while the loader holds the database",
                            value=1 if st.get("database_open") else 0)

    if st.get("snapshot") is not None:  # a DuckLake
        yield GaugeMetricFamily("duckstage_loader_snapshot", "The DuckLake snapshot after the last load step",
                                value=st["snapshot"])
    upkeep = st.get("maintenance")
    if upkeep is not None:
        runs = CounterMetricFamily("duckstage_loader_maintenance", "DuckLake maintenance runs by result",
                                   labels=["result"])
        runs.add_metric(["ok"], upkeep["runs"])
        runs.add_metric(["failed"], upkeep["failures"])
        yield runs
    retry = st.get("retry") or {}
    yield CounterMetricFamily("duckstage_loader_retries", "Times the database was busy and a retry was scheduled",
                              value=st.get("retries", 0))
    yield GaugeMetricFamily("duckstage_loader_retry_attempts", "Consecutive busy attempts (0: not retrying)",
                            value=retry.get("attempts", 0))
    yield GaugeMetricFamily("duckstage_loader_retry_delay_seconds", "The current retry delay",
                            value=retry.get("delay", 0))
    yield GaugeMetricFamily("duckstage_loader_retry_slow", "1 once retries went past max_retries",
                            value=1 if retry.get("slow") else 0)

    yield from process_families("loader", st)
