"""The history tests' material: statement and stock_basic rows, loads, and the warehouse read back.

Rows are sealed into staging/ the way the stager seals them (``Stage``), one
file per fetch, and loaded with the loader's own load cycle through the
test's open ``Warehouse`` (the ``warehouse`` fixture), which the reads share:
attaching a DuckLake costs most of a second, so a test opens it once.
"""

import datetime as dt
from pathlib import Path

from duckstage.staging import StagedFile
from loader.load import load_files
from loader.warehouse import LOAD


def day(text):
    return dt.date.fromisoformat(text)


def at(text):
    """A _fetched_at: 10:00 UTC (stored naive) on the day ``text`` (YYYY-MM-DD)."""
    return dt.datetime.fromisoformat(text).replace(hour=10)


def statement(code, flag, f_ann, eps, fetched, ann="2024-03-29", end="2023-12-31", **extra):
    """One income row of a report (report_type 1), fetched on ``fetched``; dates as YYYY-MM-DD."""
    return {"ts_code": code, "end_date": day(end), "report_type": "1", "update_flag": flag,
            "ann_date": ann and day(ann), "f_ann_date": f_ann and day(f_ann), "basic_eps": eps,
            "_task_id": f"income-{fetched}", "_fetched_at": at(fetched), **extra}


def basic(code, name, fetched):
    """One stock_basic row, fetched on ``fetched``."""
    return {"ts_code": code, "symbol": code[:6], "name": name, "list_status": "L",
            "_task_id": f"basic-{fetched}", "_fetched_at": at(fetched)}


def load(wh, config, paths, mode=LOAD, one_at_a_time=False):
    """Load ``paths`` with the loader's load cycle: in seal order, or one transaction per file in the order given."""
    for group in ([[p] for p in paths] if one_at_a_time else [list(paths)]):
        by_type = {}
        for p in group:
            by_type.setdefault(StagedFile.parse(Path(p).name).task_type, []).append(p)
        for task_type, files in by_type.items():
            out = load_files(wh, config.datasets[task_type], files, config, mode=mode)
            assert not out.quarantined, out.reasons


def read(wh, sql, params=None):
    return wh.con.execute(sql, params or []).fetchall()


def versions(wh, dataset):
    """The stored versions: declared columns and _valid_from of every history row, sorted."""
    cols = ", ".join(f'"{c.name}"' for c in dataset.columns)
    return read(wh, f"SELECT {cols}, _valid_from FROM {dataset.history_table} ORDER BY ALL")


def known_on(wh, table, when, cols="ts_code, basic_eps"):
    """What ``<table>_asof(DATE when)`` answers, sorted; the timeline view must answer the same."""
    asof = read(wh, f"SELECT {cols} FROM {table}_asof(DATE '{when}') ORDER BY ALL")
    timeline = read(wh, f"SELECT {cols} FROM {table}_timeline WHERE _valid_from <= DATE '{when}'"
                        f" AND (_valid_to IS NULL OR DATE '{when}' < _valid_to) ORDER BY ALL")
    assert asof == timeline, (when, asof, timeline)
    return asof


def current(wh, table, cols="ts_code, basic_eps"):
    return read(wh, f"SELECT {cols} FROM {table} ORDER BY ALL")
