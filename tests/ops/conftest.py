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



