"""Fixtures shared by every test: real subprocesses and the producer side of a real SqliteHuey file."""

import pytest

from tests.helpers import Process

# Real PostgreSQL and Redis servers, started only by the tests that ask for them.
pytest_plugins = ["tests.servers"]


@pytest.fixture
def spawn():
    started = []

    def _spawn(module, config_path, *args, env=None):
        p = Process(module, config_path, *args, env=env)
        started.append(p)
        return p

    yield _spawn
    for p in started:
        p.close()


@pytest.fixture
def producer():
    """The producer side: process_fetched_data bound to a config's Huey file (closed after the test)."""
    from stager.tasks import build_huey

    opened = []

    def _producer(config):
        huey, task = build_huey(config)
        opened.append(huey)
        return task

    yield _producer
    for huey in opened:
        huey.storage.close()
