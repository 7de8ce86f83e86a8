"""Configuration: defaults in one place, validated once, passed down as plain values.

``load_config`` reads ``--config PATH``, else ``$DUCKSTAGE_CONFIG``, else
``config/duckstage.yaml`` in the working directory, checks every key against
``SPEC`` and returns a frozen ``Config``. Components take the values they need
as arguments; none of them reads YAML or the environment.

Relative paths in a configuration file are relative to the file's folder (as
Prometheus and docker compose have it): a producer started anywhere with the
same ``$DUCKSTAGE_CONFIG`` enqueues into the queue the stager reads. Without a
file, they are relative to the working directory.
"""

import logging
import os
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path

import yaml

from .datasets import Datasets, load_datasets
from .exceptions import ConfigError, ConfigProblem

ENV_VAR = "DUCKSTAGE_CONFIG"
DEFAULT_PATH = Path("config") / "duckstage.yaml"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


class Key:
    """One configuration key: its default, what it accepts, and whether it is live."""

    def __init__(self, default, kind, expected, check=None, live=False):
        self.default = default
        self.kind = kind  # a type or tuple of types
        self.expected = expected
        self.check = check or (lambda v: True)
        self.live = live

    def problem(self, value, source, key):
        """None when ``value`` is acceptable, else what is wrong with it."""
        kind_ok = isinstance(value, self.kind) and not (
            isinstance(value, bool) and bool not in _as_tuple(self.kind)
        )
        if not kind_ok or not self.check(value):
            return ConfigProblem(source, key, self.expected, value)
        return None


def _as_tuple(kind):
    return kind if isinstance(kind, tuple) else (kind,)


_num = (int, float)


def _positive_int(expected="a positive integer", live=False, default=None):
    return Key(default, int, expected, lambda v: v > 0, live)


def _positive_num(default, live=True):
    return Key(default, _num, "a positive number of seconds", lambda v: v > 0, live)


def _metrics_keys():
    """The HTTP port of /metrics, /healthz and /readyz (one per process; 0: off) and its address."""
    return {
        "metrics_port": Key(0, int, "a TCP port from 1 to 65535, or 0 for off", lambda v: 0 <= v <= 65535),
        "metrics_host": Key("127.0.0.1", str, "an address to listen on, e.g. 127.0.0.1 or 0.0.0.0",
                            lambda v: bool(v.strip())),
    }


# Batch settings that may also be set per task type under stager.task_types.
BATCH_KEYS = {
    "batch_size": _positive_int("a positive number of rows", live=True, default=1000),
    "batch_bytes": Key(64 * 2**20, int, "a number of bytes >= 4096", lambda v: v >= 4096, True),
    "batch_timeout": _positive_num(30),
}

SPEC = {
    "data_dir": Key("data", str, "a directory path", lambda v: bool(v.strip())),
    "datasets": Key("datasets.yaml", str, "a path to the datasets file", lambda v: bool(v.strip())),
    "log_level": Key("INFO", str, "one of " + ", ".join(LOG_LEVELS), lambda v: v.upper() in LOG_LEVELS, True),
    "huey": {
        "backend": Key("sqlite", str, "sqlite (the only backend duckstage embeds)", lambda v: v == "sqlite"),
        "name": Key("duckstage", str, "a non-empty queue name", lambda v: bool(v.strip())),
        "path": Key("huey.db", str, "a file path", lambda v: bool(v.strip())),
        "fsync": Key(True, bool, "true or false"),
    },
    "stager": {
        "worker_threads": Key(4, int, "an integer from 1 to 64", lambda v: 1 <= v <= 64),
        **BATCH_KEYS,
        "queue_check_interval": _positive_num(0.1),
        "run_huey_consumer": Key(True, bool, "true or false"),
        "shutdown_timeout": _positive_num(60, live=False),  # seconds to finish in-flight work when asked to stop
        "status_interval": _positive_num(1.0),
        "task_types": Key({}, dict, "a mapping of task type -> {batch_size, batch_bytes, batch_timeout}", live=True),
        **_metrics_keys(),
    },
    "loader": {
        "database": Key("warehouse.duckdb", str, "a file path", lambda v: bool(v.strip())),
        "max_retries": Key(3, int, "an integer >= 0", lambda v: v >= 0, True),
        "retry_delay": _positive_num(5),
        "retry_max_delay": _positive_num(60),
        "rescan_interval": _positive_num(10),
        "max_rows_per_transaction": _positive_int("a positive number of rows", live=True, default=1_000_000),
        "new_columns": Key("add", str, "one of add, quarantine, ignore", lambda v: v in ("add", "quarantine", "ignore"), True),
        "archive_retention_days": Key(0, _num, "a number of days >= 0 (0 keeps archives forever)", lambda v: v >= 0, True),
        "idle_release": Key(2.0, _num, "a number of seconds >= 0", lambda v: v >= 0, True),
        "shutdown_timeout": _positive_num(60, live=False),  # seconds to finish the current transaction
        **_metrics_keys(),
    },
}


@dataclass(frozen=True)
class BatchSettings:
    batch_size: int
    batch_bytes: int
    batch_timeout: float


@dataclass(frozen=True)
class HueyConfig:
    backend: str
    name: str
    path: Path
    fsync: bool


@dataclass(frozen=True)
class StagerConfig:
    worker_threads: int
    batch: BatchSettings
    queue_check_interval: float
    run_huey_consumer: bool
    shutdown_timeout: float
    status_interval: float
    task_types: dict = field(default_factory=dict)  # task type -> BatchSettings
    metrics_port: int = 0  # 0: no HTTP endpoint
    metrics_host: str = "127.0.0.1"

    def batch_for(self, task_type):
        return self.task_types.get(task_type, self.batch)


@dataclass(frozen=True)
class LoaderConfig:
    database: Path
    max_retries: int
    retry_delay: float
    retry_max_delay: float
    rescan_interval: float
    max_rows_per_transaction: int
    new_columns: str
    archive_retention_days: float
    idle_release: float
    shutdown_timeout: float = 60
    metrics_port: int = 0  # 0: no HTTP endpoint
    metrics_host: str = "127.0.0.1"


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

    def under_data(p):
        p = Path(p)
        return p if p.is_absolute() else data_dir / p

    s = values["stager"]
    overrides = {}
    for task_type, body in s["task_types"].items():
        key = f"stager.task_types.{task_type}"
        if task_type not in datasets:
            if datasets.names:  # else the datasets file is refused already
                problems.append(ConfigProblem(source, key, "a task type declared in " + str(datasets_path),
                                              task_type))
            continue
        if not isinstance(body, dict):
            problems.append(ConfigProblem(source, key, "a mapping of batch_size, batch_bytes, batch_timeout", body))
            continue
        merged = {k: s[k] for k in BATCH_KEYS}
        for k, v in body.items():
            if k not in BATCH_KEYS:
                problems.append(ConfigProblem(source, f"{key}.{k}",
                                              "one of " + ", ".join(BATCH_KEYS) + " (unknown key)", v))
            elif (problem := BATCH_KEYS[k].problem(v, source, f"{key}.{k}")) is not None:
                problems.append(problem)
            else:
                merged[k] = v
        overrides[task_type] = BatchSettings(**merged)

    h, lo = values["huey"], values["loader"]
    config = Config(
        source=source,
        data_dir=data_dir,
        datasets=datasets,
        log_level=values["log_level"].upper(),
        huey=HueyConfig(h["backend"], h["name"], under_data(h["path"]), h["fsync"]),
        stager=StagerConfig(
            worker_threads=s["worker_threads"],
            batch=BatchSettings(s["batch_size"], s["batch_bytes"], s["batch_timeout"]),
            queue_check_interval=s["queue_check_interval"],
            run_huey_consumer=s["run_huey_consumer"],
            shutdown_timeout=s["shutdown_timeout"],
            status_interval=s["status_interval"],
            task_types=overrides,
            metrics_port=s["metrics_port"],
            metrics_host=s["metrics_host"],
        ),
        loader=LoaderConfig(
            database=under_data(lo["database"]),
            **{k: lo[k] for k in SPEC["loader"] if k != "database"},
        ),
    )
    return config, problems


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


def live_keys():
    """Dotted names of the keys that may change while the processes run."""
    names = []
    for section, rules in SPEC.items():
        if isinstance(rules, dict):
            names += [f"{section}.{k}" for k, r in rules.items() if r.live]
        elif rules.live:
            names.append(section)
    return names


def _flatten(raw, spec, prefix=""):
    out = {}
    for key, rule in spec.items():
        if isinstance(rule, dict):
            out.update(_flatten(raw.get(key, {}), rule, f"{prefix}{key}."))
        else:
            out[prefix + key] = raw.get(key)
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
    old_raw = _flatten(_as_mapping(current), SPEC)
    new_raw = _flatten(_as_mapping(new), SPEC)
    restart = sorted(k for k in new_raw if new_raw[k] != old_raw[k] and not _rule(k).live)
    if new.datasets.source != current.datasets.source or _datasets_changed(current, new):
        restart.append("datasets (file contents)")
    merged = replace(
        current,
        log_level=new.log_level,
        stager=replace(current.stager, batch=new.stager.batch, task_types=new.stager.task_types,
                       queue_check_interval=new.stager.queue_check_interval,
                       status_interval=new.stager.status_interval),
        loader=replace(current.loader, **{k: getattr(new.loader, k)
                                          for k, rule in SPEC["loader"].items() if rule.live}),
    )
    return merged, restart


def _rule(dotted):
    rule = SPEC
    for part in dotted.split("."):
        rule = rule[part]
    return rule


def _datasets_changed(a, b):
    return [(d.name, d.columns, d.primary_key, d.version_order, d.processor) for d in a.datasets] != \
        [(d.name, d.columns, d.primary_key, d.version_order, d.processor) for d in b.datasets]


def _as_mapping(config):
    """The validated values of ``config`` keyed like the YAML file (for comparisons)."""
    s, lo, h = config.stager, config.loader, config.huey
    return {
        "data_dir": str(config.data_dir), "datasets": config.datasets.source, "log_level": config.log_level,
        "huey": {"backend": h.backend, "name": h.name, "path": str(h.path), "fsync": h.fsync},
        "stager": {"worker_threads": s.worker_threads, "batch_size": s.batch.batch_size,
                   "batch_bytes": s.batch.batch_bytes, "batch_timeout": s.batch.batch_timeout,
                   "queue_check_interval": s.queue_check_interval, "run_huey_consumer": s.run_huey_consumer,
                   "shutdown_timeout": s.shutdown_timeout, "status_interval": s.status_interval,
                   "task_types": {k: vars(v) for k, v in s.task_types.items()},
                   "metrics_port": s.metrics_port, "metrics_host": s.metrics_host},
        "loader": {k: (str(v) if k == "database" else v) for k, v in vars(lo).items()},
    }


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
        self._log = logging.getLogger("duckstage.config")

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
        before, after = _flatten(_as_mapping(current), SPEC), _flatten(_as_mapping(new), SPEC)
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


def running_values(config):
    """Every key's value in ``config``, by dotted name, JSON-ready."""
    return _flatten(_as_mapping(config), SPEC)
