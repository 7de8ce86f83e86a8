"""The stager's Prometheus metrics, built from ``Stager.get_status()`` (see duckstage.ops).

Every metric here is a reading of one status field, so ``stager status`` and
``/metrics`` show the same numbers. Counters count since the process started.
"""

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from duckstage.metrics import by_reason, by_result, per_task_type, per_task_type_and, process_families
from duckstage.ops import histogram_buckets

TT = ["task_type"]


def families(st):
    """Metric families of one stager status dict."""
    per_type = st.get("task_types", {})

    yield GaugeMetricFamily("duckstage_stager_up", "1 while the stager runs, 0 while it stops",
                            value=1 if st.get("state") == "running" else 0)
    info = GaugeMetricFamily("duckstage_stager_info", "The running stager's instance and source",
                             labels=["instance", "source"])
    info.add_metric([st.get("instance", ""), st.get("source", "")], 1)
    yield info
    if st.get("started_at"):
        yield GaugeMetricFamily("duckstage_stager_start_time_seconds", "When the stager started (unix time)",
                                value=st["started_at"])

    counters = (
        ("duckstage_stager_tasks", "Huey tasks (or results) consumed", "tasks"),
        ("duckstage_stager_rows_in", "Rows consumed from tasks", "rows_in"),
        ("duckstage_stager_rows_staged", "Rows written to sealed files", "rows_staged"),
        ("duckstage_stager_files_sealed", "Staging files sealed", "files_sealed"),
        ("duckstage_stager_rows_superseded", "Rows replaced by a newer version of the same key within one file",
         "rows_superseded"),
        ("duckstage_stager_rows_filtered", "Rows a custom processor dropped", "rows_filtered"),
    )
    for name, doc, key in counters:
        yield per_task_type(CounterMetricFamily, name, doc, per_type, key)

    yield per_task_type_and("duckstage_stager_seals", "Batch saves (seals of a staging file) by result",
                            per_type, "result", by_result("files_sealed", "seal_failures"))
    yield per_task_type_and("duckstage_stager_rows_deadlettered", "Rows sent to the dead letter, by reason",
                            per_type, "reason", by_reason("deadlettered_by_reason"))

    gauges = (
        ("duckstage_stager_buffer_rows", "Rows buffered, not yet sealed", "buffer_rows"),
        ("duckstage_stager_buffer_bytes", "Bytes buffered, not yet sealed", "buffer_bytes"),
        ("duckstage_stager_buffer_age_seconds", "Age of the oldest buffered row", "buffer_age_seconds"),
    )
    for name, doc, key in gauges:
        yield per_task_type(GaugeMetricFamily, name, doc, per_type, key)

    batch = GaugeMetricFamily("duckstage_stager_batch_setting", "Live batch settings in force",
                              labels=["task_type", "setting"])
    for task_type, b in sorted(st.get("batch", {}).items()):
        for setting, value in sorted(b.items()):
            batch.add_metric([task_type, setting], value)
    yield batch

    lag = HistogramMetricFamily("duckstage_stager_seal_lag_seconds",
                                "From a file's oldest fetch (or enqueue) time to its seal", labels=TT)
    for task_type, h in sorted(st.get("seal_lag", {}).items()):
        lag.add_metric([task_type], histogram_buckets(h), sum_value=h["sum"])
    yield lag

    yield GaugeMetricFamily("duckstage_stager_rows_per_second", "Rows staged per second (last ~2 minutes)",
                            value=st.get("rows_per_second", 0))

    backlog = st.get("backlog") or {}
    queue = GaugeMetricFamily("duckstage_huey_queue_tasks", "Tasks in the Huey queue, by state", labels=["state"])
    for state, key in (("queued", "queued_tasks"), ("leased", "leased_tasks")):
        if key in backlog:
            queue.add_metric([state], backlog[key])
    yield queue
    if "result_store" in backlog:
        yield GaugeMetricFamily("duckstage_huey_result_store_entries", "Entries in the Huey result store",
                                value=backlog["result_store"])
    yield GaugeMetricFamily("duckstage_huey_storage_error", "1 if the Huey storage could not be read",
                            value=1 if "error" in backlog else 0)

    errors = CounterMetricFamily("duckstage_stager_errors",
                                 "Errors by class (the error classes of docs/design.md)", labels=["error_class"])
    for error_class, n in sorted((st.get("errors") or {}).items()):
        errors.add_metric([error_class], n)
    yield errors

    retry = st.get("seal_retry") or {}
    yield GaugeMetricFamily("duckstage_stager_seal_retry_attempts",
                            "Consecutive failed seals (backoff in progress while > 0)", value=retry.get("attempts", 0))
    yield GaugeMetricFamily("duckstage_stager_seal_retry_delay_seconds", "The current seal backoff delay",
                            value=retry.get("delay", 0))

    yield from process_families("stager", st)
