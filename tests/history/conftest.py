"""Every history test runs on the three warehouse backends: a DuckDB file, a DuckLake with its
catalog in SQLite, and one with its catalog in a real PostgreSQL server (never skipped)."""

import pytest

from loader.warehouse import Warehouse
from tests.loader.helpers import Stage, loader_config

BACKENDS = ("duckdb", "ducklake-sqlite", "ducklake-postgres")


@pytest.fixture(params=BACKENDS)
def database(request):
    """``loader.database`` of the backend under test."""
    if request.param == "duckdb":
        return "warehouse.duckdb"
    if request.param == "ducklake-sqlite":
        return "ducklake:sqlite:catalog.sqlite"
    return "ducklake:postgres:" + request.getfixturevalue("postgres_db").conninfo


@pytest.fixture
def config(tmp_path, database):
    return loader_config(tmp_path, database=database)


@pytest.fixture
def stage(config):
    return Stage(config)



@pytest.fixture
def warehouse(config):
    """The configuration's warehouse, open for the test (loads and reads share it)."""
    wh = Warehouse(config.loader.database).open()
    yield wh
    wh.close()
