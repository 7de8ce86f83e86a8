"""Helpers for the operations tests: free ports, HTTP requests, reading Prometheus text."""

import json
import socket
import urllib.error
import urllib.request


from prometheus_client.parser import text_string_to_metric_families


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(port, path, timeout=10):
    """(status code, body text) of a real HTTP GET to 127.0.0.1:port."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def get_json(port, path):
    code, body = get(port, path)
    return code, json.loads(body)


def answers(port, path="/healthz"):
    try:
        return get(port, path, timeout=2)[0] == 200
    except OSError:
        return False


def samples(text):
    """{(sample name, frozenset of labels): value} of a /metrics body."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(text_or_samples, name, **labels):
    got = samples(text_or_samples) if isinstance(text_or_samples, str) else text_or_samples
    return got.get((name, frozenset(labels.items())), 0.0)


def hold_database(path, attempts=5):
    """The real duckdb CLI holding ``path``, proven by a query on the file's manifest table.

    Retried: a CLI that starts while someone else has the file open cannot
    take it and would otherwise sit on an in-memory database.
    """
    import select
    import subprocess

    from tests.loader.conftest import duckdb_cli

    for _ in range(attempts):
        proc = subprocess.Popen([duckdb_cli(), "-csv", "-noheader", str(path)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        proc.stdin.write("SELECT count(*) || '-held' FROM _duckstage_manifest;\n")
        proc.stdin.flush()
        ready, _, _ = select.select([proc.stdout], [], [], 20)
        if ready and "-held" in proc.stdout.readline():
            return proc
        proc.kill()
        proc.wait(10)
    raise AssertionError(f"the duckdb CLI could not hold {path}")


def release(proc):
    proc.stdin.close()
    proc.wait(10)
    proc.stdout.close()
