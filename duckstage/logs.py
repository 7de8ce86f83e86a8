"""Log output of both processes: human-readable lines, or one JSON object per line.

``--log-format json`` (either CLI) writes, per record::

    {"timestamp": "2026-01-05T08:00:00.123Z", "level": "INFO", "process": "stager",
     "pid": 4242, "thread": "worker-0", "logger": "stager.sealer", "event": "sealed",
     "message": "sealed stock_daily-….parquet: 1000 rows from 3 task(s)",
     "task_type": "stock_daily", "file": "stock_daily-….parquet",
     "figures": {"rows": 1000, "tasks": 3, "lag_seconds": 4.2}}

Code passes the context as ``extra=``: ``event`` (a short name), ``task_type``,
``task_id``, ``file``; any other extra value is a figure. Values that look like
secrets (token=…, password: …) are masked in both formats: producers pass
their request parameters to ``process_fetched_data``, and a Tushare token can
travel with them.
"""

import datetime as dt
import json
import logging
import re
import sys

FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(threadName)s] %(message)s"
CONTEXT = ("task_type", "task_id", "file")
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}
_SECRET_NAME = re.compile(r"(?i)(token|password|passwd|secret|api_?key|authorization|credential)")
_SECRET_VALUE = re.compile(
    r"""(?i)\b((?:\w*?)(?:token|password|passwd|secret|api_?key|authorization|credential)\w*)"""
    r"""(['"]?\s*[=:]\s*['"]?)([^\s'",;&)}\]]+)""")
MASK = "***"


def redact(text):
    """``text`` with the values of secret-looking names masked."""
    return _SECRET_VALUE.sub(lambda m: m.group(1) + m.group(2) + MASK, text)


def _plain(value, key=""):
    if key and _SECRET_NAME.search(key):
        return MASK
    if isinstance(value, dict):
        return {str(k): _plain(v, str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_plain(v) for v in value]
    if isinstance(value, str):
        return redact(value)
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return redact(str(value))


class JsonFormatter(logging.Formatter):
    """One JSON object per record, fields as in the module docstring."""

    def __init__(self, process):
        super().__init__()
        self.process = process

    def format(self, record):
        stamp = dt.datetime.fromtimestamp(record.created, dt.timezone.utc)
        body = {
            "timestamp": stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z",
            "level": record.levelname,
            "process": self.process,
            "pid": record.process,
            "thread": record.threadName,
            "logger": record.name,
            "event": getattr(record, "event", None) or "log",
            "message": redact(record.getMessage()),
        }
        for key in CONTEXT:
            value = getattr(record, key, None)
            if value is not None:
                body[key] = _plain(value)
        figures = {k: _plain(v, k) for k, v in vars(record).items()
                   if k not in _STANDARD and k not in CONTEXT and k != "event"}
        if figures:
            body["figures"] = figures
        if record.exc_info:
            body["exception"] = redact(self.formatException(record.exc_info))
        return json.dumps(body, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """The human-readable line, secrets masked."""

    def __init__(self):
        super().__init__(TEXT_FORMAT)

    def format(self, record):
        return redact(super().format(record))


def setup(level, fmt="text", process="duckstage", stream=None):
    """Send every log record to stderr in ``fmt`` (text or json) at ``level``; replaces earlier handlers."""
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter(process) if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, str(level).upper(), logging.INFO))
    return handler
