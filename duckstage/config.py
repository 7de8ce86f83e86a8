"""Configuration: defaults in one place, validated once, passed down as plain values.

``load_config`` reads ``--config PATH``, else ``$DUCKSTAGE_CONFIG``, else
``config/duckstage.yaml`` in the working directory, checks every key against
``SPEC`` and returns a frozen ``Config``. Components take the values they need
as arguments; none of them reads YAML or the environment.

Each key is declared once, in ``SPEC``: its default, what it accepts, whether
a running process applies it live, and what it means. The value classes
(``HueyConfig``, ``StagerConfig``, ``LoaderConfig``, ``BatchSettings``), the
validation, the reload of live keys, the flat view ``status`` shows and the
table of docs/configuration.md all follow from it: a new key is one line here.

Relative paths in a configuration file are relative to the file's folder (as
Prometheus and docker compose have it): a producer started anywhere with the
same ``$DUCKSTAGE_CONFIG`` enqueues into the queue the stager reads. Without a
file, they are relative to the working directory.
"""

import logging
import os
import re
import threading
import urllib.parse
from dataclasses import asdict, dataclass, field, fields, is_dataclass, make_dataclass, replace
from pathlib import Path

import yaml

from . import database
from .datasets import Datasets, load_datasets
from .exceptions import ConfigError, ConfigProblem

ENV_VAR = "DUCKSTAGE_CONFIG"
DEFAULT_PATH = Path("config") / "duckstage.yaml"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


class Key:
    """One configuration key: its default, what it accepts, whether it is live, and what it means.

    ``path`` keys name a file under ``data_dir`` and become a ``Path`` resolved against it.
    ``build(section_values, data_dir)`` makes the value of a key that is more than a path
    (``loader.database``). ``shown`` turns a value into what status, logs and error
    messages may show (a Redis URL without its password). A ``None`` default means
    the key is unset unless the file gives it.
    """

    def __init__(self, default, kind, expected, check=None, live=False, meaning="", path=False, build=None,
                 shown=None):
        self.default = default
        self.kind = kind  # a type or tuple of types
        self.expected = expected
        self.check = check or (lambda v: True)
        self.live = live
        self.meaning = meaning
        self.path = path
        self.build = build
        self.shown = shown or (lambda v: v)
        self.redacted = shown is not None  # its value classes' repr leaves it out too

    def problem(self, value, source, key):
        """None when ``value`` is acceptable, else what is wrong with it."""
        kind_ok = isinstance(value, self.kind) and not (
            isinstance(value, bool) and bool not in _as_tuple(self.kind)
        )
        if not kind_ok or not self.check(value):
            return ConfigProblem(source, key, self.expected, self.shown(value) if kind_ok else value)
        return None

    @property
    def value_type(self):
        """The Python type of the validated value, for the value classes."""
        if self.path:
            return Path
        if self.build:
            return object
        return float if self.kind == _num else self.kind


def _as_tuple(kind):
    return kind if isinstance(kind, tuple) else (kind,)


_num = (int, float)


def _nonempty(v):
    return bool(v.strip())


REDIS_SCHEMES = ("redis", "rediss", "unix")


def _redis_url(v):
    """redis://[[USER]:PASSWORD@]HOST[:PORT][/DB], rediss://... (TLS) or unix://[:PASSWORD@]/PATH[?db=DB]."""
    try:
        url = urllib.parse.urlsplit(v)
        url.port  # noqa: B018 - raises ValueError for a port that is not a number from 0 to 65535
    except ValueError:
        return False
    if url.scheme == "unix":
        return bool(url.path)
    return url.scheme in REDIS_SCHEMES and bool(url.hostname) and re.fullmatch(r"(/\d*)?", url.path) is not None


_SIZE_UNITS = {"kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def _is_memory_limit(value):
    """A size DuckDB's memory_limit takes (a number and a unit: 512MB, 1.5GB, 2GiB), at least 64MB:
    below that a MERGE of one file runs out of memory, and the loader would retry it forever."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([KMGT]i?B)", value.strip(), re.IGNORECASE)
    return match is not None and float(match[1]) * _SIZE_UNITS[match[2].lower()] >= 64e6


def redact_url(url):
    """A URL without its password (``***`` in its place), for status, logs and error messages."""
    return re.sub(r"^([A-Za-z][A-Za-z0-9+.-]*://[^:/@]*):[^@/]*@", r"\1:***@", url) if isinstance(url, str) else url


def _seconds(default, meaning, live=True):
    return Key(default, _num, "a positive number of seconds", lambda v: v > 0, live, meaning)


def _metrics_keys(meaning_port, meaning_host):
    """The HTTP port of /metrics, /healthz and /readyz (one per process; 0: off) and its address."""
    return {
        "metrics_port": Key(0, int, "a TCP port from 1 to 65535, or 0 for off", lambda v: 0 <= v <= 65535,
                            meaning=meaning_port),
        "metrics_host": Key("127.0.0.1", str, "an address to listen on, e.g. 127.0.0.1 or 0.0.0.0", _nonempty,
                            meaning=meaning_host),
    }


HUEY_BACKENDS = ("sqlite", "redis")
# The keys only one backend reads: given with the other, they are refused rather than ignored.
BACKEND_KEYS = {"sqlite": ("path", "fsync"), "redis": ("url", "lease_timeout")}

# Batch settings that may also be set per task type under stager.task_types.
BATCH_KEYS = {
    "batch_size": Key(1000, int, "a positive number of rows", lambda v: v > 0, True,
                      "rows that rotate a staging file"),
    "batch_max_rows": Key(100_000, int, "a positive number of rows", lambda v: v > 0, True,
                          "rows a staging file may grow to while a backlog waits (never below `batch_size`)"),
    "batch_bytes": Key(64 * 2**20, int, "a number of bytes >= 4096", lambda v: v >= 4096, True,
                       "in-memory bytes that rotate a staging file"),
    "batch_timeout": _seconds(30, "seconds: a non-empty buffer is sealed at least this often"),
}

SPEC = {
    "data_dir": Key("data", str, "a directory path", _nonempty,
                    meaning="root of every runtime file (the shipped file: `../data`)"),
    "datasets": Key("datasets.yaml", str, "a path to the datasets file", _nonempty,
                    meaning="the task types file"),
    "log_level": Key("INFO", str, "one of " + ", ".join(LOG_LEVELS), lambda v: v.upper() in LOG_LEVELS, True,
                     "DEBUG, INFO, WARNING, ERROR"),
    "huey": {
        "backend": Key("sqlite", str, "one of " + ", ".join(HUEY_BACKENDS), lambda v: v in HUEY_BACKENDS,
                       meaning="`sqlite`: SqliteHuey, the embedded queue; `redis`: one queue for stagers on"
                               " several hosts ([scaling](scaling.md#the-queue-on-redis))"),
        "name": Key("duckstage", str, "a non-empty queue name", _nonempty,
                    meaning="queue name; keep it for duckstage alone"),
        "path": Key("huey.db", str, "a file path", _nonempty, meaning="backend sqlite: the SQLite file", path=True),
        "fsync": Key(True, bool, "true or false", meaning="backend sqlite: producers commit with `synchronous=FULL`"),
        "url": Key(None, str, "a Redis URL, redis://HOST:PORT/DB", _redis_url, shown=redact_url,
                   meaning="backend redis (required): `redis://[:PASSWORD@]HOST:PORT/DB`; status and logs never"
                           " show the password"),
        "lease_timeout": Key(30, _num, "a number of seconds >= 1", lambda v: v >= 1,
                             meaning="backend redis: seconds without a heartbeat before a stager's leased tasks"
                                     " return to the queue"),
    },
    "stager": {
        "worker_threads": Key(4, int, "an integer from 1 to 64", lambda v: 1 <= v <= 64,
                              meaning="Huey worker threads"),
        **BATCH_KEYS,
        "queue_check_interval": _seconds(0.1, "seconds an idle worker waits before polling"),
        "run_huey_consumer": Key(True, bool, "true or false",
                                 meaning="`false`: the producer runs its own Huey consumer and the stager"
                                         " claims results"),
        "shutdown_timeout": _seconds(60, "seconds for a clean stop", live=False),
        "status_interval": _seconds(1.0, "seconds between status snapshots (`data/run/stager.json`)"),
        "task_types": Key({}, dict, "a mapping of task type -> {batch_size, batch_max_rows, batch_bytes, batch_timeout}",
                          live=True,
                          meaning="per task type `batch_size`, `batch_max_rows`, `batch_bytes`, `batch_timeout`"),
        **_metrics_keys("`/metrics`, `/healthz`, `/readyz` over HTTP; 0 is off", "address the endpoints listen on"),
    },
    "loader": {
        "database": Key("warehouse.duckdb", str, database.EXPECTED, database.is_valid,
                        meaning="the DuckDB file, or a DuckLake: `ducklake:sqlite:PATH`, `ducklake:postgres:CONNINFO`"
                                " (docs/scaling.md)",
                        build=lambda values, data_dir: database.parse(values["database"], data_dir,
                                                                      values["data_path"])),
        "data_path": Key("lake", str, "a directory path", _nonempty, path=True,
                         meaning="a DuckLake's data files (Parquet); shared by every host that loads into it"),
        "max_retries": Key(3, int, "an integer >= 0", lambda v: v >= 0, True,
                           "quick retries of a busy or locked database"),
        "retry_delay": _seconds(5, "seconds before the first retry, doubled each time"),
        "retry_max_delay": _seconds(60, "cap of the backoff; past `max_retries` the loader keeps trying at this pace"),
        "rescan_interval": _seconds(10, "seconds between full scans of `staging/`"),
        "max_rows_per_transaction": Key(1_000_000, int, "a positive number of rows", lambda v: v > 0, True,
                                        "files merged in one transaction, by rows"),
        "new_columns": Key("add", str, "one of add, quarantine, ignore", lambda v: v in ("add", "quarantine", "ignore"),
                           True, "a column the table lacks: `add`, `quarantine` the file, or `ignore` it"),
        "archive_retention_days": Key(0, _num, "a number of days >= 0 (0 keeps archives forever)", lambda v: v >= 0,
                                      True, "days archived files are kept; 0 keeps them"),
        "maintenance_interval": Key(600, _num, "a number of seconds >= 0 (0 turns it off)", lambda v: v >= 0, True,
                                    "DuckLake only: seconds between compaction and snapshot expiry; 0 is off"),
        "snapshot_retention_days": Key(7, _num, "a number of days >= 0", lambda v: v >= 0, True,
                                       "DuckLake only: days of snapshots kept for time travel"),
        "idle_release": Key(2.0, _num, "a number of seconds >= 0", lambda v: v >= 0, True,
                            "seconds idle before the loader closes the database for others"),
        "memory_limit": Key("512MB", str, "a size of at least 64MB, such as 512MB or 2GB", _is_memory_limit,
                            meaning="DuckDB's memory limit in the loader (`SET memory_limit`); beyond it a MERGE"
                                    " spills to disk. The process's resident memory stays a few hundred MB above it"),
        "shutdown_timeout": _seconds(60, "seconds for a clean stop (the current transaction)", live=False),
        **_metrics_keys("as for the stager", "as for the stager"),
    },
}


def declared_keys(spec=SPEC, prefix=""):
    """``(dotted name, Key)`` of every key, in the order of the declaration."""
    for name, rule in spec.items():
        if isinstance(rule, dict):
            yield from declared_keys(rule, f"{prefix}{name}.")
        else:
            yield prefix + name, rule


def _values_class(name, keys, doc, group=None, methods=None):
    """A frozen dataclass with one field per key; ``group`` ``(field, value class)`` gathers that class's keys."""
    grouped = {f.name for f in fields(group[1])} if group else set()
    attrs = [group] if group else []
    attrs += [(k, rule.value_type, field(repr=False)) if rule.redacted else (k, rule.value_type)
              for k, rule in keys.items() if k not in grouped]
    cls = make_dataclass(name, attrs, frozen=True, namespace=dict(methods or {}, __doc__=doc))
    cls.__module__ = __name__
    return cls


def _batch_for(self, task_type):
    return self.task_types.get(task_type, self.batch)


BatchSettings = _values_class("BatchSettings", BATCH_KEYS, "When a staging buffer is sealed.")


def _location(self):
    """Where the queue is, as status and logs show it: the SQLite file, or the Redis URL without its password."""
    return redact_url(self.url) if self.backend == "redis" else str(self.path)


HueyConfig = _values_class("HueyConfig", SPEC["huey"], "The queue: ``huey.*``.",
                           methods={"location": property(_location)})
StagerConfig = _values_class(
    "StagerConfig", SPEC["stager"],
    "``stager.*``; the batch keys are in ``batch``, ``task_types`` maps a task type to its BatchSettings.",
    group=("batch", BatchSettings), methods={"batch_for": _batch_for})
LoaderConfig = _values_class("LoaderConfig", SPEC["loader"], "``loader.*``.")


@dataclass(frozen=True)
class Config:
    source: str  # the absolute path of the file it came from, or "<defaults>"
    data_dir: Path
    datasets: object  # duckstage.datasets.Datasets
    log_level: str
    huey: HueyConfig
    stager: StagerConfig
    loader: LoaderConfig
    note: str = ""  # with no file: which files were looked for, for the log

    @property
    def staging_dir(self):
        return self.data_dir / "staging"

    @property
    def archive_dir(self):
        return self.data_dir / "archive"

    @property
    def quarantine_dir(self):
        return self.data_dir / "quarantine"

    @property
    def deadletter_dir(self):
        return self.data_dir / "deadletter"

    @property
    def run_dir(self):
        """Status snapshots of the running processes."""
        return self.data_dir / "run"

    def with_stager(self, **changes):
        return replace(self, stager=replace(self.stager, **changes))

    def with_loader(self, **changes):
        return replace(self, loader=replace(self.loader, **changes))


def _find(explicit, environ, cwd):
    """The file to read, and how it was named: --config, then $DUCKSTAGE_CONFIG, then config/duckstage.yaml."""
    if explicit:
        return Path(explicit), "--config"
    if environ.get(ENV_VAR):
        return Path(environ[ENV_VAR]), f"${ENV_VAR}"
    default = cwd / DEFAULT_PATH
    return (default, "the default location") if default.is_file() else (None, None)


def load_config(path=None, environ=None, cwd=None):
    """Load, validate and resolve the configuration. Raises ConfigError naming every wrong key."""
    config, refused = inspect_config(path, environ, cwd)
    if refused is not None:
        raise refused
    return config


def inspect_config(path=None, environ=None, cwd=None):
    """The configuration as far as it is valid, and the refusal (or None).

    Every invalid key takes its default and every problem is in the returned
    ConfigError, so that ``status`` can still find the data folder and show a
    refused edit next to the running values. A configuration file that was
    named but does not exist (or is a folder) is raised: there is nothing to show.
    """
    environ = os.environ if environ is None else environ
    cwd = Path(cwd or os.getcwd()).absolute()
    found, named_by = _find(path, environ, cwd)
    problems = []
    if found is None:
        looked_for = f"no --config, no ${ENV_VAR}, no {cwd / DEFAULT_PATH}"
        note = f"no configuration file ({looked_for}): using the defaults, data in {cwd / 'data'}"
        config, more = _build({}, f"no configuration file ({looked_for}), the defaults", cwd / "config", cwd)
        config = replace(config, source="<defaults>", note=note)
    else:
        found = found if found.is_absolute() else cwd / found
        raw = _read_yaml(found, named_by, problems)
        folder = found.resolve().parent  # the real folder: "../data" then means what it says on disk
        config, more = _build(raw, str(found), folder, folder)
    problems += more
    return config, (ConfigError(problems=problems) if problems else None)


def _read_yaml(path, named_by, problems):
    """The parsed file, or {} with the reason added to ``problems``. Raises ConfigError when there is no file."""
    try:
        with open(path, encoding="utf-8") as f:
            raw = yaml.safe_load(f)
    except FileNotFoundError:
        raise ConfigError(path, "(file)", f"an existing configuration file (named by {named_by})",
                          has_got=False) from None
    except IsADirectoryError:
        raise ConfigError(path, "(file)", f"a file, not a directory (named by {named_by})", has_got=False) from None
    except OSError as exc:
        raise ConfigError(path, "(file)", f"a readable configuration file ({exc.strerror or exc})",
                          has_got=False) from None
    except yaml.YAMLError as exc:
        problems.append(ConfigProblem(path, "(file)", "valid YAML", str(exc).replace("\n", " ")))
        return {}
    return {} if raw is None else raw


def from_mapping(raw, source="<mapping>", config_dir=None, cwd=None):
    """Validate a parsed YAML mapping and build a Config (paths resolved). Raises ConfigError.

    A relative ``data_dir`` resolves against ``cwd`` (the working directory
    unless given) and a relative ``datasets`` against ``config_dir``
    (``cwd/config`` unless given); ``load_config`` passes a file's folder as both.
    """
    cwd = Path(cwd or os.getcwd())
    config, problems = _build(raw, source, Path(config_dir) if config_dir else cwd / "config", cwd)
    if problems:
        raise ConfigError(problems=problems)
    return config


def _build(raw, source, config_dir, data_base):
    """``(Config, problems)``: every invalid value replaced by its default, every problem listed."""
    problems = []
    values = _validate(raw, SPEC, source, "", problems)
    problems += _backend_problems(raw, values["huey"], source)
    data_dir = Path(values["data_dir"])
    data_dir = data_dir if data_dir.is_absolute() else Path(os.path.normpath(Path(data_base) / data_dir))
    datasets_path = Path(values["datasets"])
    datasets_path = datasets_path if datasets_path.is_absolute() else Path(config_dir) / datasets_path
    datasets = None
    if datasets_path.is_file():
        try:
            datasets = load_datasets(datasets_path)
        except ConfigError as exc:
            problems += exc.problems
    else:
        problems.append(ConfigProblem(source, "datasets", "an existing datasets file", str(datasets_path)))
    if datasets is None:
        datasets = Datasets([], 1, str(datasets_path))
    values["stager"]["task_types"] = _task_type_batches(values["stager"], datasets, datasets_path, source, problems)
    sections = {f.name: _section_values(f.type, values[f.name], SPEC[f.name], data_dir)
                for f in fields(Config) if isinstance(SPEC.get(f.name), dict)}
    config = Config(source=source, data_dir=data_dir, datasets=datasets, log_level=values["log_level"].upper(),
                    **sections)
    return config, problems


def _backend_problems(raw, huey, source):
    """A Redis backend without its URL, and keys of the backend not chosen (which would be silently ignored)."""
    given = raw.get("huey") if isinstance(raw, dict) else None
    given = given if isinstance(given, dict) else {}
    backend = huey["backend"]
    if given.get("backend", backend) != backend:
        return []  # the backend itself is refused already
    problems = []
    if backend == "redis" and "url" not in given:
        problems.append(ConfigProblem(source, "huey.url", "a Redis URL, redis://HOST:PORT/DB (required with "
                                                          "huey.backend: redis)", has_got=False))
    for other, keys in BACKEND_KEYS.items():
        for key in keys if other != backend else ():
            if key in given:
                rule = SPEC["huey"][key]
                problems.append(ConfigProblem(source, f"huey.{key}", f"no huey.{key} with huey.backend: {backend} "
                                                                     f"(only backend {other} reads it)",
                                              rule.shown(given[key])))
                huey[key] = rule.default
    return problems


def _section_values(cls, values, rules, data_dir):
    """An instance of value class ``cls`` from a section's validated ``values``."""
    kwargs = {}
    for f in fields(cls):
        if is_dataclass(f.type):
            kwargs[f.name] = _section_values(f.type, values, rules, data_dir)
        elif rules[f.name].build:
            kwargs[f.name] = rules[f.name].build(values, data_dir)
        elif rules[f.name].path:
            kwargs[f.name] = data_dir / values[f.name]  # an absolute path stays itself
        else:
            kwargs[f.name] = values[f.name]
    return cls(**kwargs)


def _task_type_batches(stager, datasets, datasets_path, source, problems):
    """``stager.task_types`` validated: task type -> BatchSettings, the global batch keys filling the gaps."""
    overrides = {}
    for task_type, body in stager["task_types"].items():
        key = f"stager.task_types.{task_type}"
        if task_type not in datasets:
            if datasets.names:  # else the datasets file is refused already
                problems.append(ConfigProblem(source, key, "a task type declared in " + str(datasets_path),
                                              task_type))
            continue
        if not isinstance(body, dict):
            problems.append(ConfigProblem(source, key, "a mapping of " + ", ".join(BATCH_KEYS), body))
            continue
        merged = {k: stager[k] for k in BATCH_KEYS}
        for k, v in body.items():
            if k not in BATCH_KEYS:
                problems.append(ConfigProblem(source, f"{key}.{k}",
                                              "one of " + ", ".join(BATCH_KEYS) + " (unknown key)", v))
            elif (problem := BATCH_KEYS[k].problem(v, source, f"{key}.{k}")) is not None:
                problems.append(problem)
            else:
                merged[k] = v
        overrides[task_type] = BatchSettings(**merged)
    return overrides


def _validate(raw, spec, source, prefix, problems):
    """The values of ``spec`` from ``raw``: each wrong one is added to ``problems`` and takes its default."""
    if not isinstance(raw, dict):
        problems.append(ConfigProblem(source, prefix.rstrip(".") or "(file)", "a mapping of keys", raw))
        raw = {}
    out = {}
    for key, value in raw.items():
        if key not in spec:
            known = ", ".join(spec)
            problems.append(ConfigProblem(source, prefix + str(key), f"one of {known} (unknown key)", value))
    for key, rule in spec.items():
        name = prefix + key
        if isinstance(rule, dict):
            out[key] = _validate({} if raw.get(key) is None else raw[key], rule, source, name + ".", problems)
        elif key in raw and (problem := rule.problem(raw[key], source, name)) is not None:
            problems.append(problem)
            out[key] = rule.default
        else:
            out[key] = raw.get(key, rule.default)
    return out


def reload_config(current):
    """Re-read ``current.source`` for a running process.

    Returns ``(config, restart_keys)``: ``config`` carries the new values of
    the live keys and the current values of every other key; ``restart_keys``
    names the changed keys that only take effect after a restart. Raises
    ConfigError for an invalid file: the caller keeps ``current``.
    """
    if current.source.startswith("<"):
        return current, []
    new = load_config(current.source)
    old_values, new_values = running_values(current), running_values(new)
    restart = sorted(k for k, rule in declared_keys() if new_values[k] != old_values[k] and not rule.live)
    if new.datasets.source != current.datasets.source or _datasets_changed(current, new):
        restart.append("datasets (file contents)")
    return _with_live_values(current, new, SPEC), restart


def _with_live_values(current, new, spec):
    """``current`` with the value of every live key of ``spec`` taken from ``new``."""
    changes = {}
    for f in fields(current):
        rule = spec.get(f.name)
        if isinstance(rule, dict):
            changes[f.name] = _with_live_values(getattr(current, f.name), getattr(new, f.name), rule)
        elif is_dataclass(f.type):  # a group of keys of this section (stager.batch)
            changes[f.name] = _with_live_values(getattr(current, f.name), getattr(new, f.name), spec)
        elif rule is not None and rule.live:
            changes[f.name] = getattr(new, f.name)
    return replace(current, **changes)


def _datasets_changed(a, b):
    return [(d.name, d.columns, d.primary_key, d.version_order, d.processor, d.history) for d in a.datasets] != \
        [(d.name, d.columns, d.primary_key, d.version_order, d.processor, d.history) for d in b.datasets]


def running_values(config):
    """Every key's value in ``config``, by dotted name, JSON-ready, as it may be shown (for status, metrics, logs)."""
    return {name: _plain(rule.shown(_value_of(config, name))) for name, rule in declared_keys()}


def _value_of(config, dotted):
    *section, key = dotted.split(".")
    holder = getattr(config, section[0]) if section else config
    if not hasattr(holder, key):  # a key gathered into a group (stager.batch_size is stager.batch.batch_size)
        holder = next(getattr(holder, f.name) for f in fields(holder)
                      if is_dataclass(f.type) and key in {g.name for g in fields(f.type)})
    return getattr(holder, key)


def _plain(value):
    if isinstance(value, (Path, database.Database)):
        return str(value)
    if isinstance(value, Datasets):
        return value.source
    if isinstance(value, dict):
        return {k: asdict(v) if is_dataclass(v) else v for k, v in value.items()}
    return value


def reference_table():
    """The Markdown table of every key (docs/configuration.md holds it; a test keeps them equal)."""
    def shown(default):
        return {True: "true", False: "false"}.get(default, default) if isinstance(default, bool) else default

    lines = ["| key | default | live | meaning |", "| --- | --- | --- | --- |"]
    lines += [f"| `{name}` | {'—' if rule.default is None else f'`{shown(rule.default)}`'} | "
              f"{'yes' if rule.live else 'no'} | {rule.meaning} |"
              for name, rule in declared_keys()]
    return "\n".join(lines) + "\n"


class ConfigWatcher:
    """A running process's view of its configuration file.

    ``poll(current)`` re-reads the file when it changed on disk or when
    ``reload_requested`` is set (SIGHUP), validates it, and returns the
    configuration to use from now on: the new live values, or ``current``
    when the edit is refused. ``status()`` says what happened, for status and
    metrics. ``own_sections`` are the sections of this process: a changed
    restart-only key of another process's section is not reported.
    """

    def __init__(self, config, own_sections):
        self.source = config.source
        self.own_sections = tuple(own_sections)
        self.reload_requested = threading.Event()
        self.error = None  # the last refused edit
        self.reloads = 0
        self.restart_required = []  # changed keys that wait for a restart
        self._mtime = self._stat()
        self._log = logging.getLogger(__name__)

    def _stat(self):
        try:
            return os.stat(self.source).st_mtime_ns
        except (OSError, ValueError):
            return None

    def poll(self, current):
        """Return ``(config, outcome)``; outcome is None, "applied" or "refused"."""
        mtime = self._stat()
        if mtime == self._mtime and not self.reload_requested.is_set():
            return current, None
        self.reload_requested.clear()
        self._mtime = mtime
        try:
            new, restart = reload_config(current)
        except ConfigError as exc:
            self.error = str(exc)
            self._log.error("configuration edit refused, keeping the running values: %s", exc,
                            extra={"event": "config_refused"})
            return current, "refused"
        self.error = None
        self.reloads += 1
        logging.getLogger().setLevel(new.log_level)
        logging.getLogger("duckstage").setLevel(new.log_level)
        before, after = running_values(current), running_values(new)
        changed = [f"{k}={after[k]}" for k in after if after[k] != before[k]]
        self._log.info("configuration reloaded from %s%s", new.source, ": " + ", ".join(changed) if changed else "",
                       extra={"event": "config_reloaded"})
        others = tuple(f"{k}." for k in SPEC if isinstance(SPEC[k], dict) and k not in self.own_sections)
        self.restart_required = [k for k in restart if not k.startswith(others)]
        if self.restart_required:
            self._log.warning("changed key(s) that need a restart to take effect: %s",
                              ", ".join(self.restart_required), extra={"event": "config_restart_required"})
        return new, "applied"

    def status(self, config):
        """For status and metrics; ``values`` are the running ones, by dotted key (a refused edit shows beside them)."""
        return {"source": self.source, "error": self.error, "reloads": self.reloads,
                "restart_required": list(self.restart_required), "log_level": config.log_level,
                "values": running_values(config)}

