"""Huey's Redis storage with the acknowledged hand-off of ``LeasingSqliteStorage``.

Several stagers, on several hosts, may serve one Redis queue. The queue itself
is Huey's ``PriorityRedisStorage`` (a sorted set ``huey.redis.<name>``, by
priority, then enqueue time), so producers and Huey's own consumer
(``huey_consumer stager.tasks.huey``) use it unchanged. Beside it, each stager
instance has:

- a lease hash ``duckstage.leases.<name>.<instance>``: the tasks (and, with
  ``run_huey_consumer: false``, the results) it holds. ``lease`` moves the next
  tasks from the queue into this hash in one Lua script, so no other stager can
  take them; ``ack`` deletes them once their rows are sealed or dead-lettered;
  ``release`` puts them back where they were (same priority, same place);
- a heartbeat key ``duckstage.alive.<name>.<instance>``, set by every lease and
  by ``beat`` (a stager thread, three times per ``lease_timeout``), expiring
  after ``lease_timeout``;
- its name in the set ``duckstage.stagers.<name>``, so that the others find it.

``beat`` also returns to the queue everything held by instances whose
heartbeat has expired (``requeue_orphans``): a stager killed on one host loses
nothing, its tasks run on another about ``lease_timeout`` later. A heartbeat
missing right after this process could not reach Redis says nothing about its
owner (every heartbeat expires during a long outage), so a stager judges the
others only once it has itself reached Redis for a whole ``lease_timeout``;
the live ones have renewed theirs by then.

A reply lost on the way back (Redis restarted, the network cut) leaves a lease
made but unknown to the stager: each lease carries a request id, a repeated
request hands back what the first made, and the leases of a request that
failed are returned to the queue at the next call. Results are claimed one by
one (``claim_result``) after an ``HSCAN`` page (``scan_results``), never by
reading the whole result hash.
"""

import logging
import os
import socket
import threading
import time
import uuid

from huey.storage import PriorityRedisStorage
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError as RedisOutOfMemoryError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .exceptions import QueueUnavailable

log = logging.getLogger(__name__)

# Redis could not be reached, or did not answer in time: wait and try again (BusyLoadingError,
# the server still loading its append-only file after a restart, is a ConnectionError).
REDIS_UNREACHABLE = (RedisConnectionError, RedisTimeoutError)
# Redis is full (maxmemory, noeviction): it refuses what would grow it, until stagers drain it.
REDIS_FULL = (RedisOutOfMemoryError,)

# Each script's first write deletes: when Redis is full it refuses a script whose first
# write would grow memory, but not the writes after that one (Redis 6.2), so stagers can
# still lease, release and return tasks, and drain a full Redis.
# A lease hash entry is the thing held, tagged with where it goes back to:
#   t<score>:<queue member>        a task, with its score (priority) in the queue's sorted set
#   r<length of key>:<key><value>  a result, with its key in the result hash
_GIVE_BACK = """
local function give_back(queue, results, entry)
  local sep = string.find(entry, ':', 2, true)
  local head = string.sub(entry, 2, sep - 1)
  if string.sub(entry, 1, 1) == 't' then
    redis.call('ZADD', queue, head, string.sub(entry, sep + 1))
  else
    local n = tonumber(head)
    redis.call('HSET', results, string.sub(entry, sep + 1, sep + n), string.sub(entry, sep + n + 1))
  end
end
"""

# KEYS: queue, leases, alive, stagers. ARGV: request id, limit, instance, lease_timeout ms, identity.
_LEASE = """
local out = {}
local i = 1
while true do  -- the same request again (its reply was lost): what it leased then
  local entry = redis.call('HGET', KEYS[2], ARGV[1] .. ':' .. i)
  if not entry then break end
  out[#out + 1] = ARGV[1] .. ':' .. i
  out[#out + 1] = entry
  i = i + 1
end
if #out > 0 then return out end
local items = redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[2]) - 1, 'WITHSCORES')
for j = 1, #items, 2 do
  redis.call('ZREM', KEYS[1], items[j])
end
for j = 1, #items, 2 do
  local id = ARGV[1] .. ':' .. ((j + 1) / 2)
  local entry = 't' .. items[j + 1] .. ':' .. items[j]
  redis.call('HSET', KEYS[2], id, entry)
  out[#out + 1] = id
  out[#out + 1] = entry
end
if #items > 0 then
  redis.call('SET', KEYS[3], ARGV[5], 'PX', ARGV[4])
  redis.call('SADD', KEYS[4], ARGV[3])
end
return out
"""

# KEYS: results, leases, alive, stagers. ARGV: lease id, result key, instance, lease_timeout ms, identity.
_CLAIM_RESULT = """
local held = redis.call('HGET', KEYS[2], ARGV[1])
if held then return held end
local value = redis.call('HGET', KEYS[1], ARGV[2])
if not value then return false end
redis.call('HDEL', KEYS[1], ARGV[2])
local entry = 'r' .. string.len(ARGV[2]) .. ':' .. ARGV[2] .. value
redis.call('HSET', KEYS[2], ARGV[1], entry)
redis.call('SET', KEYS[3], ARGV[5], 'PX', ARGV[4])
redis.call('SADD', KEYS[4], ARGV[3])
return entry
"""

# KEYS: alive, stagers. ARGV: instance, lease_timeout ms, identity. 1: renewed; 0: it had expired.
_BEAT = """
local renewed = redis.call('PEXPIRE', KEYS[1], ARGV[2])
if renewed == 0 then redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[2]) end
if redis.call('SISMEMBER', KEYS[2], ARGV[1]) == 0 then redis.call('SADD', KEYS[2], ARGV[1]) end
return renewed
"""

# KEYS: leases, queue, results. ARGV: lease ids. Back where they came from; ids no longer held are skipped.
_RELEASE = _GIVE_BACK + """
local n = 0
for _, id in ipairs(ARGV) do
  local entry = redis.call('HGET', KEYS[1], id)
  if entry then
    redis.call('HDEL', KEYS[1], id)
    give_back(KEYS[2], KEYS[3], entry)
    n = n + 1
  end
end
return n
"""

# KEYS: leases, queue, results. ARGV: request id. The leases a request made whose reply never came.
_RELEASE_REQUEST = _GIVE_BACK + """
local n = 0
while true do
  local id = ARGV[1] .. ':' .. (n + 1)
  local entry = redis.call('HGET', KEYS[1], id)
  if not entry then return n end
  redis.call('HDEL', KEYS[1], id)
  give_back(KEYS[2], KEYS[3], entry)
  n = n + 1
end
"""

# KEYS: alive, leases, queue, results, stagers. ARGV: instance. -1: it is alive.
_REQUEUE = _GIVE_BACK + """
if redis.call('EXISTS', KEYS[1]) == 1 then return -1 end
local all = redis.call('HGETALL', KEYS[2])
redis.call('SREM', KEYS[5], ARGV[1])
redis.call('DEL', KEYS[2])
for i = 2, #all, 2 do give_back(KEYS[3], KEYS[4], all[i]) end
return #all / 2
"""


class LeasingRedisStorage(PriorityRedisStorage):
    """PriorityRedisStorage plus leases held under a heartbeat (see the module's docstring).

    ``lease_timeout``: seconds a heartbeat lives; ``location``: the URL without
    its password, for messages; ``clock``: monotonic seconds (tests pass their own).
    """

    def __init__(self, *args, lease_timeout=30.0, location="redis", clock=time.monotonic, **kwargs):
        super().__init__(*args, **kwargs)
        self.lease_timeout = float(lease_timeout)
        self.beat_interval = self.lease_timeout / 3  # two beats may fail before the heartbeat expires
        self.location = location
        self.clock = clock
        self.identity = f"{socket.gethostname()} pid {os.getpid()}"
        self.stagers_key = f"duckstage.stagers.{self.name}"
        self._connected_since = None  # clock() of the first beat that reached Redis after a failure
        self._unsure = []  # (owner, request id) of lease calls whose reply never came
        self._unacked = []  # lease ids acknowledged while Redis was out of reach
        self._lock = threading.Lock()
        self._lease = self.conn.register_script(_LEASE)
        self._claim_result = self.conn.register_script(_CLAIM_RESULT)
        self._release = self.conn.register_script(_RELEASE)
        self._release_request = self.conn.register_script(_RELEASE_REQUEST)
        self._requeue = self.conn.register_script(_REQUEUE)
        self._beat = self.conn.register_script(_BEAT)

    def leases_key(self, instance):
        return f"duckstage.leases.{self.name}.{instance}"

    def alive_key(self, instance):
        return f"duckstage.alive.{self.name}.{instance}"

    @staticmethod
    def _request(owner):
        """A request id; the leases it makes are <request id>:1, :2, ..., so that ``ack`` finds the owner."""
        return f"{owner}.{uuid.uuid4().hex[:16]}"

    def _own(self, owner):
        return [self.alive_key(owner), self.stagers_key], [owner, int(self.lease_timeout * 1000), self.identity]

    def _call(self, owner, request, script, keys, args):
        """Run a script that makes leases; if its reply does not come, remember the request to undo it."""
        try:
            return script(keys=keys, args=args)
        except REDIS_UNREACHABLE:
            with self._lock:
                self._unsure.append((owner, request))
            raise

    def _settle_unsure(self):
        """Make the acknowledgements Redis missed, and return to the queue what failed lease calls made."""
        with self._lock:
            unacked, self._unacked = self._unacked, []
        failed, error = self._delete_leases(unacked)
        if failed:
            with self._lock:
                self._unacked[:0] = failed
            raise error
        with self._lock:
            unsure, self._unsure = self._unsure, []
        try:
            while unsure:
                owner, request = unsure[0]
                n = self._release_request(keys=[self.leases_key(owner), self.queue_key, self.result_key],
                                          args=[request])
                if n:
                    log.warning("returned %d task(s) or result(s) to the queue: leased by a request whose "
                                "reply was lost", n, extra={"event": "requeued", "count": n})
                unsure.pop(0)
        finally:
            with self._lock:
                self._unsure[:0] = unsure

    # --- the queue ------------------------------------------------------------

    def enqueue(self, data, priority=None):
        try:
            super().enqueue(data, priority)
        except REDIS_UNREACHABLE + REDIS_FULL as exc:
            raise QueueUnavailable(self.location, exc) from exc

    def lease(self, owner, limit=1):
        """Lease up to ``limit`` tasks in one script: a list of ``(lease_id, data)``."""
        self._settle_unsure()
        request = self._request(owner)
        keys, args = self._own(owner)
        flat = self._call(owner, request, self._lease, [self.queue_key, self.leases_key(owner), *keys],
                          [request, limit, *args])
        # An entry is t<score>:<member>; a member is Huey's 8-byte enqueue time, then the task.
        return [(lease_id.decode(), entry[entry.index(b":") + 9:])
                for lease_id, entry in zip(flat[::2], flat[1::2])]

    def ack(self, lease_ids):
        """Delete what the leases hold: their rows are sealed or dead-lettered.

        With Redis out of reach, the acknowledgement is kept and made at the next
        call that reaches it (the heartbeat's, at the latest), instead of holding
        up the sealer: the rows are safe on disk, and should this process end
        first, its tasks run again after its heartbeat expires (the loader's MERGE
        keeps one copy of their rows).
        """
        failed, error = self._delete_leases(lease_ids)
        if failed:
            with self._lock:
                self._unacked += failed
            log.warning("cannot acknowledge %d lease(s) yet (%s): done when Redis answers again", len(failed), error,
                        extra={"event": "ack_deferred", "count": len(failed)})

    def _delete_leases(self, lease_ids):
        """Delete leases; the ids left undeleted because Redis was out of reach, and the error."""
        by_owner = {}
        for lease_id in lease_ids:
            by_owner.setdefault(self._owner_of(lease_id), []).append(lease_id)
        failed, error = [], None
        for owner, ids in by_owner.items():
            for i in range(0, len(ids), 500):
                chunk = ids[i:i + 500]
                if error is None:
                    try:
                        gone = len(chunk) - self.conn.hdel(self.leases_key(owner), *chunk)
                    except REDIS_UNREACHABLE as exc:
                        error = exc
                if error is not None:
                    failed += chunk
                elif gone:
                    log.warning("%d lease(s) had gone back to the queue while this stager was out of touch with "
                                "Redis for longer than huey.lease_timeout: another stager may stage their rows "
                                "too (the loader's MERGE keeps one copy)", gone, extra={"event": "lease_lost"})
        return failed, error

    def release(self, lease_ids):
        """Put leased tasks (or results) back where they were: they are handed out again."""
        by_owner = {}
        for lease_id in lease_ids:
            by_owner.setdefault(self._owner_of(lease_id), []).append(lease_id)
        for owner, ids in by_owner.items():
            for i in range(0, len(ids), 500):
                self._release(keys=[self.leases_key(owner), self.queue_key, self.result_key], args=ids[i:i + 500])

    @staticmethod
    def _owner_of(lease_id):
        return lease_id.rsplit(".", 1)[0]  # a lease id is <owner>.<request>:<n>

    def lease_count(self):
        return sum(s["leased"] for s in self.stagers())

    def stagers(self):
        """Every stager instance registered on this queue: instance, alive (its heartbeat), identity, leased."""
        out = []
        for instance in sorted(m.decode() for m in self.conn.smembers(self.stagers_key)):
            pipe = self.conn.pipeline(transaction=False)
            pipe.get(self.alive_key(instance))
            pipe.hlen(self.leases_key(instance))
            identity, leased = pipe.execute()
            out.append({"instance": instance, "alive": identity is not None,
                        "identity": identity.decode(errors="replace") if identity else None, "leased": leased})
        return out

    # --- heartbeats -----------------------------------------------------------

    def beat(self, owner):
        """Renew ``owner``'s heartbeat, then return what expired instances held; the count returned."""
        try:
            self._settle_unsure()
            keys, args = self._own(owner)
            renewed = self._beat(keys=keys, args=args)
        except REDIS_UNREACHABLE:
            self._connected_since = None
            raise
        if self._connected_since is None:
            self._connected_since = self.clock()
        elif not renewed:
            log.error("this stager's heartbeat had expired (stalled, or out of touch with Redis for longer than "
                      "huey.lease_timeout=%gs): its leased tasks may have gone to another stager",
                      self.lease_timeout, extra={"event": "heartbeat_expired"})
        return self.requeue_orphans(owner)

    def requeue_orphans(self, owner):
        """Return to the queue what instances other than ``owner`` held, if their heartbeat expired."""
        if self._connected_since is None or self.clock() - self._connected_since < self.lease_timeout:
            return 0  # not in touch long enough to tell a dead stager from one that has yet to beat again
        returned = 0
        for member in self.conn.smembers(self.stagers_key):
            instance = member.decode()
            if instance == owner:
                continue
            n = self._requeue(keys=[self.alive_key(instance), self.leases_key(instance), self.queue_key,
                                    self.result_key, self.stagers_key], args=[instance])
            if n > 0:
                log.warning("returned %d task(s) or result(s) of stager %s, whose heartbeat expired, to the queue",
                            n, instance, extra={"event": "requeued", "instance": instance, "count": n})
                returned += n
        return returned

    # --- the result store -----------------------------------------------------

    def scan_results(self, cursor, limit):
        """One HSCAN page of the result store: ``([(key, value), ...], next cursor or None at the end)``."""
        cursor, page = self.conn.hscan(self.result_key, cursor or 0, count=limit)
        return [(k.decode(), v) for k, v in page.items()], (cursor or None)

    def claim_result(self, owner, key):
        """Move one result into ``owner``'s leases; its lease id, or None when another stager took it."""
        self._settle_unsure()
        request = self._request(owner)
        lease_id = f"{request}:1"
        keys, args = self._own(owner)
        entry = self._call(owner, request, self._claim_result,
                           [self.result_key, self.leases_key(owner), *keys], [lease_id, key, *args])
        return None if entry is None else lease_id

    def ack_results(self, lease_ids):
        self.ack(lease_ids)

    def release_results(self, lease_ids):
        self.release(lease_ids)

    def close(self):
        """Make the acknowledgements still owed, if Redis answers, and close the connections."""
        try:
            self._settle_unsure()
        except REDIS_UNREACHABLE as exc:
            log.warning("closing with Redis out of reach (%s): %d acknowledgement(s) not made; those tasks run again "
                        "after this stager's heartbeat expires", exc, len(self._unacked))
        self.pool.disconnect()
