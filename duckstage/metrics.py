"""Metric families alike for both processes: thread states and live configuration."""

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily


def per_task_type(kind, name, doc, per_type, key):
    """A family with one sample per task type: ``per_type[task type][key]`` (missing or None: 0)."""
    family = kind(name, doc, labels=["task_type"])
    for task_type, figures in sorted(per_type.items()):
        family.add_metric([task_type], figures.get(key) or 0)
    return family


def per_task_type_and(name, doc, per_type, label, samples):
    """A counter with one sample per task type and ``label`` value: ``samples(figures)`` gives the pairs."""
    family = CounterMetricFamily(name, doc, labels=["task_type", label])
    for task_type, figures in sorted(per_type.items()):
        for value, n in samples(figures):
            family.add_metric([task_type, value], n)
    return family


def by_result(ok_key, failed_key):
    """``samples`` for a ``result`` label: ok and failed counts from two status fields."""
    return lambda figures: (("ok", figures.get(ok_key, 0)), ("failed", figures.get(failed_key, 0)))


def by_reason(key):
    """``samples`` for a ``reason`` label: a status field that maps reason codes to counts."""
    return lambda figures: sorted((figures.get(key) or {}).items())


def process_families(process, st):
    """Thread states and live-configuration figures, alike for both processes."""
    prefix = f"duckstage_{process}"
    threads = GaugeMetricFamily(f"{prefix}_thread_state", "1 for each thread's current state",
                                labels=["thread", "state"])
    for thread, state in sorted((st.get("threads") or {}).items()):
        threads.add_metric([thread, state], 1)
    yield threads

    cfg = st.get("config") or {}
    yield GaugeMetricFamily(f"{prefix}_config_error", "1 while the last edit of the config file is refused",
                            value=1 if cfg.get("error") else 0)
    yield CounterMetricFamily(f"{prefix}_config_reloads", "Configuration edits applied live",
                              value=cfg.get("reloads", 0))
    yield GaugeMetricFamily(f"{prefix}_config_restart_required",
                            "Changed keys that take effect only after a restart",
                            value=len(cfg.get("restart_required") or []))
