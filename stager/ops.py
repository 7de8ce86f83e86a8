"""The operations endpoint of a running process: ``/metrics``, ``/healthz``, ``/readyz``.

One small HTTP server per process, off unless its ``metrics_port`` is set,
bound to 127.0.0.1 unless ``metrics_host`` says otherwise. ``/metrics`` is
rendered by the official ``prometheus_client`` from a collector that calls the
process's own ``get_status()`` at every scrape: the numbers the ``status``
command shows (from the snapshot that same ``get_status()`` writes) and the
metrics are one source, so they cannot disagree.

- ``/healthz``: 200 while the process is alive and its threads are running;
  503 naming the thread that is not.
- ``/readyz``: 200 when the process can do its work (the stager: Huey storage
  reachable, staging writable, sealing not failing; the loader: database
  openable, staging and archive writable); 503 with the reasons when not.
"""

import json
import logging
import os
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from .exceptions import PortUnavailable

log = logging.getLogger("duckstage.ops")

# End-to-end lag buckets, seconds: a batch_timeout of 30 s puts most rows
# under a minute; a loader kept away from its database shows up in the hours.
LAG_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400)


class LagHistogram:
    """Cumulative lag observations per task type, kept in a form status can carry as JSON."""

    def __init__(self, buckets=LAG_BUCKETS):
        self.buckets = tuple(buckets)
        self._lock = threading.Lock()
        self._by_type = {}

    def observe(self, task_type, seconds, n=1):
        seconds = max(0.0, float(seconds))
        with self._lock:
            h = self._by_type.setdefault(task_type, {"counts": [0] * (len(self.buckets) + 1),
                                                     "sum": 0.0, "count": 0})
            i = next((i for i, le in enumerate(self.buckets) if seconds <= le), len(self.buckets))
            h["counts"][i] += n
            h["sum"] += seconds * n
            h["count"] += n

    def snapshot(self):
        """{task type: {"buckets": [[le, cumulative count], ...], "sum": s, "count": n}}."""
        out = {}
        with self._lock:
            for task_type, h in self._by_type.items():
                running, buckets = 0, []
                for le, c in zip((*self.buckets, "+Inf"), h["counts"]):
                    running += c
                    buckets.append([le, running])
                out[task_type] = {"buckets": buckets, "sum": round(h["sum"], 3), "count": h["count"]}
        return out


def histogram_buckets(snapshot):
    """A LagHistogram snapshot's buckets as prometheus_client wants them."""
    return [(b[0] if b[0] == "+Inf" else floatToGoString(b[0]), b[1]) for b in snapshot["buckets"]]


class StatusCollector(Collector):
    """Metric families built at each scrape from ``get_status()`` by ``families(status)``."""

    def __init__(self, get_status, families):
        self.get_status = get_status
        self.families = families

    def collect(self):
        return self.families(self.get_status())


def writable(folder):
    """None if a file can be created in ``folder``, else the reason (a real write: root ignores modes)."""
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        return f"{folder} is not writable: {exc.strerror or exc}"
    return None


class OpsServer:
    """``/metrics``, ``/healthz`` and ``/readyz`` on one port, served by one daemon thread.

    ``health()`` and ``ready()`` return a list of problems: empty means 200.
    """

    def __init__(self, host, port, collector, health, ready, process):
        self.host = host
        self.port = port
        self.process = process
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(collector)
        self.health = health
        self.ready = ready
        self._server = None
        self._thread = None

    @property
    def address(self):
        return None if self._server is None else "%s:%d" % self._server.server_address[:2]

    def start(self):
        """Bind and serve; raises PortUnavailable (port taken, bad address) before any thread runs."""
        try:
            self._server = HTTPServer((self.host, self.port), self._handler())
        except OSError as exc:
            raise PortUnavailable(f"cannot serve metrics on {self.host}:{self.port}: {exc.strerror or exc}") \
                from None
        self._server.timeout = 5
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name=f"{self.process}-http", daemon=True)
        self._thread.start()
        log.info("serving /metrics, /healthz and /readyz on http://%s", self.address,
                 extra={"event": "http_started", "address": self.address})
        return self

    def is_alive(self):
        return self._thread is not None and self._thread.is_alive()

    def stop(self, timeout=5):
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout)
        self._server = self._thread = None

    def _handler(self):
        ops = self

        class Handler(BaseHTTPRequestHandler):
            server_version = "duckstage"

            def do_GET(self):  # noqa: N802 - http.server's name
                path = self.path.split("?", 1)[0]
                try:
                    if path == "/metrics":
                        encoder, content_type = choose_encoder(self.headers.get("Accept"))
                        self._send(200, encoder(ops.registry), content_type)
                    elif path in ("/healthz", "/readyz"):
                        problems = (ops.health if path == "/healthz" else ops.ready)()
                        body = {"process": ops.process, "status": "ok" if not problems else "failing",
                                "reasons": problems}
                        self._send(200 if not problems else 503, json.dumps(body).encode() + b"\n",
                                   "application/json")
                    else:
                        self._send(404, b"not found: try /metrics, /healthz or /readyz\n", "text/plain")
                except Exception as exc:  # noqa: BLE001 - a failing probe answers 500, the process goes on
                    log.exception("GET %s failed", path)
                    self._send(500, f"{type(exc).__name__}: {exc}\n".encode(), "text/plain")

            def _send(self, code, body, content_type):
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, fmt, *args):
                log.debug("http: " + fmt, *args)

        return Handler


# -- status snapshots: data/run/<process>.json, written by the running process ------


def write_snapshot(path, body):
    """Write a status snapshot atomically (temporary file, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name("." + path.name + ".tmp")
    tmp.write_text(json.dumps(body, indent=2, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def read_snapshot(path):
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def config_lines(snapshot):
    """What ``status`` says of a running process's configuration and endpoints."""
    cfg = snapshot.get("config") or {}
    lines = []
    if cfg.get("error"):
        lines.append(f"configuration edit refused, running with the previous values: {cfg['error']}")
    if cfg.get("restart_required"):
        lines.append(f"changed, takes effect after a restart: {', '.join(cfg['restart_required'])}")
    if snapshot.get("metrics_address"):
        lines.append(f"serving /metrics, /healthz, /readyz on http://{snapshot['metrics_address']}")
    return lines
