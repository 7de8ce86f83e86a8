import pytest

from duckstage.config import load_config
from tests.helpers import write_config

# Short enough for a test to see a dead stager's tasks come back, long enough for a loaded
# machine to renew a live one's heartbeat (three times per timeout).
TEST_LEASE_TIMEOUT = 2


@pytest.fixture
def make_config(tmp_path):
    def _make(**sections):
        path = write_config(tmp_path, **sections)
        return path, load_config(path)

    return _make


@pytest.fixture(params=["sqlite", "redis"])
def make_queue_config(request, make_config):
    """``make_config`` on each queue backend: a test that uses it runs on SQLite and on Redis.

    The Redis one is a database of its own on the tests' real server (tests/servers.py).
    """
    if request.param == "sqlite":
        return make_config
    redis_db = request.getfixturevalue("redis_db")

    def _make(huey=None, **sections):
        return make_config(huey={"backend": "redis", "url": redis_db.url, "lease_timeout": TEST_LEASE_TIMEOUT,
                                 **(huey or {})}, **sections)

    return _make
