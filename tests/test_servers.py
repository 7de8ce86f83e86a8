"""The test servers themselves: a real PostgreSQL and a real Redis answer, lock and keep data.

Groundwork for a DuckLake warehouse on a PostgreSQL catalog and for the Huey queue
on Redis: what those will rely on is checked here first, against the servers the
fixtures in tests/servers.py start.
"""

import socket

import psycopg
import pytest
import redis
from huey import RedisHuey

from tests.helpers import wait_for


def test_postgres_creates_inserts_and_selects(postgres_db):
    with psycopg.connect(postgres_db.conninfo) as conn:
        conn.execute("CREATE TABLE daily (ts_code text, trade_date date, close numeric, PRIMARY KEY (ts_code, trade_date))")
        conn.execute("INSERT INTO daily VALUES ('000001.SZ', '2024-01-02', 9.21), ('600000.SH', '2024-01-02', 7.10)")
    with psycopg.connect(postgres_db.url) as conn:
        rows = conn.execute("SELECT ts_code, close::text FROM daily ORDER BY ts_code").fetchall()
        assert conn.execute("SELECT current_database()").fetchone()[0] == postgres_db.name
    assert rows == [("000001.SZ", "9.21"), ("600000.SH", "7.10")]


def test_postgres_databases_are_separate(postgres_server, postgres_db):
    with psycopg.connect(postgres_db.conninfo) as conn:
        conn.execute("CREATE TABLE only_here (n int)")
    with psycopg.connect(postgres_server.conninfo) as conn:
        found = conn.execute("SELECT count(*) FROM pg_tables WHERE tablename = 'only_here'").fetchone()[0]
    assert found == 0


def test_advisory_lock_blocks_others_until_its_holder_disconnects(postgres_db):
    holder = psycopg.connect(postgres_db.conninfo, autocommit=True)
    other = psycopg.connect(postgres_db.conninfo, autocommit=True)
    try:
        holder.execute("SELECT pg_advisory_lock(4242)")
        assert other.execute("SELECT pg_try_advisory_lock(4242)").fetchone()[0] is False

        holder.close()
        # The server releases the lock when the holder's backend ends, a moment after the client hangs up.
        wait_for(lambda: other.execute("SELECT pg_try_advisory_lock(4242)").fetchone()[0],
                 timeout=10, message="the advisory lock to be released")
    finally:
        holder.close()
        other.close()


def test_postgres_keeps_committed_rows_across_a_restart(postgres_server, postgres_db):
    with psycopg.connect(postgres_db.conninfo) as conn:
        conn.execute("CREATE TABLE kept (n int)")
        conn.execute("INSERT INTO kept SELECT generate_series(1, 100)")

    postgres_server.stop()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(postgres_db.conninfo, connect_timeout=2)
    postgres_server.start()

    with psycopg.connect(postgres_db.conninfo) as conn:
        assert conn.execute("SELECT count(*), sum(n) FROM kept").fetchone() == (100, 5050)


def test_redis_sets_and_gets(redis_db):
    with redis.Redis.from_url(redis_db.url) as client:
        assert client.dbsize() == 0
        client.set("daily:000001.SZ", "9.21")
        assert client.get("daily:000001.SZ") == b"9.21"


def build_queue(url):
    """A RedisHuey with one task, as a producer or a consumer process would build it."""
    huey = RedisHuey(name="duckstage-test", url=url)

    @huey.task()
    def add(a, b):
        return a + b

    return huey, add


def refuses_connections(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


@pytest.mark.parametrize("outage", ["restart", "kill -9"])
def test_a_queued_huey_task_survives_the_redis_server_going_down(redis_server, redis_db, outage):
    producer, add = build_queue(redis_db.url)
    add(2, 3)
    assert producer.pending_count() == 1
    producer.storage.conn.close()

    if outage == "restart":
        redis_server.restart()
    else:
        redis_server.kill()
        assert refuses_connections(redis_server.port)
        redis_server.start()

    consumer, _ = build_queue(redis_db.url)  # a fresh connection, as a consumer started afterwards
    task = consumer.dequeue()
    assert task is not None and task.args == (2, 3)
    assert consumer.execute(task) == 5
    assert consumer.pending_count() == 0
    consumer.storage.conn.close()


def test_redis_databases_are_separate(redis_server, redis_db):
    with redis.Redis.from_url(redis_db.url) as client:
        client.set("only-here", "1")
    with redis.Redis.from_url(redis_server.url) as client:
        assert client.exists("only-here") == 0
