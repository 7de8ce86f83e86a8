"""Huey storage with an acknowledged hand-off.

Huey's SqliteStorage deletes a task the moment a worker dequeues it, and a
result the moment it is read without ``peek``. Either would lose rows if the
stager died before sealing them. ``LeasingSqliteStorage`` adds:

- ``lease(owner)``: move the next task into the ``duckstage_lease`` table, in
  one exclusive SQLite transaction, instead of deleting it;
- ``ack(lease_ids)``: delete leases once their rows are sealed (or dead-lettered);
- ``requeue_orphans(owner)``: at start-up, put leases of earlier (crashed)
  stager instances back into the queue, so their tasks run again;
- ``scan_results`` / ``delete_results``: read the result store a page at a
  time, by key, and delete only the results the stager has sealed.

Huey's own ``dequeue`` is unchanged, so a producer's consumer that uses this
storage behaves exactly as with SqliteStorage.
"""

import time

from huey import Huey
from huey.storage import SqliteStorage


class LeasingSqliteStorage(SqliteStorage):
    table_lease = (
        "create table if not exists duckstage_lease ("
        "id integer not null primary key autoincrement, queue text not null, "
        "data blob not null, priority real not null default 0.0, "
        "owner text not null, leased_at real not null)"
    )
    ddl = SqliteStorage.ddl + [table_lease]

    def lease(self, owner):
        """Lease the next task: return ``(lease_id, data)``, or None if the queue is empty."""
        if not self.sql("select 1 from task where queue = ? limit 1", (self.name,), results=True):
            return None
        with self.db(commit=True) as curs:
            curs.execute(
                "select id, data, priority from task where queue = ? "
                "order by priority desc, id limit 1", (self.name,))
            row = curs.fetchone()
            if row is None:
                return None
            tid, data, priority = row
            curs.execute(
                "insert into duckstage_lease (queue, data, priority, owner, leased_at) "
                "values (?, ?, ?, ?, ?)", (self.name, data, priority, owner, time.time()))
            lease_id = curs.lastrowid
            curs.execute("delete from task where id = ?", (tid,))
            return lease_id, data

    def ack(self, lease_ids):
        lease_ids = list(lease_ids)
        for i in range(0, len(lease_ids), 500):
            chunk = lease_ids[i:i + 500]
            self.sql("delete from duckstage_lease where id in (%s)" % ",".join("?" * len(chunk)),
                     chunk, commit=True)

    def requeue_orphans(self, owner):
        """Return leases not held by ``owner`` to the queue; the count moved."""
        with self.db(commit=True) as curs:
            curs.execute(
                "insert into task (queue, data, priority) select queue, data, priority "
                "from duckstage_lease where queue = ? and owner != ? order by id",
                (self.name, owner))
            moved = curs.rowcount
            curs.execute("delete from duckstage_lease where queue = ? and owner != ?",
                         (self.name, owner))
            return moved

    def lease_count(self):
        return self.sql("select count(*) from duckstage_lease where queue = ?",
                        (self.name,), results=True)[0][0]

    def scan_results(self, after_key, limit):
        """Up to ``limit`` result-store entries with keys after ``after_key``, by key."""
        return self.sql(
            "select key, value from kv where queue = ? and key > ? order by key limit ?",
            (self.name, after_key, limit), results=True)

    def delete_results(self, keys):
        keys = list(keys)
        for i in range(0, len(keys), 500):
            chunk = keys[i:i + 500]
            self.sql("delete from kv where queue = ? and key in (%s)" % ",".join("?" * len(chunk)),
                     (self.name, *chunk), commit=True)


def build_storage_huey(huey_config):
    """A Huey instance on the leasing SQLite storage described by ``huey_config``."""
    huey_config.path.parent.mkdir(parents=True, exist_ok=True)
    return Huey(
        huey_config.name,
        storage_class=LeasingSqliteStorage,
        filename=str(huey_config.path),
        fsync=huey_config.fsync,
        utc=True,
    )
