import pytest

from duckstage.config import load_config
from tests.helpers import write_config


@pytest.fixture
def make_config(tmp_path):
    def _make(**sections):
        path = write_config(tmp_path, **sections)
        return path, load_config(path)

    return _make
