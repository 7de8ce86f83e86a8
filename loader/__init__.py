"""duckstage's loader: sealed Parquet files in ``staging/`` -> DuckDB, each merged once.

``Loader(config)`` runs it inside an application (``start``, ``stop``,
``get_status``, ``run_once``); ``loader run`` is the same thing as a process.
"""

from .service import Loader

__all__ = ["Loader"]
