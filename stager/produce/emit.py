"""Batches: fetched rows chunked into tasks, in a chosen data shape, with injected bad rows."""

import math
import random
from dataclasses import dataclass

import pyarrow as pa

from ..results import TaskType
from .fields import FIELDS


@dataclass(frozen=True)
class BadRow:
    """An injected bad row: where it is, what is wrong, and the row as sent."""

    index: int  # position in the batch's data
    kind: str  # bad_number | missing_ts_code | bad_date | bad_ts_code
    column: str
    value: object
    row: dict


@dataclass
class Batch:
    """One fetch result, ready for ``process_fetched_data(task_type, data, **params)``."""

    task_type: TaskType
    data: object  # list of dicts, dict of columns, or pyarrow.Table
    params: dict
    bad_rows: tuple = ()
    shape: str = "list"

    @property
    def rows(self):
        if isinstance(self.data, pa.Table):
            return self.data.num_rows
        if isinstance(self.data, dict):
            return len(next(iter(self.data.values()), ()))
        return len(self.data)

    def row_dicts(self):
        """The data as a list of row dicts, whatever its shape."""
        if isinstance(self.data, pa.Table):
            return self.data.to_pylist()
        if isinstance(self.data, dict):
            names = list(self.data)
            return [dict(zip(names, values)) for values in zip(*self.data.values())]
        return list(self.data)


_NUMBER_COLUMNS = {
    TaskType.STOCK_DAILY: ("open", "high", "low", "close", "vol", "amount"),
    TaskType.DAILY_BAR_NONE: ("open", "high", "low", "close", "vol", "amount"),
    TaskType.DAILY_BAR_QFQ: ("vol", "amount"),
}
_DATE_COLUMN = {TaskType.STOCK_DAILY: "trade_date", TaskType.DAILY_BAR_NONE: "trade_date",
                TaskType.DAILY_BAR_QFQ: "trade_date", TaskType.BALANCESHEET: "end_date",
                TaskType.INCOME: "end_date", TaskType.CASHFLOW: "end_date"}
_BAD_DATES = ("2024-13-45", "20241345", "20230230", "2024.01.02")
_BAD_CODES = ("60000.SH", "600000.SS", "600000", "SH600000", "6000001.SZ", "00000A.SZ")


class Emitter:
    """Chunks rows into batches, picks their shape, injects bad rows."""

    def __init__(self, seed, bad_share, rows_per_task, task_types):
        self.shape_rng = random.Random(f"{seed}:shape")
        self.bad_rng = random.Random(f"{seed}:bad")
        self.bad_share = bad_share
        self.rows_per_task = rows_per_task
        self.task_types = task_types
        self._skip = self._gap()

    def _gap(self):
        if self.bad_share <= 0:
            return math.inf
        if self.bad_share >= 1:
            return 0
        return int(math.log(1.0 - self.bad_rng.random()) / math.log(1.0 - self.bad_share))

    def batches(self, task_type, rows, params, chunk=True):
        step = self.rows_per_task if chunk else max(1, len(rows))
        for i in range(0, len(rows), step):
            u = self.shape_rng.random()  # drawn for every batch, emitted or not: stable shapes
            if task_type not in self.task_types:
                continue
            part = rows[i:i + step]
            shape = "list" if u < 0.7 else "dict" if u < 0.85 else "table"
            bad = self._inject(task_type, part, shape) if self.bad_share > 0 else ()
            if bad and shape == "table":
                shape = "dict"
            yield Batch(task_type, _shaped(part, shape, FIELDS[task_type]), dict(params), bad, shape)

    def _inject(self, task_type, rows, shape):
        bad, n = [], len(rows)
        while self._skip < n:
            i = self._skip
            rows[i] = row = dict(rows[i])
            r = self.bad_rng
            kinds = ["missing_ts_code", "bad_ts_code"]
            if task_type in _NUMBER_COLUMNS:
                kinds += ["bad_number", "bad_number"]
            if task_type in _DATE_COLUMN:
                kinds.append("bad_date")
            kind = r.choice(kinds)
            if kind == "bad_number":
                column, value = r.choice(_NUMBER_COLUMNS[task_type]), "abc"
            elif kind == "bad_date":
                column, value = _DATE_COLUMN[task_type], r.choice(_BAD_DATES)
            elif kind == "bad_ts_code":
                column, value = "ts_code", r.choice(_BAD_CODES)
            else:
                column, value = "ts_code", None
            if value is None and shape == "list" and r.random() < 0.5:
                del row[column]  # the key is absent, not just null
            else:
                row[column] = value
            bad.append(BadRow(i, kind, column, value, dict(row)))
            self._skip = i + 1 + self._gap()
        self._skip -= n
        return tuple(bad)


def _shaped(rows, shape, fields):
    if shape == "list":
        return rows
    if shape == "table":
        return pa.Table.from_pylist(rows).select(list(fields))
    return {f: [r.get(f) for r in rows] for f in fields}
