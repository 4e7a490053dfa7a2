"""Accounts in a cluster: failed logins count on every node (issue 9:
"auth_failed throttling works cluster-wide"), kept in Redis; a lone node
keeps its own counts only."""

from __future__ import annotations

import random

import pytest_twisted
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from chatserv.accounts import WRONG, Accounts
from chatserv.bus.memory import MemoryBus, MemoryRedis
from chatserv.cluster_redis.failures import RedisFailures
from chatserv.hashing import HashPool
from chatserv.storage import open_store
from tests.storage.test_accounts import FAST, fails
from tests.support import sleep


@pytest_twisted.async_yield_fixture
async def two_nodes(tmp_path):
    """Two nodes' accounts on one database and one (in-memory) Redis."""
    from twisted.internet import reactor

    store = open_store(str(tmp_path / "accounts.sqlite3"), reactor)
    clock = Clock()
    clock.advance(1_800_000_000)
    redis = MemoryRedis(clock, random.Random(1))
    hashing = HashPool(reactor)
    hashing.startService()
    nodes = []
    for _ in range(2):
        accounts = Accounts(store, clock, hashing.queue, hasher=FAST)
        bus = MemoryBus(redis)
        bus.start("t:bus", lambda data: None, lambda ready: None)
        bus.connect()
        accounts.shared = RedisFailures(bus, "t", clock)
        nodes.append(accounts)
    yield nodes
    hashing.stopService()
    await store.close()


@pytest_twisted.ensureDeferred
async def test_a_guesser_spreading_over_nodes_is_throttled_on_all(two_nodes):
    one, two = two_nodes
    await one.register("Ana", "correcto123", "10.0.0.1")
    free = one.by_account.free
    for i in range(free):  # spread over both nodes: each alone is under its free count
        node = (one, two)[i % 2]
        e = await fails(node.authenticate("Ana", f"mal{i}", "10.6.6.6"))
        assert str(e) == WRONG
    e = await fails(two.authenticate("Ana", "mal", "10.6.6.6"))
    assert str(e) == WRONG
    # The guesser has used the account's free failures, cluster-wide.
    for node in (one, two):
        e = await fails(node.authenticate("Ana", "correcto123", "10.6.6.6"))
        assert "vuelve a intentarlo en 1 s" in str(e)
    one.clock.advance(1.0)
    identity = await one.authenticate("ana", "correcto123", "10.6.6.6")
    assert identity.account
    # The owner from its own address was never slowed.
    assert (await two.authenticate("Ana", "correcto123", "10.0.0.1")).account


@pytest_twisted.ensureDeferred
async def test_without_redis_each_node_counts_alone(two_nodes):
    one, two = two_nodes
    one.shared.bus.disconnect()
    two.shared.bus.disconnect()
    for i in range(one.by_account.free + 1):
        await fails(one.authenticate("Ana", f"mal{i}", "10.6.6.6"))
    e = await fails(one.authenticate("Ana", "mal", "10.6.6.6"))
    assert "vuelve a intentarlo" in str(e)  # this node's own counts still hold
    e = await fails(two.authenticate("Ana", "mal", "10.6.6.6"))
    assert str(e) == WRONG


@pytest_twisted.ensureDeferred
async def test_counters_on_a_real_redis(redis_url, cluster_name):
    """The Lua behind counter_add/counter_read, on a real Redis."""
    from twisted.internet import reactor

    from chatserv.bus.redis import RedisBus

    bus = RedisBus(redis_url, reactor)
    ready: Deferred[bool] = Deferred()

    def up(is_up: bool) -> None:
        if is_up and not ready.called:
            ready.callback(True)

    bus.start(f"{cluster_name}:bus", lambda data: None, up)
    try:
        await ready
        key = f"{cluster_name}:fail:test"
        assert await bus.counter_read(key) == (0, -2)
        assert await bus.counter_add(key, 1, 60_000) == 1
        assert await bus.counter_add(key, 1, 60_000) == 2
        value, left = await bus.counter_read(key)
        assert value == 2 and 50_000 < left <= 60_000
        assert await bus.counter_add(key, -1) == 1
        assert (await bus.counter_read(key))[1] > 50_000  # the expiry stays
        assert await bus.counter_add(key, -1) == 0
        assert await bus.counter_read(key) == (0, -2)  # deleted at 0
        assert await bus.counter_add(key, 1, 50) == 1
        await sleep(0.2)
        assert await bus.counter_read(key) == (0, -2)  # expired
    finally:
        await bus.stop()
