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

A probe must answer while another client misbehaves, so each connection is
served on its own thread, a bounded number of them, and every client is held to
deadlines and sizes (``Limits``; docs/endpoints.md) rather than trusted to
finish. Stopping the process never waits on a client.
"""

import io
import json
import logging
import os
import socket
import tempfile
import threading
import time
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Limits:
    """What one client may take from an ops endpoint; docs/endpoints.md explains each figure.

    The endpoint is shared by probes and scrapers that must never wait on each other,
    so every connection gets its own thread, and nothing a client does (send nothing,
    trickle, send megabytes, never read) can hold that thread longer than these allow.
    """

    connections: int = 16       # served at once, one thread each; one more is answered 503 and closed
    read_timeout: float = 5.0   # for the whole request line and headers, not per read
    write_timeout: float = 10.0  # for the whole response
    line_bytes: int = 8 * 1024  # request line; longer is answered 414
    head_bytes: int = 32 * 1024  # request line and headers together; more is answered 431
    linger: float = 1.0         # after a refusal, unread input is drained this long before closing


class HeadTooLarge(Exception):
    """The request line and headers passed ``Limits.head_bytes``; answered 431, never leaves this module."""


class Connection(io.RawIOBase):
    """One client socket, read and written against deadlines rather than per-call timeouts.

    A per-call timeout restarts with every byte, so a client trickling one byte every
    few seconds (slowloris) would hold its thread forever; a deadline does not. Reads
    also stop at a byte budget, which bounds the memory a request head can take.
    """

    def __init__(self, sock, budget):
        super().__init__()
        self.sock = sock
        self.budget = budget
        self.deadline = None
        self.ended = False  # the client (or stop()) closed its side

    def expire_in(self, seconds):
        self.deadline = time.monotonic() + seconds

    def _arm(self):
        """Give the next socket call what is left of the deadline."""
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("deadline passed")
        self.sock.settimeout(left)

    def readable(self):
        return True

    def writable(self):
        return True

    def readinto(self, b):
        if self.budget <= 0:
            raise HeadTooLarge()
        self._arm()
        n = self.sock.recv_into(b, min(len(b), self.budget))
        self.budget -= n
        self.ended = self.ended or n == 0
        return n

    def write(self, b):
        self._arm()
        # sendall's timeout bounds the whole call (Python >= 3.5), so it cannot be trickled either.
        self.sock.sendall(b)
        return len(b)


def linger(sock, seconds, limit=1 << 20):
    """Half-close ``sock``, then read and drop what the client still sends, for up to ``seconds``.

    Closing a socket with unread input resets the connection, and the reset can destroy
    an answer (a 414, a 431) before the client has read it; Apache drains for the same reason.
    """
    try:
        sock.shutdown(socket.SHUT_WR)
        end = time.monotonic() + seconds
        while limit > 0:
            left = end - time.monotonic()
            if left <= 0:
                break
            sock.settimeout(left)
            chunk = sock.recv(65536)
            if not chunk:
                break
            limit -= len(chunk)
    except OSError:  # timed out, reset, or shut down by stop(): nothing more to read either way
        pass


class Handler(BaseHTTPRequestHandler):
    """One request per connection (HTTP/1.0): GET or HEAD of /metrics, /healthz, /readyz."""

    server_version = "duckstage"
    # HTTP/0.9 answers have no status line; nobody speaks it, and a refusal without a code helps no one.
    default_request_version = "HTTP/1.0"
    error_content_type = "text/plain; charset=utf-8"
    error_message_format = "%(code)d %(message)s\n"

    def setup(self):
        limits = self.server.limits
        self.connection = self.request
        self.channel = Connection(self.request, limits.head_bytes)
        self.channel.expire_in(limits.read_timeout)
        self.rfile = io.BufferedReader(self.channel)
        self.wfile = self.channel

    def handle(self):
        try:
            self.handle_one_request()
        except OSError as exc:  # hung up, reset, stopped reading, or cut off by stop(): the client's business
            log.debug("http: client %s went away: %s", self.address_string(), exc)

    def handle_one_request(self):
        limits = self.server.limits
        self.close_connection = True
        self.requestline = self.command = ""
        self.request_version = self.default_request_version
        try:
            self.raw_requestline = self.rfile.readline(limits.line_bytes + 1)
            if not self.raw_requestline:
                return  # connected and closed without a word
            if len(self.raw_requestline) > limits.line_bytes:
                return self._refuse(414, f"request line longer than {limits.line_bytes} bytes")
            parsed = self.parse_request()  # reads the headers; answers its own 400, 431, 505
        except HeadTooLarge:
            return self._refuse(431, f"request line and headers longer than {limits.head_bytes} bytes")
        except TimeoutError:
            return self._refuse(408, f"request not received within {limits.read_timeout:g} s")
        self.channel.expire_in(limits.write_timeout)
        if not parsed:
            return
        if self.channel.ended:  # cut off before the blank line: half a request is not answered
            log.debug("http: client %s closed in the middle of its request", self.address_string())
            return
        if self.command not in ("GET", "HEAD"):
            return self._send(405, b"method not allowed: GET or HEAD\n", "text/plain",
                              headers={"Allow": "GET, HEAD"})
        self._answer(self.path.split("?", 1)[0])

    def _answer(self, path):
        """Build the whole answer first, so that only the client can fail while it is sent."""
        try:
            code, body, content_type = self._render(path)
        except Exception as exc:  # noqa: BLE001 - a failing probe answers 500, the process goes on
            log.exception("%s %s failed", self.command, path)
            code, body, content_type = 500, f"{type(exc).__name__}: {exc}\n".encode(), "text/plain"
        self._send(code, body, content_type)

    def _render(self, path):
        ops = self.server.ops
        if path == "/metrics":
            encoder, content_type = choose_encoder(self.headers.get("Accept"))
            return 200, encoder(ops.registry), content_type
        if path in ("/healthz", "/readyz"):
            problems = (ops.health if path == "/healthz" else ops.ready)()
            body = {"process": ops.process, "status": "ok" if not problems else "failing", "reasons": problems}
            return 200 if not problems else 503, json.dumps(body).encode() + b"\n", "application/json"
        return 404, b"not found: try /metrics, /healthz or /readyz\n", "text/plain"

    def _refuse(self, code, reason):
        """Answer a request that was not (fully) read, then drain before closing."""
        self.channel.expire_in(self.server.limits.write_timeout)
        self._send(code, reason.encode() + b"\n", "text/plain")
        linger(self.request, self.server.limits.linger)

    def _send(self, code, body, content_type, headers=None):
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, fmt, *args):
        log.debug("http: " + fmt, *args)


class BoundedServer(HTTPServer):
    """An HTTPServer serving each connection on its own thread, at most ``limits.connections`` at once.

    The accept loop never waits on a client: one connection too many is answered 503
    and closed right there, and stop() ends the connections still open instead of
    waiting for their clients.
    """

    request_queue_size = 64  # a burst of probes waits in the backlog instead of having its SYNs dropped

    def __init__(self, address, ops, limits):
        self.ops = ops
        self.limits = limits
        self._slots = threading.BoundedSemaphore(limits.connections)
        self._lock = threading.Lock()
        self._open = {}  # socket -> the thread serving it
        self._threads = set()  # every connection thread not yet joined, including one past its close
        super().__init__(address, Handler)

    def process_request(self, request, client_address):
        if not self._slots.acquire(blocking=False):
            self._turn_away(request)
            return
        thread = threading.Thread(target=self._serve, args=(request, client_address), daemon=True,
                                  name=f"{self.ops.process}-http-connection")
        with self._lock:
            self._open[request] = thread
            self._threads = {t for t in self._threads if t.is_alive()}
            self._threads.add(thread)
        try:
            thread.start()
        except RuntimeError:  # no thread to be had: as busy as can be
            with self._lock:
                del self._open[request]
                self._threads.discard(thread)
            self._slots.release()
            self._turn_away(request)

    def _serve(self, request, client_address):
        try:
            self.finish_request(request, client_address)
        except Exception:  # noqa: BLE001 - one bad connection must not end the endpoint
            self.handle_error(request, client_address)
        finally:
            with self._lock:  # before the close, so hang_up() never shuts down a reused descriptor
                self._open.pop(request, None)
            self.shutdown_request(request)
            self._slots.release()

    def _turn_away(self, request):
        body = f"busy: {self.limits.connections} connections open, try again\n".encode()
        head = (f"HTTP/1.0 503 Service Unavailable\r\nServer: duckstage\r\nContent-Type: text/plain\r\n"
                f"Content-Length: {len(body)}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n").encode()
        try:
            request.setblocking(False)  # the accept loop must not wait; a fresh socket takes this whole
            request.send(head + body)
            for _ in range(16):  # drop what already arrived, so the close does not reset the answer
                if not request.recv(65536):
                    break
        except OSError:  # nothing more to read now (or the client is gone): close either way
            pass
        self.shutdown_request(request)

    def handle_error(self, request, client_address):
        # socketserver would print the traceback to stderr; it belongs in the log.
        log.error("http: error serving %s", client_address, exc_info=True)

    def hang_up(self, grace):
        """End every open connection: waiting for a request at once, writing a response within ``grace`` s."""
        with self._lock:
            for sock in self._open:
                _shutdown(sock, socket.SHUT_RD)  # a thread blocked reading returns at once
            # A thread whose client already hung up may still be closing its socket: join it too.
            threads = list(self._threads)
        deadline = time.monotonic() + grace
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            for sock in self._open:
                _shutdown(sock, socket.SHUT_RDWR)  # a client that does not read stops holding a write
            threads = [t for t in self._threads if t.is_alive()]
        deadline = time.monotonic() + 1.0
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))


def _shutdown(sock, how):
    try:
        sock.shutdown(how)
    except OSError:  # already closed by its client
        pass


class OpsServer:
    """``/metrics``, ``/healthz`` and ``/readyz`` on one port: an accept thread and a thread per connection.

    ``health()`` and ``ready()`` return a list of problems: empty means 200.
    """

    def __init__(self, host, port, collector, health, ready, process, limits=Limits()):
        self.host = host
        self.port = port
        self.process = process
        self.limits = limits
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
            self._server = BoundedServer((self.host, self.port), self, self.limits)
        except OSError as exc:
            raise PortUnavailable(f"cannot serve metrics on {self.host}:{self.port}: {exc.strerror or exc}") \
                from None
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name=f"{self.process}-http", daemon=True)
        self._thread.start()
        log.info("serving /metrics, /healthz and /readyz on http://%s", self.address,
                 extra={"event": "http_started", "address": self.address})
        return self

    def is_alive(self):
        return self._thread is not None and self._thread.is_alive()

    def stop(self, grace=2.0):
        """Stop accepting, then end the open connections; never waits on a client beyond ``grace`` s."""
        if self._server is None:
            return
        self._server.shutdown()  # the accept loop never blocks on a client, so this returns within 0.2 s
        self._server.server_close()
        self._server.hang_up(grace)
        self._thread.join(grace)
        self._server = self._thread = None


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
