"""Where the stager's work comes from: the Huey queue, or the Huey result store.

Both hand out ``Claim`` objects and take them back with ``ack`` once every row
of the claim is sealed or dead-lettered; nothing is deleted from Huey before.
``release`` gives back claims the stager could not keep (their dead-letter
rows could not be written): they are handed out again, with no restart.

- ``QueueSource`` (``run_huey_consumer: true``): leases the next tasks from
  the queue and runs ``process_fetched_data`` on the calling worker thread.
- ``ResultSource`` (``run_huey_consumer: false``): the producer runs its own
  Huey consumer; results are read a page at a time, claimed one by one and
  deleted after the seal. Results that are not ``TaskResult`` objects belong
  to someone else: they are counted and left alone.

Both recover what earlier (or, on Redis, dead) stager instances held, and
``keep_alive`` renews the heartbeat on storages that have one (Redis).
"""

import logging
import pickle
import threading
import traceback
from dataclasses import dataclass

from huey.exceptions import HueyException

from duckstage.staging import utcnow

from .results import TaskResult
from .tasks import TASK_NAME

log = logging.getLogger(__name__)


@dataclass
class Claim:
    result: TaskResult
    token: object  # what ``ack`` needs: a lease id or a result key


class QueueSource:
    kind = "queue"
    LEASE_BATCH = 8  # tasks leased per SQLite transaction

    def __init__(self, huey, instance):
        self.huey = huey
        self.storage = huey.storage
        self.instance = instance

    def recover(self):
        """Put tasks leased by earlier instances back in the queue."""
        return self.storage.requeue_orphans(self.instance)

    def keep_alive(self):
        """Renew this instance's heartbeat; return to the queue what dead instances held (the count)."""
        return self.storage.beat(self.instance)

    def claim_many(self):
        """The tasks of one lease transaction (up to LEASE_BATCH), executed: a list of Claims."""
        leased = self.storage.lease(self.instance, self.LEASE_BATCH)
        return [self._run(lease_id, data) for lease_id, data in leased]

    def _run(self, lease_id, data):
        try:
            task = self.huey.deserialize_task(data)
        except (HueyException, pickle.UnpicklingError, AttributeError, ImportError, EOFError,
                TypeError, ValueError) as exc:
            return Claim(self._foreign(data, f"cannot read queued task: {exc}"), lease_id)
        if task.name != TASK_NAME:
            return Claim(self._foreign(data, f"task {task.name} is not {TASK_NAME}", task.id), lease_id)
        try:
            result = task.execute()
        except Exception as exc:  # noqa: BLE001 - a task that raised is dead-lettered, not lost
            args, kwargs = task.data
            result = TaskResult(
                str(args[0]) if args else str(kwargs.get("task_type")),
                [{"args": args[1:], "kwargs": kwargs}], dict(kwargs), utcnow(), task.id,
                f"process_fetched_data raised {type(exc).__name__}: {exc}\n{traceback.format_exc(limit=3)}")
        if not isinstance(result, TaskResult):
            result = self._foreign(data, f"{TASK_NAME} returned {type(result).__name__}", task.id)
        return Claim(result, lease_id)

    def _foreign(self, data, reason, task_id=None):
        log.error("dead-lettering a queue entry the stager cannot run: %s", reason)
        return TaskResult("", [{"message": bytes(data)}], {}, utcnow(), task_id, reason)

    def ack(self, tokens):
        self.storage.ack(tokens)

    def release(self, tokens):
        self.storage.release(tokens)

    def backlog(self):
        return {"queued_tasks": self.storage.queue_size(), "leased_tasks": self.storage.lease_count()}


class ResultSource:
    kind = "results"
    PAGE = 200
    LEASE_BATCH = 16  # results claimed at a time
    MAX_FOREIGN_KEYS = 100_000

    def __init__(self, huey, instance):
        self.huey = huey
        self.storage = huey.storage
        self.instance = instance
        self._lock = threading.Lock()
        self._page = []
        self._cursor = None  # where the next page starts; None: at the start of a pass
        self._in_pass = False
        self._claimed = {}  # token -> key, handed out and not yet acknowledged
        self._claimed_keys = set()
        self._done = set()  # keys acknowledged during this pass: a cursor may return a key twice
        self._foreign = set()  # keys seen that are not ours: never touched
        self.foreign_results = 0

    def recover(self):
        """Put results claimed by earlier (on Redis: dead) instances back in the store."""
        return self.storage.requeue_orphans(self.instance)

    def keep_alive(self):
        return self.storage.beat(self.instance)

    def claim_many(self):
        claims = []
        while len(claims) < self.LEASE_BATCH and (claim := self._claim_one()) is not None:
            claims.append(claim)
        return claims

    def _claim_one(self):
        with self._lock:
            while True:
                if not self._page:
                    if self._in_pass and self._cursor is None:
                        self._in_pass = False  # the next call starts a new pass over the store
                        self._done.clear()
                        return None
                    self._page, self._cursor = self.storage.scan_results(self._cursor, self.PAGE)
                    self._in_pass = True
                    continue
                key, value = self._page.pop(0)
                if key in self._done or key in self._foreign or key in self._claimed_keys:
                    continue
                result = self._ours(value)
                if result is None:
                    self._note_foreign(key)
                    continue
                token = self.storage.claim_result(self.instance, key)
                if token is None:
                    continue  # another stager claimed it first
                self._claimed[token] = key
                self._claimed_keys.add(key)
                if result.task_id is None:
                    result.task_id = key
                return Claim(result, token)

    def _ours(self, value):
        try:
            obj = self.huey.serializer.deserialize(bytes(value))
        except Exception:  # noqa: BLE001 - another application's pickle may not load here
            return None
        return obj if isinstance(obj, TaskResult) else None

    def _note_foreign(self, key):
        if len(self._foreign) < self.MAX_FOREIGN_KEYS:
            self._foreign.add(key)
        self.foreign_results += 1
        log.debug("leaving result %s alone: not a %s result", key, TASK_NAME)

    def ack(self, tokens):
        self.storage.ack_results(tokens)
        with self._lock:
            for t in tokens:
                if (key := self._claimed.pop(t, None)) is not None:
                    self._claimed_keys.discard(key)
                    self._done.add(key)

    def release(self, tokens):
        self.storage.release_results(tokens)  # back in the store: claimed again on a later pass
        with self._lock:
            for t in tokens:
                self._claimed_keys.discard(self._claimed.pop(t, None))

    def backlog(self):
        return {"result_store": self.storage.result_store_size(),
                "claimed_results": len(self._claimed),
                "foreign_results": len(self._foreign)}
