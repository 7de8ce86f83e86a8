"""The Huey task producers call, and the Huey instance it is registered on.

Producer code::

    from stager import TaskType
    from stager.tasks import process_fetched_data

    process_fetched_data(TaskType.STOCK_DAILY, df, ts_code="600000.SH",
                         start_date="20240101", end_date="20240131")

``stager.tasks.huey`` and ``stager.tasks.process_fetched_data`` are built on
first use from the configuration (``$DUCKSTAGE_CONFIG`` or
``config/duckstage.yaml`` in the working directory, else the defaults, with a
warning), so the producer and the stager agree on the queue: relative paths
are relative to the configuration file, not to where the producer runs. A
configuration that is refused raises ``duckstage.exceptions.ConfigError`` at that
first use; the queue's location is logged at DEBUG (logger ``stager.tasks``). With
``huey.backend: redis``, an enqueue that cannot reach Redis, or finds it full, raises
``stager.QueueUnavailable`` (nothing enqueued; try again later). A
task type the datasets file does not declare is refused at once with
``stager.UnknownTaskType`` (a ValueError) listing the declared ones; nothing is
enqueued. A producer that runs its own Huey
consumer (``stager.run_huey_consumer: false``) starts it with
``huey_consumer stager.tasks.huey``.
"""

import datetime as dt

from huey import Huey
from huey.api import chord, group
from huey.signals import SIGNAL_ENQUEUED

from duckstage.staging import utcnow

from .exceptions import UnknownTaskType
from .queue import build_storage_huey
from .results import TaskResult, TaskType, to_rows

TASK_NAME = "process_fetched_data"
FETCHED_AT_PARAM = "fetched_at"


def _process_fetched_data(task_type, data, task=None, **params):
    """Wrap a fetched batch into a TaskResult; never raises for bad data.

    Validation and cleaning happen in the stager, the same way whether this
    ran inside the stager or in the producer's own consumer. Data that cannot
    be read at all comes back with ``error`` set, so the stager dead-letters it
    instead of Huey storing an exception nobody claims.
    """
    fetched_at = _parse_time(params.pop(FETCHED_AT_PARAM, None)) or utcnow()
    name = task_type.value if isinstance(task_type, TaskType) else str(task_type)
    try:
        rows, error = to_rows(data), None
    except TypeError as exc:
        rows, error = _keepable(data), str(exc)
    return TaskResult(name, rows, params, fetched_at, task.id if task is not None else None, error)


# Registered under this module's name, so every Huey instance built here
# (producer side or stager side) calls it "stager.tasks.process_fetched_data".
_process_fetched_data.__name__ = TASK_NAME
_process_fetched_data.__qualname__ = TASK_NAME


class FetchedDataHuey(Huey):
    """Huey that refuses ``process_fetched_data`` for a task type the datasets do not declare.

    The check runs in ``enqueue``, the one call every way of queueing a task
    goes through, before anything is written: a misspelt task type raises
    UnknownTaskType in the producer's process instead of turning up in the
    stager's dead letter. (A signal handler could not refuse: Huey logs and
    swallows what its receivers raise.) A task whose type is removed from the
    datasets file after it was enqueued is still dead-lettered by the stager.
    """

    datasets = None  # set by build_huey; None checks nothing

    def enqueue(self, task):
        tasks = list(task.tasks) if isinstance(task, (group, chord)) else [task]
        for t in tasks + ([task.callback] if isinstance(task, chord) else []):
            if getattr(t, "name", None) == TASK_NAME:
                self.check_task_type(t.args[0] if t.args else t.kwargs.get("task_type"))
        return super().enqueue(task)

    def check_task_type(self, task_type, context=None):
        """The task type's name; UnknownTaskType if the datasets file does not declare it."""
        name = task_type.value if isinstance(task_type, TaskType) else task_type
        if self.datasets is not None and not (isinstance(name, str) and name in self.datasets):
            raise UnknownTaskType(name, self.datasets.names, self.datasets.source, context)
        return name


def build_huey(config, synchronous=None):
    """The Huey instance for ``config`` with ``process_fetched_data`` registered.

    Returns ``(huey, task_wrapper)``. ``synchronous`` (e.g. "NORMAL") is for the
    stager's own connection; producers keep the configured fsync. Enqueueing a
    task type ``config.datasets`` does not declare raises UnknownTaskType.
    """
    huey = build_storage_huey(config.huey, synchronous, huey_class=FetchedDataHuey)
    huey.datasets = config.datasets
    wrapper = huey.task(context=True, name=TASK_NAME)(_process_fetched_data)

    @huey.signal(SIGNAL_ENQUEUED)
    def _prepare_for_queue(signal, task, *args, **kwargs):
        if task.name != TASK_NAME:
            return
        # The fetch time orders versions of a row: take it at enqueue, when
        # the producer has just fetched, not when a worker gets to the task.
        task.kwargs.setdefault(FETCHED_AT_PARAM, utcnow().isoformat())
        # Convert the rows to Arrow in the producer's process: the queue then
        # holds a compact columnar table that unpickles ~50x faster than row
        # dicts, and a pandas DataFrame never has to be unpickled (pandas is
        # not a dependency of the stager). Data that does not convert as a
        # whole is queued as it came; the stager finds its bad rows.
        if len(task.args) >= 2:
            try:
                task.args = (task.args[0], to_rows(task.args[1]), *task.args[2:])
            except TypeError:
                pass

    return huey, wrapper


def _parse_time(value):
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(dt.timezone.utc).replace(tzinfo=None)
        return value
    try:
        return _parse_time(dt.datetime.fromisoformat(str(value)))
    except ValueError:
        return None


def _keepable(data):
    try:
        return [{"value": repr(data)[:10000]}]
    except Exception:  # noqa: BLE001 - a repr that raises must not lose the task
        return [{"value": f"<unrepresentable {type(data).__name__}>"}]


_default = None


def __getattr__(name):
    global _default
    if name in ("huey", "process_fetched_data"):
        if _default is None:
            _default = build_huey(_producer_config())
        return _default[0] if name == "huey" else _default[1]
    raise AttributeError(name)


def _producer_config():
    """The configuration a producer enqueues with; says where the queue is. Raises ConfigError."""
    import logging

    from duckstage.config import load_config
    from duckstage.exceptions import ConfigError

    log = logging.getLogger(__name__)
    try:
        config = load_config()
    except ConfigError as exc:
        # The message names the file, the keys and what was expected; the frames of
        # the configuration loader would only bury it.
        raise exc.with_traceback(None) from None
    if config.note:
        log.warning(config.note, extra={"event": "config_defaults"})
    log.debug("process_fetched_data enqueues into Huey queue %r in %s (configuration %s)", config.huey.name,
              config.huey.location, config.source, extra={"event": "queue", "file": config.huey.location})
    return config
