"""The Telegram leader lease (chatserv.bridge.lease) on a fake clock and a
fake store, then the same contract on the machine's Redis."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.task import Clock

from chatserv.bridge.lease import (
    Lease,
    LeaseTiming,
    MemoryLeaseStore,
    RedisLeaseStore,
    holder_value,
    lease_key,
)

KEY = lease_key("test", 123456)
TIMING = LeaseTiming()


class Node:
    """One node's lease and what it was told, with times."""

    def __init__(self, name: str, store: Any, clock: Clock) -> None:
        self.clock = clock
        self.events: list[tuple[float, str, Any]] = []
        self.lease = Lease(
            store,
            KEY,
            clock,
            lambda term: self.events.append((clock.seconds(), "elected", term)),
            lambda reason: self.events.append((clock.seconds(), "lost", reason)),
            node=name,
            timing=TIMING,
        )

    def start(self) -> Node:
        self.lease.start()
        self.clock.advance(0)  # its first attempt is at the end of this turn
        return self

    def kill(self) -> None:
        """Like SIGKILL: no release, no more renewals."""
        lease = self.lease
        lease.running = False
        for call in (lease._call, lease._expiry):
            if call is not None and call.active():
                call.cancel()

    def elected_at(self) -> list[float]:
        return [t for t, kind, _ in self.events if kind == "elected"]

    def lost_at(self) -> list[float]:
        return [t for t, kind, _ in self.events if kind == "lost"]


def run(clock: Clock, seconds: float, step: float = 0.1) -> None:
    for _ in range(int(round(seconds / step))):
        clock.advance(step)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(clock) -> MemoryLeaseStore:
    return MemoryLeaseStore(clock)


def test_one_node_acquires_and_renews(clock, store):
    a = Node("a", store, clock).start()
    assert a.lease.leader and a.lease.term == 1
    assert store.keys[KEY][0] == holder_value(1, "a")
    run(clock, 60)
    # Still the same term a minute later: every renewal pushed the expiry on.
    assert a.events == [(0, "elected", 1)]
    assert a.lease.leader
    assert store.keys[KEY][1] > clock.seconds() + TIMING.ttl - TIMING.renew_every - 0.01


def test_a_second_node_stands_by(clock, store):
    a = Node("a", store, clock).start()
    b = Node("b", store, clock).start()
    run(clock, 30)
    assert a.lease.leader and not b.lease.leader
    assert b.events == []


def test_holder_death_takeover_within_15_seconds(clock, store):
    a = Node("a", store, clock).start()
    run(clock, 5)
    b = Node("b", store, clock).start()
    run(clock, 7.3)
    died = clock.seconds()
    a.kill()
    run(clock, 20)
    [took] = b.elected_at()
    assert took - died <= 15
    assert b.lease.term == 2
    # Never two leaders: a counted itself leader only until its deadline,
    # before its key could expire.
    assert a.lease.deadline <= took


def test_clean_stop_takeover_within_2_seconds(clock, store):
    a = Node("a", store, clock).start()
    b = Node("b", store, clock).start()
    run(clock, 3.05)
    stopped = clock.seconds()
    a.lease.stop()
    assert a.lost_at() == [stopped]
    assert KEY not in store.keys
    run(clock, 3)
    [took] = b.elected_at()
    assert took - stopped <= 2
    assert b.lease.term == 2


def test_leader_steps_down_when_it_cannot_renew(clock, store):
    a = Node("a", store, clock).start()
    run(clock, 4.05)
    store.down = True  # Redis unreachable from here on
    deadline = a.lease.deadline
    expiry = store.keys[KEY][1]
    run(clock, 15)
    [lost] = a.lost_at()
    # At its deadline, the margin before the key could expire.
    assert lost <= deadline + 0.1
    assert deadline <= expiry - TIMING.margin
    assert not a.lease.leader
    store.down = False
    b = Node("b", store, clock).start()
    run(clock, 12)
    # One of them leads again, with a newer term.
    leaders = [n for n in (a, b) if n.lease.leader]
    assert len(leaders) == 1 and leaders[0].lease.term == 2


def test_a_redis_that_does_not_answer_holds_nothing_up(clock, store):
    a = Node("a", store, clock).start()
    b = Node("b", store, clock).start()
    run(clock, 2.05)
    store.hang = True
    deadline = a.lease.deadline
    run(clock, 12)
    # a stepped down at its deadline although no call ever came back...
    assert a.lost_at() and a.lost_at()[0] <= deadline + 0.1
    store.hang = False
    run(clock, 12)
    # ... and neither node is stuck waiting: one of them leads again.
    assert sum(n.lease.leader for n in (a, b)) == 1


def test_renewal_refused_when_the_key_changed_hands(clock, store):
    a = Node("a", store, clock).start()
    run(clock, 1)
    store.keys[KEY] = (holder_value(7, "intruder"), clock.seconds() + 10)
    run(clock, 3)
    assert a.lost_at() and not a.lease.leader


def test_409_conflict_loses_leadership_and_waits_before_trying_again(clock, store):
    a = Node("a", store, clock).start()
    b = Node("b", store, clock).start()
    run(clock, 2)
    a.lease.lose("409 Conflict from Telegram")
    assert a.lost_at() == [clock.seconds()]
    lost = clock.seconds()
    run(clock, 2)
    [took] = b.elected_at()
    assert took - lost <= 2
    # b stops too, cleanly: a is in its cool-down, so it comes back only after it.
    b.lease.stop()
    run(clock, 30)
    assert a.elected_at()[-1] >= lost + TIMING.cooldown


def test_database_floor_raises_the_term(clock, store):
    """A Redis that lost its data starts terms from 1 again; the database's
    term (the floor) keeps the new ones above every old one."""
    a = Node("a", store, clock).start()
    assert a.lease.term == 1
    a.lease.lose("fenced", floor=41)
    store.keys.clear()
    store.terms.clear()
    run(clock, TIMING.cooldown + 1)
    assert a.lease.term == 42


def test_stopped_node_does_not_take_the_lease(clock, store):
    a = Node("a", store, clock).start()
    a.lease.stop()
    run(clock, 5)
    assert not a.lease.leader and KEY not in store.keys


# -- the real Redis ----------------------------------------------------------------

REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379


async def redis_or_skip() -> Any:
    try:
        import txredisapi
    except ImportError:
        pytest.skip("txredisapi is not installed (pip install 'chatserv[cluster]')")
    from twisted.internet import reactor

    try:
        conn = await txredisapi.Connection(REDIS_HOST, REDIS_PORT, reconnect=False, connectTimeout=2)
    except Exception as e:
        pytest.skip(f"Redis is not reachable at {REDIS_HOST}:{REDIS_PORT}: {e}")
    del reactor
    return conn


@pytest_twisted.ensureDeferred
async def test_redis_lease_contract():
    conn = await redis_or_skip()
    prefix = f"chatserv-test-lease-{uuid.uuid4().hex[:10]}"
    key = lease_key(prefix, 42)
    redis = RedisLeaseStore(conn)
    try:
        term = await redis.acquire(key, "a", 2000)
        assert term == 1
        assert await redis.acquire(key, "b", 2000) is None  # held
        assert await conn.get(key) == "1:a"
        assert 0 < await conn.execute_command("PTTL", key) <= 2000
        assert await redis.renew(key, "1:a", 5000)
        assert 2000 < await conn.execute_command("PTTL", key) <= 5000
        assert not await redis.renew(key, "1:b", 5000)  # only the holder renews
        assert not await redis.release(key, "0:a")  # nor deletes
        assert await redis.release(key, "1:a")
        assert await conn.exists(key) == 0
        # The term only grows, and never below the floor.
        assert await redis.acquire(key, "b", 2000) == 2
        assert await redis.release(key, "2:b")
        assert await redis.acquire(key, "c", 2000, floor=10) == 11
        # Expiry frees it.
        assert await redis.renew(key, "11:c", 50)
        from twisted.internet import reactor
        from twisted.internet.task import deferLater

        await deferLater(reactor, 0.2, lambda: None)
        assert await redis.acquire(key, "d", 2000) == 12
    finally:
        await conn.delete([key, key.rsplit(":", 1)[0] + ":term"])
        await conn.disconnect()


@pytest_twisted.ensureDeferred
async def test_redis_lease_takeover_on_the_reactor():
    """Two Lease objects on the real reactor and Redis, short timings: the
    stand-by takes over after a clean stop, and after the holder goes silent."""
    conn = await redis_or_skip()
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    prefix = f"chatserv-test-lease-{uuid.uuid4().hex[:10]}"
    key = lease_key(prefix, 42)
    timing = LeaseTiming(ttl=1.0, renew_every=0.2, retry_every=0.05, margin=0.2, cooldown=1.0)
    events: list[tuple[str, str, Any]] = []

    def lease(name: str) -> Lease:
        return Lease(
            RedisLeaseStore(conn),
            key,
            reactor,
            lambda term: events.append((name, "elected", term)),
            lambda reason: events.append((name, "lost", reason)),
            node=name,
            timing=timing,
        )

    async def until(check: Any, limit: float = 5.0) -> None:
        for _ in range(int(limit / 0.02)):
            if check():
                return
            await deferLater(reactor, 0.02, lambda: None)
        raise AssertionError(f"timed out; events: {events}")

    a, b, c = lease("a"), lease("b"), lease("c")
    try:
        a.start()
        await until(lambda: a.leader)
        b.start()
        await deferLater(reactor, 0.5, lambda: None)
        assert a.leader and not b.leader
        await a.stop()
        await until(lambda: b.leader, limit=2.0)
        # b goes silent (killed): c takes over once the key expires.
        c.start()
        b.running = False
        for call in (b._call, b._expiry):
            if call is not None and call.active():
                call.cancel()
        await until(lambda: c.leader, limit=3.0)
        assert [e[2] for e in events if e[1] == "elected"] == [1, 2, 3]
    finally:
        for each in (a, b, c):
            each.running = False
            for call in (each._call, each._expiry):
                if call is not None and call.active():
                    call.cancel()
        await conn.delete([key, key.rsplit(":", 1)[0] + ":term"])
        await conn.disconnect()
