import pytest

from stager.config import load_config
from stager.tasks import build_huey
from tests.conftest import write_config


@pytest.fixture
def make_config(tmp_path):
    def _make(**sections):
        path = write_config(tmp_path, **sections)
        return path, load_config(path)

    return _make


@pytest.fixture
def producer():
    """The producer side: process_fetched_data bound to a config's Huey file."""
    opened = []

    def _producer(config):
        huey, task = build_huey(config)
        opened.append(huey)
        return task

    yield _producer
    for huey in opened:
        huey.storage.close()
