"""Huey storage with an acknowledged hand-off.

Huey's SqliteStorage deletes a task the moment a worker dequeues it, and a
result the moment it is read without ``peek``. Either would lose rows if the
stager died before sealing them. ``LeasingSqliteStorage`` adds:

- ``lease(owner)``: record a lease on the next tasks in the ``duckstage_lease``
  table, in one exclusive SQLite transaction, instead of deleting them; a
  leased task stays in Huey's ``task`` table (no copy of its data is written)
  but is no longer handed out or counted as queued;
- ``ack(lease_ids)``: delete the tasks and their leases once their rows are
  sealed (or dead-lettered);
- ``release(lease_ids)``: drop leases and keep the tasks, which are handed out
  again (work the stager could not keep, e.g. with the dead letter's disk full);
- ``requeue_orphans(owner)``: at start-up, drop the leases of earlier (crashed)
  stager instances, so their tasks run again;
- ``scan_results`` / ``claim_result`` / ``ack_results``: read the result store
  a page at a time, by key, and delete only the results the stager has sealed.

Huey's own ``dequeue`` skips leased tasks and is otherwise unchanged, so a
producer's consumer that uses this storage behaves as with SqliteStorage.

``huey.backend: redis`` uses ``LeasingRedisStorage`` (stager.queue_redis), with
the same methods for several stagers at once; ``build_storage_huey`` picks one.
One stager serves a SQLite file, so leases here need no heartbeat
(``beat_interval`` is None): those of an earlier instance are released at start.
"""

import sqlite3
import time

from huey import Huey
from huey.storage import SqliteStorage

from .queue_redis import REDIS_FULL, REDIS_UNREACHABLE, LeasingRedisStorage

# What the Huey storage raises when it is busy, full or out of reach: wait and try again, lose nothing.
STORAGE_ERRORS = (sqlite3.Error, *REDIS_UNREACHABLE, *REDIS_FULL)
# Client-side limits for Redis: a host that vanishes without closing the connection must not hang
# a stager for good. Above the 1 s blocking read of Huey's own consumer (huey_consumer).
REDIS_SOCKET_TIMEOUT = 15
REDIS_CONNECT_TIMEOUT = 5


class LeasingSqliteStorage(SqliteStorage):
    """SqliteStorage plus leases. ``synchronous`` overrides ``fsync`` per connection:
    the stager uses NORMAL (in WAL mode a commit survives a crash of the
    process; at power loss the last leases and acks may roll back, which only
    re-runs tasks), producers keep FULL so an enqueued task survives power loss.
    """

    table_lease = (
        "create table if not exists duckstage_lease ("
        "id integer not null primary key autoincrement, queue text not null, "
        "task_id integer not null unique, owner text not null, leased_at real not null)"
    )
    ddl = SqliteStorage.ddl + [table_lease]
    beat_interval = None  # no heartbeat: one stager per file
    _free = "queue = ? and id not in (select task_id from duckstage_lease)"

    def __init__(self, *args, synchronous=None, **kwargs):
        self._synchronous = synchronous
        super().__init__(*args, **kwargs)

    def _create_connection(self):
        conn = super()._create_connection()
        if self._synchronous:
            conn.execute("pragma synchronous=%s" % self._synchronous)
        return conn

    def lease(self, owner, limit=1):
        """Lease up to ``limit`` tasks in one transaction: a list of ``(lease_id, data)``."""
        if not self.sql(f"select 1 from task where {self._free} limit 1", (self.name,), results=True):
            return []
        leased = []
        with self.db(commit=True) as curs:
            curs.execute(f"select id, data from task where {self._free} "
                         "order by priority desc, id limit ?", (self.name, limit))
            now = time.time()
            for tid, data in curs.fetchall():
                curs.execute("insert into duckstage_lease (queue, task_id, owner, leased_at) "
                             "values (?, ?, ?, ?)", (self.name, tid, owner, now))
                leased.append((curs.lastrowid, data))
        return leased

    def ack(self, lease_ids):
        lease_ids = list(lease_ids)
        for i in range(0, len(lease_ids), 500):
            chunk = lease_ids[i:i + 500]
            marks = ",".join("?" * len(chunk))
            with self.db(commit=True) as curs:
                curs.execute(f"delete from task where id in (select task_id from duckstage_lease "
                             f"where id in ({marks}))", chunk)
                curs.execute(f"delete from duckstage_lease where id in ({marks})", chunk)

    def release(self, lease_ids):
        """Drop leases without deleting their tasks: the tasks are handed out again."""
        lease_ids = list(lease_ids)
        for i in range(0, len(lease_ids), 500):
            chunk = lease_ids[i:i + 500]
            self.sql(f"delete from duckstage_lease where id in ({','.join('?' * len(chunk))})", chunk, commit=True)

    def requeue_orphans(self, owner):
        """Release leases not held by ``owner``, so their tasks run again; the count released."""
        with self.db(commit=True) as curs:
            curs.execute("delete from duckstage_lease where queue = ? and owner != ?", (self.name, owner))
            return curs.rowcount

    def dequeue(self):
        # Huey's dequeue, minus tasks the stager holds a lease on.
        if not self.sql(f"select 1 from task where {self._free} limit 1", (self.name,), results=True):
            return None
        with self.db(commit=True) as curs:
            curs.execute(f"select id, data from task where {self._free} "
                         "order by priority desc, id limit 1", (self.name,))
            row = curs.fetchone()
            if row is not None:
                curs.execute("delete from task where id = ?", (row[0],))
                return row[1]
        return None

    def queue_size(self):
        return self.sql(f"select count(id) from task where {self._free}", (self.name,), results=True)[0][0]

    def lease_count(self):
        return self.sql("select count(*) from duckstage_lease where queue = ?",
                        (self.name,), results=True)[0][0]

    def scan_results(self, cursor, limit):
        """A page of the result store, by key: ``([(key, value), ...], next cursor or None at the end)``."""
        page = self.sql("select key, value from kv where queue = ? and key > ? order by key limit ?",
                        (self.name, cursor or "", limit), results=True)
        return page, (page[-1][0] if len(page) == limit else None)

    def claim_result(self, owner, key):
        """The token ``ack_results`` takes: the key itself (one stager per file, nothing to record)."""
        return key

    def ack_results(self, keys):
        self.delete_results(keys)

    def release_results(self, keys):
        pass  # never moved: the next pass over the store finds them again

    def delete_results(self, keys):
        keys = list(keys)
        for i in range(0, len(keys), 500):
            chunk = keys[i:i + 500]
            self.sql("delete from kv where queue = ? and key in (%s)" % ",".join("?" * len(chunk)),
                     (self.name, *chunk), commit=True)


def build_storage_huey(huey_config, synchronous=None, huey_class=Huey, **storage_options):
    """A Huey instance (of ``huey_class``) on the leasing storage ``huey_config`` describes.

    ``synchronous`` is for SQLite only; ``storage_options`` go to the storage (tests pass a ``clock``).
    """
    if huey_config.backend == "redis":
        from redis import ConnectionPool

        # Options in the URL (?socket_timeout=...) take precedence over these.
        pool = ConnectionPool.from_url(huey_config.url, socket_timeout=REDIS_SOCKET_TIMEOUT,
                                       socket_connect_timeout=REDIS_CONNECT_TIMEOUT)
        return huey_class(
            huey_config.name,
            storage_class=LeasingRedisStorage,
            connection_pool=pool,
            lease_timeout=huey_config.lease_timeout,
            location=huey_config.location,
            utc=True,
            **storage_options,
        )
    huey_config.path.parent.mkdir(parents=True, exist_ok=True)
    return huey_class(
        huey_config.name,
        storage_class=LeasingSqliteStorage,
        filename=str(huey_config.path),
        fsync=huey_config.fsync,
        synchronous=synchronous,
        utc=True,
        **storage_options,
    )
