"""``loader status``: the running loader's snapshot combined with what is on disk.

A running loader holds a DuckDB file, and DuckDB lets no other process open
it, not even read-only; so the loader writes ``run/loader.json`` atomically
after every step, and ``status`` reads that, the staging and quarantine
folders, and the manifest itself when the database is free. A DuckLake is
read directly at any time, with its current snapshot.
"""

import datetime as dt
import os

import duckdb

from duckstage.exceptions import one_line
from duckstage import staging
from duckstage.command import checked_at, config_report, config_report_lines, process_config_lines
from duckstage.ops import pid_alive, read_snapshot
from duckstage.staging import utcnow

from duckstage.database import SQLITE

from . import filing, lake
from .discovery import not_staged, scan, staged_rows, unknown_folders
from .warehouse import manifest_totals


def _manifest(database):
    """``(totals, busy, snapshot)``: manifest totals read directly, or None with the reason the
    database could not be read; the DuckLake snapshot read (None for a DuckDB file)."""
    if not database.is_lake and not database.path.exists():
        return {}, None, None
    try:
        con = lake.connect(database, read_only=True)
    except duckdb.Error as exc:
        if database.kind == SQLITE and not database.path.exists():
            return {}, None, None
        return None, one_line(exc), None
    try:
        return manifest_totals(con), None, lake.current_snapshot(con) if database.is_lake else None
    except duckdb.Error as exc:
        return None, one_line(exc), None
    finally:
        con.close()


def _stuck(step):
    """Seconds the running step has gone without progress, when past its limit; else None.

    Judged here from the snapshot's times: a stuck step no longer writes one.
    """
    if not step:
        return None
    quiet = (utcnow() - dt.datetime.fromisoformat(step["progress_at"])).total_seconds()
    return round(quiet) if quiet > step["stuck_after"] else None


def collect(config, snapshot_name="loader.json", refused=None):
    """Everything ``loader status`` shows, as one JSON-ready dict; ``refused``: the file's ConfigError, if any."""
    snap = read_snapshot(config.run_dir / snapshot_name)
    running = bool(snap and snap.get("state") != "stopped" and pid_alive(int(snap.get("pid", 0))))
    pending = {}
    for task_type, paths in scan(config.staging_dir, config.datasets.names).items():
        if paths:
            pending[task_type] = {"files": len(paths), "rows": sum(staged_rows(p) for p in paths)}
    temporary = sum(1 for _r, _d, files in os.walk(config.staging_dir) for n in files if staging.is_temporary(n))
    # A DuckLake is read while the loader writes; a DuckDB file only when the loader has released it.
    manifest, busy, snapshot = (None, "held by the running loader", None) \
        if running and snap.get("database_open") and not config.loader.database.is_lake \
        else _manifest(config.loader.database)
    if manifest is None and snap:
        manifest = snap.get("manifest") or {}
    quarantined = filing.quarantined(config.quarantine_dir)
    return {
        "checked_at": checked_at(),
        "configuration": config_report(config, refused, snap if running else None),
        "loader": {
            "running": running,
            "pid": snap.get("pid") if snap else None,
            "state": (snap.get("state") if running else "not running"),
            "snapshot_at": snap.get("updated_at") if snap else None,
        },
        "database": str(config.loader.database),
        "database_busy": busy,
        "snapshot": snapshot if snapshot is not None else (snap.get("snapshot") if snap else None),
        "maintenance": snap.get("maintenance") if snap else None,
        "pending": pending,
        "temporary_files": temporary,
        "unknown_task_types": unknown_folders(config.staging_dir, config.datasets.names),
        "not_staged": not_staged(config.staging_dir, config.datasets.names),
        "last_load": snap.get("last_load") if snap else None,
        "rows_per_second": snap.get("rows_per_second") if snap else None,
        "since_start": snap.get("since_start") if running else None,
        "retry": snap.get("retry") if running else None,
        "loading": snap.get("loading") if running else None,
        "stuck": _stuck(snap.get("step")) if running else None,
        # The running loader's own figures, as its get_status() (and /metrics) has them.
        "task_types": snap.get("task_types") if running else None,
        "lag": snap.get("lag") if running else None,
        "threads": snap.get("threads") if running else None,
        "config": snap.get("config") if running else None,
        "metrics_address": snap.get("metrics_address") if running else None,
        "manifest": manifest or {},
        # names as the files lie in quarantine/ (a shortened one when the original was too long)
        "quarantined": {t: [r.get("quarantined_as") or r.get("file") for r in reports]
                        for t, reports in quarantined.items()},
        "quarantine_reasons": {t: {r.get("quarantined_as") or r.get("file"): r.get("reason") for r in reports}
                               for t, reports in quarantined.items()},
    }


def render(st):
    """The human-readable status: a few lines a person can scan."""
    lines = []
    lo = st["loader"]
    head = f"loader: {lo['state']}" + (f" (pid {lo['pid']})" if lo["running"] else "")
    lines.append(f"{head}, checked at {st['checked_at']}")
    lines += config_report_lines(st["configuration"], "loader", lo["running"])
    if st.get("loading"):
        ld = st["loading"]
        lines.append(f"  loading {ld['task_type']}: {ld['done']} of {ld['files']} file(s) since {ld['since']}")
        if ld.get("waiting"):
            lines.append(f"  waiting for {ld['waiting']}")
    if st.get("stuck"):
        lines.append(f"  stuck: the load step has made no progress for {st['stuck']}s; see /healthz and the log")
    if st["retry"]:
        r = st["retry"]
        pace = "slowly, past max_retries" if r["slow"] else "with backoff"
        lines.append(f"  {r.get('what', 'database busy')} since {r['since']}: retry {r['attempts']} {pace},"
                     f" every {r['delay']:g}s: {r['error']}")
    lines += [f"  {line}" for line in process_config_lines(st, st["configuration"], lo["running"])]
    if st["database_busy"]:
        lines.append(f"database {st['database']}: {st['database_busy']} (figures from its snapshot)")
    else:
        lines.append(f"database {st['database']}")
    if st.get("snapshot") is not None:
        lines.append(f"snapshot {st['snapshot']} (time travel: FROM <table> AT (VERSION => {st['snapshot']}))")
    upkeep = (st.get("maintenance") or {}).get("last")
    if upkeep:
        done = f"failed: {upkeep['error']}" if upkeep["error"] else f"took {upkeep['seconds']:g}s"
        lines.append(f"maintenance at {upkeep['at']}: {done}")
    if st["last_load"]:
        ll = st["last_load"]
        lines.append(f"last load: {ll['task_type']} {ll['files']:,} file(s), {ll['rows']:,} rows at {ll['at']}")
    if st["rows_per_second"]:
        lines.append(f"rows per second (last cycle): {st['rows_per_second']:,}")
    types = sorted(set(st["pending"]) | set(st["manifest"]) | set(st["quarantined"]))
    if types:
        lines.append(f"{'task type':<16}{'pending':>9}{'rows':>11}{'loaded':>9}{'rows':>13}{'quarant.':>10}")
    for t in types:
        p = st["pending"].get(t, {"files": 0, "rows": 0})
        m = st["manifest"].get(t, {"files": 0, "rows": 0})
        lines.append(f"{t:<16}{p['files']:>9,}{p['rows']:>11,}{m['files']:>9,}{m['rows']:>13,}"
                     f"{len(st['quarantined'].get(t, [])):>10,}")
    if st["temporary_files"]:
        lines.append(f"{st['temporary_files']:,} temporary file(s) being written (never loaded)")
    for t, n in st["unknown_task_types"].items():
        lines.append(f"staging/{t}: {n:,} file(s) of a task type not in datasets.yaml (not loaded)")
    ns = st["not_staged"]
    for name in ns["names"]:
        shown = "".join(c if c.isprintable() else repr(c)[1:-1] for c in name)
        lines.append(f"not a staged file: {shown} (never loaded; rename or remove it)")
    if ns["files"] > len(ns["names"]):
        lines.append(f"... and {ns['files'] - len(ns['names']):,} more not staged file(s)")
    for t, names in st["quarantined"].items():
        reasons = st.get("quarantine_reasons", {}).get(t, {})
        for name in names:
            why = f"{reasons[name]}; " if reasons.get(name) else ""
            lines.append(f"quarantined: {t}/{name} ({why}see {name}.error.json)")
    return "\n".join(lines)
