"""duckstage's stager: Huey results -> validated, cleaned, sealed Parquet files.

The producer contract (docs/design.md): ``TaskType``, ``TaskResult``, and the Huey
task ``stager.tasks.process_fetched_data``, which raises ``UnknownTaskType`` (a
ValueError) at enqueue for a task type the datasets file does not declare, and
``QueueUnavailable`` when the Redis queue cannot be reached or is full.
"""

from .exceptions import ConfigError, QueueUnavailable, UnknownTaskType
from .results import TaskResult, TaskType

__all__ = ["TaskType", "TaskResult", "UnknownTaskType", "QueueUnavailable", "ConfigError", "Stager"]


def __getattr__(name):
    # Stager pulls in threads and Huey storage; producers that only need the
    # contract should not pay for it at import time.
    if name == "Stager":
        from .service import Stager

        return Stager
    raise AttributeError(name)
