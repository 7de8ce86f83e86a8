"""Fixtures for the loader: every warehouse backend, a real configuration, sealed files, and no thread left behind.

Each test runs once per backend of ``BACKENDS`` (ids ``[duckdb]``,
``[ducklake-sqlite]``, ``[ducklake-postgres]``). A test about something only
one backend has says so with ``@pytest.mark.backends(name..., reason=...)``;
the reason is required, and shows in the code. The DuckLake's own tests
(``test_lake_*.py``) are not parametrised: they choose their catalogs themselves.
"""

import threading

import pytest

from tests.helpers import eventually
from tests.loader.helpers import BACKENDS, DUCKDB, LAKE_POSTGRES, Backend, Stage, loader_config, using


def pytest_configure(config):
    config.addinivalue_line("markers", "backends(*names, reason): run this loader test on those backends only"
                                       f" (of {', '.join(BACKENDS)}), for the reason given")


def pytest_generate_tests(metafunc):
    if "backend" not in metafunc.fixturenames or metafunc.module.__name__.rpartition(".")[2].startswith("test_lake_"):
        return  # the DuckLake's own tests (test_lake_*.py) choose their catalogs themselves
    mark = metafunc.definition.get_closest_marker("backends")
    names = BACKENDS
    if mark is not None:
        names = mark.args
        unknown = [n for n in names if n not in BACKENDS]
        if unknown or not names or not mark.kwargs.get("reason"):
            raise pytest.UsageError(f"{metafunc.definition.nodeid}: backends() takes names of {BACKENDS}"
                                    f" and a reason=, got {names} {mark.kwargs}")
    metafunc.parametrize("backend", names, indirect=True)


@pytest.fixture(autouse=True)
def backend(request):
    """The test's warehouse backend: what ``loader_config`` and ``write_loader_config`` configure."""
    name = getattr(request, "param", DUCKDB)
    if name == LAKE_POSTGRES:
        chosen = Backend(name, request.getfixturevalue("postgres_db"), request.getfixturevalue("postgres_server"))
    else:
        chosen = Backend(name)
    with using(chosen):
        yield chosen
    chosen.close()


@pytest.fixture
def config(tmp_path, backend):
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
