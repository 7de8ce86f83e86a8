"""Custom processors: a user's function that transforms or validates a task type's rows.

A task type gets one by naming it in ``datasets.yaml``::

    stock_daily:
      processor: "mypackage.rules:check_daily"

or, with no such key, from a package that registers it in the entry point
group ``duckstage.processors`` under the task type's name::

    [project.entry-points."duckstage.processors"]
    stock_daily = "mypackage.rules:check_daily"

The function takes a ``pyarrow.Table`` (the cleaned rows of some tasks of one
task type, in the staged schema, ``_task_id`` included, and any undeclared
columns that came with them) and returns a ``pyarrow.Table`` in that schema;
undeclared columns it leaves out are not staged. It may drop rows, change values, or refuse
rows by returning them with a non-null ``_error`` column holding the reason:
those go to the dead letter. If it raises, or returns something that is not
the staged schema, every row it was given goes to the dead letter with the
error; the stager itself goes on.
"""

import importlib
import logging
from dataclasses import dataclass
from importlib.metadata import entry_points

import pyarrow as pa
import pyarrow.compute as pc

from duckstage.datasets import TASK_ID
from duckstage.exceptions import ConfigError

from .deadletter import Refusal
from .exceptions import PROCESSOR_ERROR, PROCESSOR_REJECTED, RowError

GROUP = "duckstage.processors"
ERROR_COLUMN = "_error"

log = logging.getLogger(__name__)


class Refused(RowError):
    """The processor raised or returned something unusable: every row it was given goes to the dead letter."""

    def __init__(self, message):
        super().__init__(message, PROCESSOR_ERROR)


def load_callable(spec, source, key):
    """Import ``module:function`` (the function may be a dotted attribute); ConfigError naming ``key``."""
    expected = "an importable module:function"
    module_name, _, attr = spec.partition(":")
    try:
        obj = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - any import failure is the person's to fix
        raise ConfigError(source, key, f"{expected} (import failed: {type(exc).__name__}: {exc})", spec) from None
    for part in attr.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            raise ConfigError(source, key, f"{expected} ({module_name} has no {attr})", spec)
    if not callable(obj):
        raise ConfigError(source, key, f"{expected} ({attr} is not callable)", spec)
    return obj


@dataclass(frozen=True)
class Registered:
    """A task type's processor: where it came from, and the function."""

    task_type: str
    spec: str      # "module:function"
    origin: str    # "datasets.yaml" or "entry point"
    function: object


def for_datasets(datasets, group=GROUP):
    """The processors of ``datasets``: the ``processor`` key first, else an entry point named for the task type.

    Imports the users' functions, so only the stager calls it, at start: a typo
    is refused there naming ``datasets.<task type>.processor``, and the loader,
    which reads the same datasets file, never needs the users' packages.
    """
    found = {}
    points = {ep.name: ep for ep in entry_points(group=group)}
    for dataset in datasets:
        if dataset.processor:
            function = load_callable(dataset.processor, datasets.source, f"datasets.{dataset.name}.processor")
            found[dataset.name] = Registered(dataset.name, dataset.processor, "datasets.yaml", function)
            if dataset.name in points:
                log.info("%s: processor %s from datasets.yaml, not the entry point %s", dataset.name,
                         dataset.processor, points[dataset.name].value)
        elif dataset.name in points:
            ep = points[dataset.name]
            try:
                function = ep.load()
            except Exception as exc:  # noqa: BLE001 - a broken plugin is refused at start-up
                raise ConfigError(f"entry point group {group}", dataset.name,
                                  f"an importable module:function (import failed: {type(exc).__name__}: {exc})",
                                  ep.value) from None
            if not callable(function):
                raise ConfigError(f"entry point group {group}", dataset.name, "a callable", ep.value)
            found[dataset.name] = Registered(dataset.name, ep.value, "entry point", function)
    return found


@dataclass
class Applied:
    table: pa.Table  # the processor's rows in the staged schema, grouped by task in the given order
    counts: list     # rows per task, in the given order
    rejected: list   # [(task index, Refusal)]: rows refused with _error


def apply(registered, dataset, table, task_ids):
    """Run a processor on ``table`` (rows of the tasks ``task_ids``, unique). Raises Refused."""
    name = registered.spec
    try:
        out = registered.function(table)
    except Exception as exc:  # noqa: BLE001 - a user's function must never stop the stager
        raise Refused(f"processor {name} raised {type(exc).__name__}: {exc}") from exc
    if not isinstance(out, pa.Table):
        raise Refused(f"processor {name} returned {type(out).__name__}, not a pyarrow.Table")
    expected = dataset.column_names
    present = [c for c in out.column_names if c != ERROR_COLUMN]
    missing = [c for c in expected if c not in present]
    # Undeclared columns it was given it may keep (they are staged) or leave out.
    given = {f.name: f for f in table.schema if f.name not in expected}
    kept = [given[c] for c in present if c in given]
    extra = [c for c in present if c not in expected and c not in given]
    if missing or extra:
        raise Refused(f"processor {name} returned a table that is not the staged schema:"
                      + (f" missing {', '.join(missing)}" if missing else "")
                      + (f" undeclared {', '.join(extra)} (declare them in datasets.yaml)" if extra else ""))
    if len(set(out.column_names)) != len(out.column_names):
        raise Refused(f"processor {name} returned duplicate column names")
    ids = pa.array(task_ids, pa.string())
    try:
        index = pc.index_in(out.column(TASK_ID).cast(pa.string()), value_set=ids)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
        raise Refused(f"processor {name} returned an unusable {TASK_ID}: {exc}") from exc
    if index.null_count:
        raise Refused(f"processor {name} returned rows whose {TASK_ID} is not one of the tasks it was given")

    rejected = []
    if ERROR_COLUMN in out.column_names:
        errors = out.column(ERROR_COLUMN)
        refused = pc.is_valid(errors)
        if pc.any(refused).as_py():
            as_given = [c.name for c in dataset.columns] + [f.name for f in kept]
            bad = out.filter(refused)
            for i, row, reason in zip(index.filter(refused).to_pylist(), bad.select(as_given).to_pylist(),
                                      bad.column(ERROR_COLUMN).to_pylist()):
                rejected.append((i, Refusal(row, f"processor {name}: {reason}", PROCESSOR_REJECTED)))
            keep = pc.invert(refused)
            out, index = out.filter(keep), index.filter(keep)
        out = out.drop_columns([ERROR_COLUMN])
    try:
        out = out.select(expected + [f.name for f in kept]).cast(pa.schema(list(dataset.arrow_schema) + kept))
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
        raise Refused(f"processor {name} returned values that do not fit the staged schema: {exc}") from exc
    for field in dataset.arrow_schema:
        if not field.nullable and out.column(field.name).null_count:
            raise Refused(f"processor {name} returned NULL in the required column {field.name}")
    # Whole tasks, in the order given: the stager acknowledges a task by the seal of its rows.
    order = pc.sort_indices(index)  # stable: a task's rows keep the processor's order
    out = out.take(order)
    counts = [0] * len(task_ids)
    for i in index.to_pylist():
        counts[i] += 1
    return Applied(out, counts, rejected)
