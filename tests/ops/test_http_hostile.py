"""The ops endpoint against clients that do not play along, over real sockets.

A probe must answer while other clients sit idle, trickle, send too much, read
too slowly or hang up; and stopping must never wait for any of them.
"""

import dataclasses
import logging
import re
import signal
import socket
import struct
import threading
import time

import pytest
from prometheus_client.core import GaugeMetricFamily

from duckstage.ops import Limits, OpsServer, StatusCollector
from tests.helpers import REPO, answers, free_port, get, wait_for, write_config

DOC = REPO / "docs/endpoints.md"
BIG = 16 * 1024 * 1024  # more than loopback's socket buffers hold (4 MiB send + what the client allows)


def families(status):
    """One gauge; its label is ``status["blob"]`` characters long, to make the body as big as a test needs."""
    g = GaugeMetricFamily("duckstage_test_blob", "a body of a chosen size", labels=["blob"])
    g.add_metric(["x" * status["blob"]], 1)
    yield g


def connection_threads(process="t"):
    return [t for t in threading.enumerate() if t.name == f"{process}-http-connection"]


@pytest.fixture
def serve():
    """Start a real OpsServer on a free port; stop it (and its clients) after the test."""
    started, clients = [], []

    def _serve(limits=Limits(), blob=10, health=lambda: []):
        ops = OpsServer("127.0.0.1", 0, StatusCollector(lambda: {"blob": blob}, families), health, lambda: [],
                        "t", limits=limits).start()
        started.append(ops)
        ops.port = int(ops.address.rsplit(":", 1)[1])
        ops.clients = clients
        return ops

    yield _serve
    for s in clients:
        s.close()
    for ops in started:
        ops.stop()
    assert not connection_threads(), "connection threads left after stop()"


def connect(ops, send=b"", rcvbuf=None):
    s = socket.socket()
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)  # before connect: it sets the window
    s.settimeout(10)
    s.connect(("127.0.0.1", ops.port))
    ops.clients.append(s)
    if send:
        s.sendall(send)
    return s


def read_all(s, timeout=10):
    """Everything the server sends until it closes the connection."""
    s.settimeout(timeout)
    out = b""
    while True:
        try:
            chunk = s.recv(65536)
        except ConnectionResetError:
            return out
        if not chunk:
            return out
        out += chunk


def exchange(ops, request):
    """(status code, headers lower-cased, body) of one raw request."""
    raw = read_all(connect(ops, request))
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict((k.lower(), v.strip()) for k, _, v in (line.partition(":") for line in lines[1:]))
    return int(lines[0].split()[1]), headers, body


def reset(s):
    """Close with a TCP reset, as a client killed mid-read does."""
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()


def idle_clients(port):
    """Clients that connect and then stall: silent, half a request line, headers never ended."""
    out = []
    for send in (b"", b"", b"GET /hea", b"GET /healthz HTTP/1.1\r\nHost: x\r\n"):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(send)
        out.append(s)
    return out


def test_probes_answer_while_clients_sit_idle(serve):
    ops = serve()
    ops.clients.extend(idle_clients(ops.port))
    for path in ("/healthz", "/readyz", "/metrics"):
        code, _ = get(ops.port, path, timeout=2)
        assert code == 200, path


def test_stop_ends_open_connections_instead_of_waiting_for_their_clients(serve):
    ops = serve(Limits(read_timeout=60))
    held = idle_clients(ops.port)
    ops.clients.extend(held)
    wait_for(lambda: len(connection_threads()) == len(held), message="every idle client on its own thread")

    stopper = threading.Thread(target=ops.stop)
    stopper.start()
    stopper.join(10)  # the clients would hold it for 60 s
    assert not stopper.is_alive(), "stop() waited for idle clients"
    assert not connection_threads()
    assert not answers(ops.port)
    for s in held:  # still connected from their side, closed from ours, half requests unanswered
        assert read_all(s, timeout=5) == b""


def test_a_silent_or_trickling_client_is_cut_off_at_the_read_deadline(serve):
    ops = serve(Limits(read_timeout=1))
    silent = connect(ops)
    trickler = connect(ops, b"GET /healthz HTTP/1.0\r\n")
    done = threading.Event()

    def trickle():  # one byte every 0.1 s for 60 s: a per-read timeout would never fire
        for _ in range(600):
            if done.wait(0.1):
                return
            try:
                trickler.send(b"a")
            except OSError:
                return

    feeder = threading.Thread(target=trickle)
    started = time.monotonic()
    feeder.start()
    try:
        assert read_all(silent).startswith(b"HTTP/1.0 408 ")
        assert read_all(trickler, timeout=60).startswith(b"HTTP/1.0 408 ")
        # read_timeout is 1 s; the margin is for a loaded machine, far below the 60 s of trickle.
        assert time.monotonic() - started < 30, "the trickling client held its connection"
    finally:
        done.set()
        feeder.join()


def test_connections_beyond_the_limit_are_answered_503_not_given_threads(serve):
    ops = serve(Limits(connections=3, read_timeout=30))
    held = [connect(ops) for _ in range(3)]
    wait_for(lambda: len(connection_threads()) == 3, message="three connections served")
    for _ in range(10):
        code, headers, body = exchange(ops, b"GET /healthz HTTP/1.0\r\n\r\n")
        assert code == 503 and b"busy" in body and headers["retry-after"] == "1"
    assert len(connection_threads()) == 3

    held.pop().close()  # one hangs up: its thread ends and the next probe is served
    wait_for(lambda: exchange(ops, b"GET /healthz HTTP/1.0\r\n\r\n")[0] == 200, message="a free slot")


def test_oversized_request_lines_and_headers_are_refused(serve):
    limits = Limits()
    ops = serve(limits)
    code, _, body = exchange(ops, b"GET /" + b"a" * 100_000 + b" HTTP/1.0\r\n\r\n")
    assert code == 414 and b"8192" in body
    many = b"".join(b"X-%d: %s\r\n" % (i, b"v" * 1000) for i in range(50))  # each line fine, 50 KB in all
    code, _, body = exchange(ops, b"GET /healthz HTTP/1.0\r\n" + many + b"\r\n")
    assert code == 431 and b"32768" in body
    code, _, _ = exchange(ops, b"GET /healthz HTTP/1.0\r\nX-Long: " + b"v" * 70_000 + b"\r\n\r\n")
    assert code == 431
    # Headers just under the limit are served.
    fits = b"".join(b"X-%d: %s\r\n" % (i, b"v" * 1000) for i in range(20))
    assert exchange(ops, b"GET /healthz HTTP/1.0\r\n" + fits + b"\r\n")[0] == 200


def test_an_endless_request_line_is_not_read_to_its_end(serve):
    ops = serve()
    s = connect(ops)
    sent, chunk = 0, b"a" * 65536
    with pytest.raises(OSError):  # the server answers and closes long before 256 MiB
        while sent < 256 * 1024 * 1024:
            s.sendall(chunk)
            sent += len(chunk)
    assert sent < 64 * 1024 * 1024


def test_methods_other_than_get_and_head_get_405_and_unknown_paths_404(serve):
    ops = serve()
    for method in (b"POST", b"PUT", b"DELETE", b"OPTIONS", b"BREW"):
        code, headers, _ = exchange(ops, method + b" /metrics HTTP/1.0\r\nContent-Length: 0\r\n\r\n")
        assert code == 405 and headers["allow"] == "GET, HEAD", method
    code, headers, body = exchange(ops, b"HEAD /healthz HTTP/1.0\r\n\r\n")
    assert code == 200 and int(headers["content-length"]) > 0 and body == b""
    assert exchange(ops, b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n")[0] == 404
    assert exchange(ops, b"GET /healthz?verbose=1 HTTP/1.1\r\nHost: x\r\n\r\n")[0] == 200
    assert exchange(ops, b"garbage\r\n\r\n")[0] == 400


def test_a_client_that_does_not_read_its_response_is_cut_off_at_the_write_deadline(serve):
    ops = serve(Limits(connections=1, write_timeout=0.5), blob=BIG)
    stuck = connect(ops, b"GET /metrics HTTP/1.0\r\n\r\n", rcvbuf=4096)
    wait_for(lambda: exchange(ops, b"GET /healthz HTTP/1.0\r\n\r\n")[0] == 200, timeout=15,
             message="the only connection slot freed by the write deadline")
    stuck.close()


def test_a_client_hanging_up_mid_response_leaves_no_traceback(serve, capfd, caplog):
    caplog.set_level(logging.DEBUG, logger="duckstage.ops")
    ops = serve(blob=BIG)
    for _ in range(3):
        s = connect(ops, b"GET /metrics HTTP/1.0\r\n\r\n", rcvbuf=4096)
        assert s.recv(1024).startswith(b"HTTP/1.0 200 ")
        reset(s)
    wait_for(lambda: not connection_threads(), message="the connection threads to finish")
    assert get(ops.port, "/healthz")[0] == 200
    err = capfd.readouterr().err
    assert "Traceback" not in err and "BrokenPipe" not in err, err
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    assert any("went away" in r.getMessage() for r in caplog.records), caplog.text


def test_both_processes_answer_probes_past_idle_clients_and_stop_promptly(tmp_path, spawn):
    sp, lp = free_port(), free_port()
    path = write_config(tmp_path, stager={"metrics_port": sp, "status_interval": 0.2},
                        loader={"metrics_port": lp, "idle_release": 0, "rescan_interval": 0.2})
    procs = {sp: spawn("stager", path, "run"), lp: spawn("loader", path, "run")}
    wait_for(lambda: answers(sp) and answers(lp), message="both processes serving /healthz")

    held = [s for port in procs for s in idle_clients(port)]
    try:
        for port in procs:
            for probe in ("/healthz", "/readyz", "/metrics"):
                assert get(port, probe, timeout=2)[0] == 200, (port, probe)
            for _ in range(5):  # scrapers killed mid-response
                s = socket.create_connection(("127.0.0.1", port), timeout=10)
                s.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
                reset(s)
            assert get(port, "/healthz", timeout=2)[0] == 200

        started = time.monotonic()
        for p in procs.values():
            p.signal(signal.SIGTERM)
        codes = [p.wait(timeout=30) for p in procs.values()]
        assert codes == [0, 0] and time.monotonic() - started < 30
    finally:
        for s in held:
            s.close()
    for p in procs.values():
        log = p.log()
        assert "Traceback" not in log and "BrokenPipeError" not in log, log


def test_the_limits_documented_are_the_limits_in_force():
    documented = dict(re.findall(r"^\| `(\w+)` \| ([\d.]+)", DOC.read_text(), flags=re.M))
    assert documented == {f.name: f"{getattr(Limits(), f.name):g}" for f in dataclasses.fields(Limits)}
