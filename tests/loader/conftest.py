"""Fixtures for the loader: a real configuration, sealed files, and no thread left behind."""

import threading

import pytest

from tests.helpers import eventually
from tests.loader.helpers import Stage, loader_config


@pytest.fixture
def config(tmp_path):
    return loader_config(tmp_path)


@pytest.fixture
def stage(config):
    return Stage(config)


@pytest.fixture(autouse=True)
def no_leaked_threads():
    before = set(threading.enumerate())
    yield
    assert eventually(lambda: not [t for t in threading.enumerate() if t not in before and t.is_alive()], 10), \
        [t.name for t in threading.enumerate() if t not in before]
