"""``stager status``: the running process's snapshot plus what the disk and Huey show."""

import time

from . import staging
from .ops import config_lines, pid_alive, read_snapshot
from .queue import build_storage_huey




def collect(config):
    snapshot = read_snapshot(config.run_dir / "stager.json")
    running = bool(snapshot and snapshot.get("state") in ("running", "stopping") and pid_alive(snapshot["pid"]))
    huey = build_storage_huey(config.huey)
    try:
        storage = huey.storage
        queue = {"queued_tasks": storage.queue_size(), "leased_tasks": storage.lease_count(),
                 "result_store": storage.result_store_size()}
    finally:
        huey.storage.close()
    disk = {}
    for dataset in config.datasets:
        files = staging.sealed_files(config.staging_dir / dataset.name)
        dl_folder = config.deadletter_dir / dataset.name
        dl_rows = 0
        for path in dl_folder.glob("*.jsonl") if dl_folder.exists() else []:
            with open(path, "rb") as f:
                dl_rows += sum(1 for line in f if line.strip())
        disk[dataset.name] = {"staged_files": len(files),
                              "staged_bytes": sum(p.stat().st_size for p in files if p.exists()),
                              "deadletter_rows": dl_rows}
    return {"running": running, "checked_at": time.time(), "queue": queue, "disk": disk,
            "process": snapshot}


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
    console.print(f"stager: {state}")
    console.print(f"huey queue: {q['queued_tasks']} queued, {q['leased_tasks']} leased (in a buffer), "
                  f"{q['result_store']} in the result store")
    table = Table("task type", "tasks", "rows staged", "files", "buffer rows", "buffer age s",
                  "dead letter", "superseded", "waiting", "MiB")
    per_type = (proc or {}).get("task_types", {})
    for name, disk in report["disk"].items():
        t = per_type.get(name, {})
        table.add_row(name, str(t.get("tasks", "-")), str(t.get("rows_staged", "-")),
                      str(t.get("files_sealed", "-")), str(t.get("buffer_rows", "-")),
                      str(t.get("buffer_age_seconds", "-")), str(disk["deadletter_rows"]),
                      str(t.get("rows_superseded", "-")), str(disk["staged_files"]),
                      f"{disk['staged_bytes'] / 2**20:.1f}")
    console.print(table)
    if proc:
        console.print(f"rows/s: {proc.get('rows_per_second', 0)}   errors: {proc.get('errors') or 'none'}   "
                      f"sealing: {proc.get('sealing_error') or 'ok'}")
        console.print("threads: " + ", ".join(f"{k}={v}" for k, v in sorted(proc.get("threads", {}).items())))
        reasons = {t: r for t, body in per_type.items() if (r := body.get("deadlettered_by_reason"))}
        for name, r in sorted(reasons.items()):
            console.print(f"dead-lettered {name}: " + ", ".join(f"{k} {v}" for k, v in sorted(r.items())))
        for name, spec in sorted((proc.get("processors") or {}).items()):
            console.print(f"processor {name}: {spec}")
        for line in config_lines(proc):
            console.print(line)
