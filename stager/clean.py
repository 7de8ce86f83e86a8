"""Validation and cleaning of one task's rows against its dataset.

The fast path is columnar (pyarrow.compute): a well-formed batch never touches
a Python loop per value. Only a column that fails to convert as a whole is
converted value by value, to find the rows to dead-letter and say why.

Cleaning rules (docs/design.md; the Tushare facts behind them: docs/tushare.md;
undeclared columns: docs/new-columns.md):
- ``YYYYMMDD`` (or ``YYYY-MM-DD``) strings become DATE; an empty string is NULL;
- numeric strings become numbers; NaN and +-inf become NULL;
- a row with a missing required value, a value that is not of its column's
  type, or a value that fails the column's pattern is refused with a reason;
- an undeclared column is kept, after the declared and system columns, so
  that the loader's ``new_columns`` policy decides whether it reaches the
  warehouse (Tushare adds fields over time). Its type is the one Arrow infers,
  widened to a type ``datasets.yaml`` can declare (integers BIGINT, floats
  DOUBLE, ...), or text when its values disagree; a column with no value at
  all is left out. A name the warehouse could not hold as a column of its own
  (see ``datasets.undeclared_name_problem``) refuses the rows that have a
  value in it, with the reason: a renamed column would surprise, a dropped
  one would lose data.
"""

import datetime as dt
import json
import math
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from duckstage.datasets import ANCHOR_DATE, FETCHED_AT, TASK_ID, undeclared_name_problem

from .deadletter import Refusal
from .exceptions import COLUMN_NAME, INVALID_VALUE, MISSING_VALUE, PATTERN


@dataclass
class Part:
    """One task's rows and what the stager adds to them."""

    data: object  # a pyarrow Table or a list of row dicts
    task_id: str
    fetched_at: object  # datetime, UTC naive
    params: dict = field(default_factory=dict)


@dataclass
class Cleaned:
    table: pa.Table  # good rows of every part, in the staged schema (declared, system, then undeclared columns)
    bad: list = field(default_factory=list)  # [(part index, Refusal of the original row dict)]
    new_columns: list = field(default_factory=list)  # undeclared columns kept in ``table``
    counts: list = field(default_factory=list)  # good rows per part; the table holds them in part order


def clean(dataset, data, task_id, fetched_at, params=None):
    """Validate one task's ``data`` (a pyarrow Table or a list of row dicts)."""
    return clean_many(dataset, [Part(data, task_id, fetched_at, params or {})])


def clean_many(dataset, parts):
    """Validate several tasks of one task type together.

    Tables whose schemas unify are cleaned as one: the cost of cleaning is
    mostly per call, not per row, and Tushare fetches are often a few rows
    each (one pro_bar call per stock).
    """
    tables = [p.data for p in parts]
    if len(parts) > 1:
        if all(isinstance(t, pa.Table) for t in tables):
            try:
                combined = pa.concat_tables(tables, promote_options="permissive")
            except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
                combined = None
            if combined is not None:
                return _clean(dataset, combined, parts)
        results = [clean_many(dataset, [p]) for p in parts]
        bad = [(i, refusal) for i, r in enumerate(results) for _, refusal in r.bad]
        new = list(dict.fromkeys(c for r in results for c in r.new_columns))
        counts = [c for r in results for c in r.counts]
        return Cleaned(concat_staged([r.table for r in results]), bad, new, counts)
    return _clean(dataset, tables[0] if parts else [], parts)


def _clean(dataset, data, parts):
    if isinstance(data, pa.Table):
        n = data.num_rows
        names = [str(c) for c in data.column_names]

        def column(name):
            return data.column(name).combine_chunks() if name in names else None

        def original(i):
            return data.slice(i, 1).to_pylist()[0]
    else:
        rows = list(data or [])
        n = len(rows)
        keys = {}  # column name -> the key the rows use (a producer's dict may have non-text keys)
        for r in rows:
            for k in r:
                keys.setdefault(str(k), k)
        names = list(keys)

        def column(name):
            return [r.get(keys[name]) for r in rows] if name in keys else None

        def original(i):
            return rows[i]

    counts = [p.data.num_rows if isinstance(p.data, pa.Table) else len(p.data or []) for p in parts]
    part_of_row = []
    for i, count in enumerate(counts):
        part_of_row += [i] * count

    declared = [c.name for c in dataset.columns]
    errors = {}  # row index -> [(reason, code)]
    arrays = []
    for col in dataset.columns:
        values = column(col.name)
        if values is None:
            arr, errs = pa.nulls(n, col.arrow_type), {}
        else:
            arr, errs = convert(values, col.type, col.name)
        for i, reason in errs.items():
            errors.setdefault(i, []).append((reason, INVALID_VALUE))
        if not col.nullable and arr.null_count:
            for i in _indices(pc.is_null(arr)):
                if i not in errs:
                    errors.setdefault(i, []).append(
                        (f"{col.name}: required value is missing (NULL, NaN, inf or empty)", MISSING_VALUE))
        if col.pattern and n:
            ok = pc.fill_null(pc.match_substring_regex(arr, col.pattern), True)
            if not pc.all(ok).as_py():
                for i in _indices(pc.invert(ok)):
                    errors.setdefault(i, []).append(
                        (f"{col.name}: {arr[i].as_py()!r} does not match {col.pattern}", PATTERN))
        arrays.append(arr)

    extras = {}  # undeclared column -> array
    undeclared = [c for c in names if c not in declared]
    for name in undeclared:
        arr = undeclared_array(column(name))
        if arr is None:
            continue  # not one value: nothing to keep, and no type to fix
        problem = undeclared_name_problem(name, dataset, undeclared)
        if problem is None:
            extras[name] = arr
            continue
        reason = (f"{name}: column not declared in datasets.yaml that cannot be staged under this name "
                  f"({problem}); rename it in the producer, or drop it")
        for i in _indices(pc.is_valid(arr)):
            errors.setdefault(i, []).append((reason, COLUMN_NAME))

    table = pa.Table.from_arrays(arrays, names=declared)
    bad = []
    part_index = pa.array(part_of_row, pa.int32())
    if errors:
        keep = [True] * n
        for i in sorted(errors):
            keep[i] = False
            counts[part_of_row[i]] -= 1
            # The first problem's code names the row's reason; the text lists them all.
            bad.append((part_of_row[i], Refusal(original(i), "; ".join(r for r, _ in errors[i]), errors[i][0][1])))
        mask = pa.array(keep, pa.bool_())
        table = table.filter(mask)
        part_index = part_index.filter(mask)
        extras = {name: arr.filter(mask) for name, arr in extras.items()}
        extras = {name: arr for name, arr in extras.items() if arr.null_count < len(arr)}  # values all refused

    per_part = {
        TASK_ID: pa.array([p.task_id or "" for p in parts], pa.string()),
        FETCHED_AT: pa.array([p.fetched_at for p in parts], pa.timestamp("us")),
    }
    if dataset.anchor_param:
        per_part[ANCHOR_DATE] = _anchors(dataset, table, part_index, parts)
    for name, values in per_part.items():
        table = table.append_column(name, values.take(part_index))
    for name, arr in extras.items():
        table = table.append_column(name, arr)
    schema = pa.schema(list(dataset.arrow_schema) + [pa.field(name, arr.type) for name, arr in extras.items()])
    return Cleaned(table.cast(schema), bad, list(extras), counts)


def _anchors(dataset, table, part_index, parts):
    """Each part's qfq anchor: the request's end date, or the part's latest date."""
    latest = {}
    if any(p.params.get(dataset.anchor_param) is None for p in parts) and table.num_rows:
        grouped = pa.table({"p": part_index, "d": table.column(dataset.anchor_column)}) \
            .group_by("p").aggregate([("d", "max")])
        latest = dict(zip(grouped.column("p").to_pylist(), grouped.column("d_max").to_pylist()))
    anchors = []
    for i, p in enumerate(parts):
        value, error = _to_date(p.params.get(dataset.anchor_param))
        anchors.append(value if error is None and value is not None else latest.get(i))
    return pa.array(anchors, pa.date32())


def _indices(mask):
    return pc.indices_nonzero(pc.fill_null(mask, False)).to_pylist()


# --- undeclared columns ------------------------------------------------------

def undeclared_array(values):
    """An undeclared column as it is staged, or None when it holds no value.

    The type Arrow infers, widened to one a ``datasets.yaml`` column can have
    (so that declaring it later with that type changes nothing in the
    warehouse); values that do not share a type, and types no column can
    have (lists, structs, binary, times), become text.
    """
    if isinstance(values, list):
        try:
            values = pa.array(values, from_pandas=True)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, TypeError, ValueError,
                OverflowError):
            return pa.array([_as_text(v) for v in values], pa.string())
    arr, t = values, values.type
    if pa.types.is_dictionary(t):
        arr, t = arr.dictionary_decode(), t.value_type
    if pa.types.is_null(t) or arr.null_count == len(arr):
        return None
    try:
        if pa.types.is_boolean(t) or t == pa.string():
            return arr
        if pa.types.is_integer(t):
            return arr.cast(pa.int64())  # safe: a uint64 past BIGINT raises, and becomes text
        if pa.types.is_floating(t) or pa.types.is_decimal(t):
            out = arr.cast(pa.float64())
            return pc.if_else(pc.is_finite(out), out, pa.scalar(None, pa.float64()))  # NaN, inf: NULL
        if pa.types.is_large_string(t) or pa.types.is_string_view(t):
            return arr.cast(pa.string())
        if pa.types.is_date(t):
            return arr.cast(pa.date32())
        if pa.types.is_timestamp(t):
            if t.tz is not None:
                arr = arr.cast(pa.timestamp(t.unit, "UTC")).cast(pa.timestamp(t.unit))
            return arr.cast(pa.timestamp("us"))  # safe: nanoseconds that would be cut off become text
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    return pa.array([_as_text(v) for v in arr.to_pylist()], pa.string())


def _as_text(v):
    """A value of an undeclared column whose values disagree, as text."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return None
    if isinstance(v, (dict, list, tuple)):
        return json.dumps(v, ensure_ascii=False, default=str)
    if isinstance(v, (dt.date, dt.datetime, dt.time)):
        return v.isoformat()
    if isinstance(v, bytes):
        return v.hex()
    text, error = _to_text(v)
    return text if error is None else str(v)


# Types an undeclared column can take in several tables, and the one they all fit in.
_WIDER = [({pa.int64(), pa.float64()}, pa.float64()), ({pa.date32(), pa.timestamp("us")}, pa.timestamp("us"))]


def _common_type(types):
    distinct = set(types)
    if len(distinct) == 1:
        return types[0]
    for group, wider in _WIDER:
        if distinct <= group:
            return wider
    return pa.string()


def concat_staged(tables):
    """Concatenate cleaned tables of one task type whose undeclared columns may differ.

    A column a table lacks is NULL in its rows; a column whose types disagree
    takes the wider number or time (BIGINT and DOUBLE: DOUBLE), else text.
    Declared and system columns are the same in every table and come first.
    """
    if len(tables) == 1:
        return tables[0]
    first = tables[0].schema
    if all(t.schema.equals(first) for t in tables[1:]):
        return pa.concat_tables(tables)
    fields, types = {}, {}
    for t in tables:
        for f in t.schema:
            fields.setdefault(f.name, f)
            types.setdefault(f.name, []).append(f.type)
    schema = pa.schema([fields[n].with_type(_common_type(types[n])) for n in fields])
    same = []
    for t in tables:
        columns = [t.column(f.name).cast(f.type) if f.name in t.column_names else pa.nulls(t.num_rows, f.type)
                   for f in schema]
        same.append(pa.Table.from_arrays(columns, schema=schema))
    return pa.concat_tables(same)


# --- column conversion ----------------------------------------------------

def convert(values, type_name, name):
    """Convert one column; return (array of the target type, {row index: reason})."""
    if isinstance(values, list):
        try:
            values = pa.array(values, from_pandas=True)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, TypeError, ValueError,
                OverflowError):
            return _convert_slow(values, type_name, name)
    try:
        return _convert_array(values, type_name, name)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        return _convert_slow(values.to_pylist(), type_name, name)


_TARGETS = {
    "VARCHAR": pa.string(), "DOUBLE": pa.float64(), "DATE": pa.date32(), "BIGINT": pa.int64(),
    "INTEGER": pa.int32(), "BOOLEAN": pa.bool_(), "TIMESTAMP": pa.timestamp("us"),
}


def _convert_array(arr, type_name, name):
    target = _TARGETS[type_name]
    t = arr.type
    if pa.types.is_null(t):
        return pa.nulls(len(arr), target), {}
    if pa.types.is_dictionary(t):
        arr, t = arr.dictionary_decode(), arr.type.value_type
    if pa.types.is_large_string(t) or pa.types.is_string_view(t):
        arr, t = arr.cast(pa.string()), pa.string()
    is_text = pa.types.is_string(t)
    if is_text and type_name != "VARCHAR":
        trimmed = pc.utf8_trim_whitespace(arr)
        arr = pc.if_else(pc.equal(trimmed, ""), pa.scalar(None, pa.string()), trimmed)

    if type_name == "VARCHAR":
        if is_text:
            return arr, {}
        if pa.types.is_floating(t):  # 1.0 -> "1", not "1.0": Tushare codes are text
            if pc.all(pc.fill_null(pc.equal(arr, pc.round(arr)), True)).as_py():
                return pc.cast(pc.cast(arr, pa.int64()), pa.string()), {}
        if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t):
            return pc.cast(arr, pa.string()), {}
        raise pa.ArrowInvalid("not text")
    if type_name == "DOUBLE":
        if not (is_text or pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)):
            raise pa.ArrowInvalid("not numeric")
        out = pc.cast(arr, pa.float64())
        return pc.if_else(pc.is_finite(out), out, pa.scalar(None, pa.float64())), {}
    if type_name in ("BIGINT", "INTEGER"):
        if not (is_text or pa.types.is_integer(t) or pa.types.is_floating(t)):
            raise pa.ArrowInvalid("not an integer")
        return pc.cast(arr, target), {}  # safe cast: raises on fractions or overflow
    if type_name == "BOOLEAN":
        if not (is_text or pa.types.is_boolean(t)):
            raise pa.ArrowInvalid("not a boolean")
        return pc.cast(arr, target), {}
    if type_name == "DATE":
        if pa.types.is_date(t) or pa.types.is_timestamp(t):
            return pc.cast(arr, target), {}
        if pa.types.is_integer(t):
            arr, is_text = pc.cast(arr, pa.string()), True
        if not is_text:
            raise pa.ArrowInvalid("not a date")
        parsed = pc.strptime(arr, format="%Y%m%d", unit="s", error_is_null=True)
        failed = pc.and_(pc.is_null(parsed), pc.is_valid(arr))
        if pc.any(failed).as_py():
            alt = pc.strptime(arr, format="%Y-%m-%d", unit="s", error_is_null=True)
            parsed = pc.coalesce(parsed, alt)
            failed = pc.and_(pc.is_null(parsed), pc.is_valid(arr))
        # strptime rolls impossible days over (20230230 -> 2023-03-02) and may
        # accept short digit runs: a date is valid only if it prints back as sent.
        digits = pc.replace_substring(arr, "-", "")
        printed = _yyyymmdd(parsed)
        wrong = pc.fill_null(pc.not_equal(printed, digits), False)
        failed = pc.or_(pc.fill_null(failed, False), wrong)
        errors = {i: f"{name}: {arr[i].as_py()!r} is not a YYYYMMDD date" for i in _indices(failed)}
        if errors:
            parsed = pc.if_else(failed, pa.scalar(None, parsed.type), parsed)
        return pc.cast(parsed, target), errors
    if type_name == "TIMESTAMP":
        if pa.types.is_timestamp(t):
            if t.tz is not None:
                arr = pc.cast(arr, pa.timestamp(t.unit, "UTC")).cast(pa.timestamp(t.unit))
            return pc.cast(arr, target), {}
        if pa.types.is_date(t) or is_text:
            return pc.cast(arr, target), {}
        raise pa.ArrowInvalid("not a timestamp")
    raise pa.ArrowInvalid(f"unknown type {type_name}")


def _yyyymmdd(timestamps):
    """Each timestamp's date as YYYYMMDD text, as strftime("%Y%m%d") prints it, ~40x faster."""
    number = pc.add(pc.add(pc.multiply(pc.year(timestamps), 10000), pc.multiply(pc.month(timestamps), 100)),
                    pc.day(timestamps))
    return pc.utf8_lpad(pc.cast(number, pa.string()), 8, "0")


def _convert_slow(values, type_name, name):
    convert_one = _CONVERTERS[type_name]
    out, errors = [], {}
    for i, v in enumerate(values):
        value, error = convert_one(v)
        if error:
            errors[i] = f"{name}: {error}"
            value = None
        out.append(value)
    return pa.array(out, _TARGETS[type_name]), errors


def _is_missing(v):
    return v is None or (isinstance(v, float) and math.isnan(v)) or (isinstance(v, str) and not v.strip())


def _kind(v):
    return type(v).__name__


def _to_double(v):
    if _is_missing(v):
        return None, None
    if isinstance(v, bool):
        return None, f"expected a number, got {v!r}"
    if isinstance(v, (int, float)):
        v = float(v)
        return (v if math.isfinite(v) else None), None
    if isinstance(v, str):
        try:
            f = float(v.strip())
        except ValueError:
            return None, f"{v!r} is not a number"
        return (f if math.isfinite(f) else None), None
    return None, f"expected a number, got {_kind(v)}"


def _to_int(v):
    if _is_missing(v):
        return None, None
    if isinstance(v, bool):
        return None, f"expected an integer, got {v!r}"
    if isinstance(v, int):
        return v, None
    if isinstance(v, float) and v.is_integer():
        return int(v), None
    if isinstance(v, str):
        try:
            return int(v.strip()), None
        except ValueError:
            return None, f"{v!r} is not an integer"
    return None, f"expected an integer, got {_kind(v)}: {v!r}"


def _to_int32(v):
    value, error = _to_int(v)
    if value is not None and not -2**31 <= value < 2**31:
        return None, f"{value} is out of range for INTEGER"
    return value, error


def _to_text(v):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None, None
    if isinstance(v, str):
        return v, None
    if isinstance(v, bool):
        return str(v).lower(), None
    if isinstance(v, int):
        return str(v), None
    if isinstance(v, float):
        return (str(int(v)) if v.is_integer() else repr(v)), None
    return None, f"expected text, got {_kind(v)}"


def _to_date(v):
    if _is_missing(v):
        return None, None
    if isinstance(v, dt.datetime):
        return v.date(), None
    if isinstance(v, dt.date):
        return v, None
    if isinstance(v, int) and not isinstance(v, bool):
        v = str(v)
    if isinstance(v, str):
        s = v.strip()
        for fmt, length in (("%Y%m%d", 8), ("%Y-%m-%d", 10)):
            if len(s) == length:
                try:
                    return dt.datetime.strptime(s, fmt).date(), None
                except ValueError:
                    pass
        return None, f"{v!r} is not a YYYYMMDD date"
    return None, f"expected a YYYYMMDD date, got {_kind(v)}"


def _to_bool(v):
    if _is_missing(v):
        return None, None
    if isinstance(v, bool):
        return v, None
    if isinstance(v, str) and v.strip().lower() in ("true", "false", "1", "0"):
        return v.strip().lower() in ("true", "1"), None
    if isinstance(v, int) and v in (0, 1):
        return bool(v), None
    return None, f"{v!r} is not a boolean"


def _to_timestamp(v):
    if _is_missing(v):
        return None, None
    if isinstance(v, dt.datetime):
        if v.tzinfo is not None:
            v = v.astimezone(dt.timezone.utc).replace(tzinfo=None)
        return v, None
    if isinstance(v, dt.date):
        return dt.datetime(v.year, v.month, v.day), None
    if isinstance(v, str):
        try:
            return _to_timestamp(dt.datetime.fromisoformat(v.strip()))
        except ValueError:
            return None, f"{v!r} is not an ISO timestamp"
    return None, f"expected a timestamp, got {_kind(v)}"


_CONVERTERS = {
    "VARCHAR": _to_text, "DOUBLE": _to_double, "DATE": _to_date, "BIGINT": _to_int,
    "INTEGER": _to_int32, "BOOLEAN": _to_bool, "TIMESTAMP": _to_timestamp,
}
