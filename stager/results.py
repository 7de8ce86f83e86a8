"""What a producer hands over: the task type enum and the task's result."""

import datetime as dt
import enum
from dataclasses import dataclass, field

import pyarrow as pa


class TaskType(str, enum.Enum):
    """The seven task types; the value is the DuckDB table and the staging folder."""

    STOCK_BASIC = "stock_basic"
    STOCK_DAILY = "stock_daily"
    DAILY_BAR_QFQ = "daily_bar_qfq"
    DAILY_BAR_NONE = "daily_bar_none"
    BALANCESHEET = "balancesheet"
    INCOME = "income"
    CASHFLOW = "cashflow"

    def __str__(self):
        return self.value


@dataclass
class TaskResult:
    """What ``process_fetched_data`` returns.

    ``data`` is a ``pyarrow.Table`` when the producer's data converts to one,
    otherwise a list of row dicts (mixed types in a column: the stager then
    finds the bad rows one by one). ``error`` is set when the data could not be
    read at all; ``data`` then holds what could be kept of it for the dead
    letter.
    """

    task_type: str
    data: object
    params: dict = field(default_factory=dict)
    fetched_at: dt.datetime = None  # UTC, naive (an aware time is converted)
    task_id: str = None
    error: str = None

    def __post_init__(self):
        # Parquet's _fetched_at is a naive UTC timestamp: an aware time is kept in UTC, naive.
        if self.fetched_at is not None and self.fetched_at.tzinfo is not None:
            self.fetched_at = self.fetched_at.astimezone(dt.timezone.utc).replace(tzinfo=None)

    @property
    def rows(self):
        if self.data is None:
            return 0
        return self.data.num_rows if isinstance(self.data, pa.Table) else len(self.data)


def to_rows(data):
    """Normalise a producer's data to a pyarrow Table, or a list of row dicts.

    Accepts a list of dicts, a dict of columns, a pyarrow Table or RecordBatch,
    and a pandas DataFrame (pandas is never imported here: a DataFrame is
    recognised by its ``to_dict``/``columns`` and converted by pyarrow).
    Raises TypeError for anything else.
    """
    if isinstance(data, pa.Table):
        return data
    if isinstance(data, pa.RecordBatch):
        return pa.Table.from_batches([data])
    if _is_dataframe(data):
        try:
            return pa.Table.from_pandas(data, preserve_index=False)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            return data.to_dict(orient="records")
    if isinstance(data, dict):
        columns = {str(k): list(v) if not isinstance(v, (list, pa.Array, pa.ChunkedArray)) else v
                   for k, v in data.items()}
        lengths = {len(v) for v in columns.values()}
        if len(lengths) > 1:
            raise TypeError(f"dict of columns with different lengths {sorted(lengths)}")
        try:
            return pa.Table.from_pydict(columns)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError):
            n = lengths.pop() if lengths else 0
            names = list(columns)
            return [{k: _item(columns[k], i) for k in names} for i in range(n)]
    if isinstance(data, (list, tuple)):
        if not all(isinstance(r, dict) for r in data):
            bad = next(type(r).__name__ for r in data if not isinstance(r, dict))
            raise TypeError(f"a list of rows must hold dicts, found {bad}")
        names = list(dict.fromkeys(k for r in data for k in r))
        try:
            # Column by column is ~6x faster than Table.from_pylist for row dicts.
            return pa.table({str(k): pa.array([r.get(k) for r in data]) for k in names})
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, TypeError, ValueError,
                OverflowError):
            return list(data)  # mixed types in a column: the stager finds the bad rows
    raise TypeError(
        f"data must be a list of dicts, a dict of columns, a pyarrow Table or a pandas DataFrame, "
        f"not {type(data).__name__}"
    )


def _item(column, i):
    value = column[i]
    return value.as_py() if isinstance(value, pa.Scalar) else value


def _is_dataframe(obj):
    cls = type(obj)
    return cls.__name__ == "DataFrame" and cls.__module__.startswith("pandas")
