"""``stager status``: the running process's snapshot plus what the disk and Huey show."""

import time

from duckstage import staging
from duckstage.command import checked_at, config_report, config_report_lines, process_config_lines
from duckstage.ops import pid_alive, read_snapshot
from .deadletter import is_regular
from .queue import STORAGE_ERRORS, build_storage_huey


def queue_report(huey_config):
    """The queue's backend, location and backlog; ``error`` instead of the counts when it cannot be read.

    On Redis, ``stagers`` lists every stager instance registered on the queue:
    whether its heartbeat is alive, its host and pid, and how many tasks it holds.
    """
    queue = {"backend": huey_config.backend, "name": huey_config.name, "location": huey_config.location}
    if huey_config.backend == "sqlite":
        queue["path"] = str(huey_config.path)
    elif not huey_config.url:
        return {**queue, "error": "no huey.url configured"}
    huey = build_storage_huey(huey_config)
    try:
        storage = huey.storage
        queue.update(queued_tasks=storage.queue_size(), leased_tasks=storage.lease_count(),
                     result_store=storage.result_store_size())
        if huey_config.backend == "redis":
            queue["stagers"] = storage.stagers()
    except STORAGE_ERRORS as exc:
        queue["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        huey.storage.close()
    return queue


def collect(config, refused=None):
    """Everything ``stager status`` shows, as one JSON-ready dict; ``refused``: the file's ConfigError, if any."""
    snapshot = read_snapshot(config.run_dir / "stager.json")
    running = bool(snapshot and snapshot.get("state") in ("running", "stopping") and pid_alive(snapshot["pid"]))
    queue = queue_report(config.huey)
    disk = {}
    for dataset in config.datasets:
        files = staging.sealed_files(config.staging_dir / dataset.name)
        dl_folder = config.deadletter_dir / dataset.name
        dl_rows = 0
        for path in dl_folder.glob("*.jsonl") if dl_folder.exists() else []:
            if not is_regular(path):  # a FIFO would block the open: nothing the stager wrote
                continue
            with open(path, "rb") as f:
                dl_rows += sum(1 for line in f if line.strip())
        disk[dataset.name] = {"staged_files": len(files),
                              "staged_bytes": sum(p.stat().st_size for p in files if p.exists()),
                              "deadletter_rows": dl_rows}
    return {"running": running, "checked_at": checked_at(), "queue": queue, "disk": disk,
            "configuration": config_report(config, refused, snapshot if running else None),
            "process": snapshot}


def _n(value):
    """A count with thousands separators; anything else as it is."""
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else str(value)


def queue_lines(q, proc=None):
    """What status says of the queue, and what the running stager (``proc``, its snapshot) waits for."""
    where = f"huey queue {q['name']!r} ({q['backend']}) at {q['location']}"
    if "error" in q:
        lines = [f"{where}: cannot be read: {q['error']}"]
    else:
        lines = [f"{where}: {_n(q['queued_tasks'])} queued, {_n(q['leased_tasks'])} leased (in a buffer), "
                 f"{_n(q['result_store'])} in the result store"]
    for s in q.get("stagers", []):
        state = f"alive on {s['identity']}" if s["alive"] else "heartbeat expired: its tasks return to the queue"
        lines.append(f"  stager {s['instance']}: {state}, {_n(s['leased'])} leased")
    waiting = (proc or {}).get("backlog", {}).get("error")
    if waiting:
        lines.append(f"the stager waits for the queue and retries with backoff: {waiting}")
    return lines


def render(report):
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if Console().is_terminal else 132)
    proc = report["process"]
    q = report["queue"]
    state = "running" if report["running"] else "not running"
    if proc:
        age = time.time() - proc.get("updated_at", 0)
        state += f" (instance {proc['instance']}, pid {proc['pid']}, snapshot {age:.0f}s old)"
    console.print(f"stager: {state}, checked at {report['checked_at']}", highlight=False)
    for line in config_report_lines(report["configuration"], "stager", report["running"]):
        console.print(line, highlight=False, markup=False)
    for line in queue_lines(q, proc if report["running"] else None):
        console.print(line, highlight=False, markup=False)
    table = Table("task type", "tasks", "rows staged", "files", "buffer rows", "buffer age s",
                  "dead letter", "superseded", "waiting", "MiB")
    per_type = (proc or {}).get("task_types", {})
    for name in list(report["disk"]) + [t for t in per_type if t not in report["disk"]]:
        t, disk = per_type.get(name, {}), report["disk"].get(name, {})
        table.add_row(name, _n(t.get("tasks", "-")), _n(t.get("rows_staged", "-")),
                      _n(t.get("files_sealed", "-")), _n(t.get("buffer_rows", "-")),
                      _n(t.get("buffer_age_seconds", "-")), _n(disk.get("deadletter_rows", "-")),
                      _n(t.get("rows_superseded", "-")), _n(disk.get("staged_files", "-")),
                      f"{disk['staged_bytes'] / 2**20:.1f}" if disk else "-")
    console.print(table)
    if proc:
        console.print(f"rows/s: {_n(proc.get('rows_per_second', 0))}   errors: {proc.get('errors') or 'none'}   "
                      f"sealing: {proc.get('sealing_error') or 'ok'}", highlight=False)
        console.print("threads: " + ", ".join(f"{k}={v}" for k, v in sorted(proc.get("threads", {}).items())))
        reasons = {t: r for t, body in per_type.items() if (r := body.get("deadlettered_by_reason"))}
        for name, r in sorted(reasons.items()):
            console.print(f"dead-lettered {name}: " + ", ".join(f"{k} {_n(v)}" for k, v in sorted(r.items())))
        for name, spec in sorted((proc.get("processors") or {}).items()):
            console.print(f"processor {name}: {spec}")
        for line in process_config_lines(proc, report["configuration"], report["running"]):
            console.print(line, highlight=False, markup=False)
