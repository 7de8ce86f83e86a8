"""The leasing Redis storage on a real Redis server: leases, heartbeats, lost replies, the result store.

Each "stager" here is a storage of its own (its own connections), as two
processes on two hosts would have; tests/stager/test_redis_stagers.py runs the
real processes.
"""

import selectors
import socket
import threading
import time
from types import SimpleNamespace

import pytest
import redis
from huey.serializer import Serializer

from duckstage.config import from_mapping
from stager.queue import build_storage_huey
from tests.helpers import CONFIG_DIR, wait_for
from tests.stager.conftest import TEST_LEASE_TIMEOUT


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def open_storage(url, **options):
    huey_config = from_mapping({"huey": {"backend": "redis", "url": url, "lease_timeout": TEST_LEASE_TIMEOUT}},
                               config_dir=CONFIG_DIR).huey
    return build_storage_huey(huey_config, **options).storage


@pytest.fixture
def storages(redis_db):
    """``storages(n, **options)``: n storages on the test's Redis database, closed after the test."""
    opened = []

    def _open(n=1, url=None, **options):
        new = [open_storage(url or redis_db.url, **options) for _ in range(n)]
        opened.extend(new)
        return new

    yield _open
    for s in opened:
        s.close()


def queued(storage):
    return list(storage.enqueued_items())


def test_two_stagers_never_lease_one_task_and_a_release_puts_it_back_in_its_place(storages):
    a, b = storages(2)
    for i in range(5):
        a.enqueue(b"task-%d" % i)
    a.enqueue(b"urgent", priority=5)

    held_a = a.lease("A", 2)
    held_b = b.lease("B", 2)
    assert [d for _, d in held_a] == [b"urgent", b"task-0"]  # priority first, then enqueue order
    assert [d for _, d in held_b] == [b"task-1", b"task-2"]
    assert (a.queue_size(), a.lease_count()) == (2, 4)
    assert {s["instance"]: s["leased"] for s in a.stagers()} == {"A": 2, "B": 2}

    b.release([held_a[0][0]])  # any stager may release a lease by its id
    assert queued(a) == [b"urgent", b"task-3", b"task-4"]  # back first, with its priority
    assert [d for _, d in b.lease("B", 1)] == [b"urgent"]

    a.ack([held_a[1][0]])
    assert (a.queue_size(), a.lease_count()) == (2, 3)
    a.ack([held_a[1][0]])  # acknowledged twice: nothing more happens
    assert (a.queue_size(), a.lease_count()) == (2, 3)


def test_stagers_leasing_at_once_hand_out_every_task_exactly_once(storages):
    stagers = storages(2)
    tasks = [b"task-%03d" % i for i in range(300)]
    for t in tasks:
        stagers[0].enqueue(t)
    got, lock = [], threading.Lock()

    def work(storage, owner):
        while leased := storage.lease(owner, 3):
            with lock:
                got.extend(d for _, d in leased)
            storage.ack([lease_id for lease_id, _ in leased])

    threads = [threading.Thread(target=work, args=(s, f"stager-{n}")) for n, s in enumerate(stagers) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(got) == tasks  # none twice, none missing
    assert (stagers[0].queue_size(), stagers[0].lease_count()) == (0, 0)


def test_a_dead_stagers_tasks_return_after_its_heartbeat_expires_while_a_live_ones_stay(storages):
    clock = Clock()
    dead, alive, survivor = storages(3, clock=clock)
    for i in range(6):
        dead.enqueue(b"task-%d" % i)
    lost = dead.lease("dead", 3)  # then it stops: no beat renews its heartbeat
    kept = alive.lease("alive", 2)

    assert survivor.beat("survivor") == 0  # just connected: it judges nobody yet
    clock.now += TEST_LEASE_TIMEOUT
    alive.beat("alive")
    assert survivor.beat("survivor") == 0  # connected long enough, but every heartbeat is fresh

    # The dead one's heartbeat expires (Redis's own clock); the live one keeps beating.
    deadline = time.monotonic() + 10 * TEST_LEASE_TIMEOUT
    returned = 0
    while not returned and time.monotonic() < deadline:
        alive.beat("alive")
        returned = survivor.beat("survivor")
        time.sleep(TEST_LEASE_TIMEOUT / 10)
    assert returned == 3
    assert queued(survivor) == [d for _, d in lost] + [b"task-5"]  # back in their places
    assert {s["instance"]: s["leased"] for s in survivor.stagers()} == {"alive": 2, "survivor": 0}

    dead.ack([lease_id for lease_id, _ in lost])  # too late: they are someone else's now
    assert survivor.queue_size() == 4
    alive.ack([lease_id for lease_id, _ in kept])
    assert survivor.lease_count() == 0


def test_a_redis_outage_longer_than_the_lease_timeout_hands_no_live_stagers_tasks_to_another(redis_server, storages):
    holder, other = storages(2)
    for i in range(3):
        holder.enqueue(b"task-%d" % i)
    held = holder.lease("holder", 3)
    holder.beat("holder")
    other.beat("other")

    redis_server.stop()
    with pytest.raises(redis.exceptions.ConnectionError):
        other.beat("other")
    time.sleep(TEST_LEASE_TIMEOUT + 0.5)  # every heartbeat expires while Redis is away
    redis_server.start()

    # The first back sees the holder's heartbeat gone, and must not take that for a death.
    assert other.beat("other") == 0
    assert holder.lease_count() == 3
    holder.beat("holder")  # the holder is back within a third of the timeout
    deadline = time.monotonic() + 2 * TEST_LEASE_TIMEOUT
    while time.monotonic() < deadline:
        holder.beat("holder")
        assert other.beat("other") == 0
        time.sleep(TEST_LEASE_TIMEOUT / 10)
    assert {s["instance"]: s["leased"] for s in other.stagers()} == {"holder": 3, "other": 0}
    holder.ack([lease_id for lease_id, _ in held])
    assert (other.queue_size(), other.lease_count()) == (0, 0)


class ReplyCutter:
    """A TCP relay to Redis that can swallow the server's next reply and cut that connection.

    What a network cut or a server killed after it wrote its append-only file does:
    the command took effect, the client never learns it.
    """

    def __init__(self, port):
        self.target = ("127.0.0.1", port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.cut = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._relay, name="reply-cutter")
        self._thread.start()

    def _relay(self):
        sel = selectors.DefaultSelector()
        sel.register(self.listener, selectors.EVENT_READ, "listener")
        peers = {}
        while not self._stop.is_set():
            for key, _ in sel.select(0.05):
                sock = key.fileobj
                if key.data == "listener":
                    client, _ = sock.accept()
                    upstream = socket.create_connection(self.target)
                    peers[client], peers[upstream] = upstream, client
                    sel.register(client, selectors.EVENT_READ, "client")
                    sel.register(upstream, selectors.EVENT_READ, "server")
                    continue
                if sock not in peers:  # closed earlier in this round
                    continue
                data = sock.recv(1 << 16)
                if data and key.data == "server" and self.cut.is_set():
                    self.cut.clear()
                    data = b""
                if not data:
                    for s in (sock, peers[sock]):
                        sel.unregister(s)
                        peers.pop(s)
                        s.close()
                    continue
                peers[sock].sendall(data)
        for s in peers:
            s.close()
        sel.close()

    def close(self):
        self._stop.set()
        self._thread.join(10)
        self.listener.close()


def test_a_lease_whose_reply_is_lost_goes_back_to_the_queue_not_into_limbo(redis_server, redis_db, storages):
    cutter = ReplyCutter(redis_server.port)
    try:
        [producer] = storages(1)
        [stager] = storages(1, url=f"redis://127.0.0.1:{cutter.port}/{redis_db.index}")
        assert stager.lease("stager", 8) == []  # the scripts are loaded, through the relay
        producer.enqueue(b"the task")

        cutter.cut.set()
        with pytest.raises(redis.exceptions.ConnectionError):
            stager.lease("stager", 8)
        assert (producer.queue_size(), producer.lease_count()) == (0, 1)  # leased, and nobody knows

        [(lease_id, data)] = stager.lease("stager", 8)  # the next call returns it first, then leases it
        assert data == b"the task"
        stager.ack([lease_id])
        assert (producer.queue_size(), producer.lease_count()) == (0, 0)
    finally:
        cutter.close()


def test_a_result_whose_claim_reply_is_lost_goes_back_to_the_store(redis_server, redis_db, storages):
    cutter = ReplyCutter(redis_server.port)
    try:
        [producer] = storages(1)
        [stager] = storages(1, url=f"redis://127.0.0.1:{cutter.port}/{redis_db.index}")
        assert stager.claim_result("stager", "nothing-there") is None  # the scripts are loaded
        producer.put_data("k1", b"result", is_result=True)

        cutter.cut.set()
        with pytest.raises(redis.exceptions.ConnectionError):
            stager.claim_result("stager", "k1")
        assert (producer.result_store_size(), producer.lease_count()) == (0, 1)

        assert stager.claim_result("stager", "elsewhere") is None  # any next call settles the lost one
        assert producer.peek_data("k1") == b"result" and producer.lease_count() == 0
    finally:
        cutter.close()


def test_results_are_claimed_a_page_at_a_time_and_once_between_stagers(storages):
    from stager.sources import ResultSource
    from stager.tasks import _process_fetched_data
    from tests.stager.helpers import daily_rows

    a, b = storages(2)
    serializer = Serializer()
    values = {f"k{i:04d}": serializer.serialize(_process_fetched_data("stock_daily", daily_rows(1, start=i)))
              for i in range(1200)}
    for i in range(0, 1200, 300):
        a.conn.hset(a.result_key, mapping=dict(list(values.items())[i:i + 300]))
    a.conn.hset(a.result_key, "not-ours", b"\x00opaque")

    pages, cursor, seen = 0, None, set()
    while True:
        page, cursor = a.scan_results(cursor, ResultSource.PAGE)
        assert len(page) < 600  # a page, not the store: HSCAN's count is a hint, never the whole hash
        seen |= {k for k, _ in page}
        pages += 1
        if cursor is None:
            break
    assert pages > 2 and seen == set(values) | {"not-ours"}

    # What ResultSource needs of a Huey instance: its storage and its serializer.
    sources = [ResultSource(SimpleNamespace(storage=s, serializer=serializer), name) for s, name in ((a, "A"), (b, "B"))]
    claimed = {"A": [], "B": []}

    def claim(source):
        while claims := source.claim_many():
            claimed[source.instance] += [c.result.task_id or c.token for c in claims]
            source.ack([c.token for c in claims])

    threads = [threading.Thread(target=claim, args=(s,)) for s in sources]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert claimed["A"] and claimed["B"]
    assert sorted(claimed["A"] + claimed["B"]) == sorted(values)  # each claimed once
    assert a.result_store_size() == 1 and a.lease_count() == 0  # only the other application's result


def test_a_dead_stagers_claimed_results_return_to_the_store(storages):
    clock = Clock()
    dead, survivor = storages(2, clock=clock)
    dead.put_data("k1", b"result", is_result=True)
    lease_id = dead.claim_result("dead", "k1")
    assert lease_id and dead.result_store_size() == 0
    assert survivor.claim_result("survivor", "k1") is None  # held: nobody else gets it
    survivor.beat("survivor")
    clock.now += TEST_LEASE_TIMEOUT
    wait_for(lambda: survivor.beat("survivor"), timeout=10 * TEST_LEASE_TIMEOUT, interval=0.1,
             message="the dead stager's heartbeat to expire")
    assert survivor.peek_data("k1") == b"result"


def test_a_producer_gets_queue_unavailable_when_redis_is_down_and_nothing_is_enqueued(make_config, producer):
    from stager import QueueUnavailable, TaskType
    from tests.helpers import free_port
    from tests.stager.helpers import daily_rows

    url = f"redis://:s3cret@127.0.0.1:{free_port()}/0"  # nothing listens there
    _, config = make_config(huey={"backend": "redis", "url": url})
    enqueue = producer(config)
    with pytest.raises(QueueUnavailable) as err:
        enqueue(TaskType.STOCK_DAILY, daily_rows(3))
    assert err.value.location == url.replace("s3cret", "***")
    assert "nothing was enqueued" in str(err.value) and "s3cret" not in str(err.value)
    assert isinstance(err.value.__cause__, redis.exceptions.ConnectionError)


def test_an_acknowledgement_while_redis_is_down_is_made_when_it_answers_again(redis_server, storages):
    stager, closing, other = storages(3)
    for data in (b"first", b"second"):
        stager.enqueue(data)
    [(first, _)] = stager.lease("stager", 1)
    [(second, _)] = closing.lease("closing", 1)

    redis_server.stop()
    try:
        stager.ack([first])  # rows sealed: the sealer is not held up by Redis being away
        closing.ack([second])
    finally:
        redis_server.start()
    assert other.lease_count() == 2  # not made yet
    stager.beat("stager")  # the next call that reaches Redis makes it
    closing.close()  # and so does a stop
    assert (other.queue_size(), other.lease_count()) == (0, 0)


@pytest.fixture
def full_redis(redis_server):
    """``fill()`` makes the test server full (maxmemory below what it uses, noeviction) until the test ends."""
    client = redis.Redis.from_url(redis_server.url)

    def fill():
        assert client.config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"
        client.config_set("maxmemory", 1)

    yield fill
    client.config_set("maxmemory", 0)
    client.close()


def test_a_full_redis_refuses_new_tasks_but_the_stagers_still_drain_it(full_redis, storages):
    from stager import QueueUnavailable

    producer, stager, other = storages(3, clock=Clock())
    for i in range(10):
        producer.enqueue(b"task-%d" % i)
    held = stager.lease("stager", 2)
    given_up = other.lease("other", 1)
    stager.beat("stager")
    full_redis()

    with pytest.raises(QueueUnavailable) as err:
        producer.enqueue(b"one too many")
    assert isinstance(err.value.__cause__, redis.exceptions.OutOfMemoryError)
    stager.beat("stager")  # the heartbeat still renews: a full Redis must not make live stagers look dead
    other.release([lease_id for lease_id, _ in given_up])
    stager.ack([lease_id for lease_id, _ in held])
    drained = []
    while leased := stager.lease("stager", 3):  # leasing frees the queue before it fills the lease hash
        drained += [d for _, d in leased]
        stager.ack([lease_id for lease_id, _ in leased])
    assert drained == [b"task-2"] + [b"task-%d" % i for i in range(3, 10)]
    assert (producer.queue_size(), producer.lease_count()) == (0, 0)
