"""duckstage's loader: sealed Parquet files in ``staging/`` -> the warehouse, each merged once.

``Loader(config)`` runs it inside an application (``start``, ``stop``,
``get_status``, ``run_once``); ``loader run`` is the same thing as a process.
``connect()`` opens the warehouse for a reader (a notebook), on any backend.
"""

from .service import Loader


def connect(config_path=None, read_only=True):
    """A DuckDB connection on the warehouse the configuration names, read-only by default.

    ``config_path`` as for every command (else ``$DUCKSTAGE_CONFIG``, else
    ``config/duckstage.yaml``). On a DuckLake the catalog is attached as
    ``lake`` and in use, with the extensions from the installed packages; on
    a DuckDB file, opening fails while a loader holds it.
    """
    from duckstage.config import load_config

    from .lake import connect as open_warehouse

    return open_warehouse(load_config(config_path).loader.database, read_only=read_only)


__all__ = ["Loader", "connect"]
