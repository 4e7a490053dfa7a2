"""The Telegram bridge on several nodes (chatserv.bridge.cluster): one leader
at a time by a lease in the real Redis, the state in the real PostgreSQL,
the real python-telegram-bot against the fake Bot API.

The nodes are ClusteredBridge services on one chat server's hub: the hub
stands for a cluster whose bus delivers everything; what is tested here is
the hand-over between bridges, with deaths placed where real processes
cannot place them (tests/cluster/test_telegram_failover.py runs real nodes). The takeover times
are printed (``pytest -s``), not asserted: the fake-clock tests in
test_lease.py bound them.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted

from chatserv.bridge import BridgeConfig
from chatserv.bridge.cluster import ClusteredBridge
from chatserv.bridge.lease import LeaseTiming
from chatserv.bridge.pgstate import PostgresBackend
from chatserv.bridge.state import BridgeState, Fenced
from tests.bridge.conftest import FAST, reactor
from tests.bridge.fakebot import GROUP, TOKEN, FakeBotAPI
from tests.bridge.test_faults import wait_for
from tests.storage.conftest import fresh_schema
from tests.support import LineClient, connect, sleep, start_server

LUIS = FakeBotAPI.user(42, "Luis")
REDIS = "redis://127.0.0.1:6379/0"


def redis_unavailable() -> str | None:
    try:
        import txredisapi  # noqa: F401
    except ImportError:
        return "txredisapi is not installed (pip install 'chatserv[cluster]')"
    import socket

    try:
        socket.create_connection(("127.0.0.1", 6379), timeout=2).close()
    except OSError as e:
        return f"Redis is not reachable at 127.0.0.1:6379: {e}"
    return None


@pytest.fixture
def pg_url() -> Iterator[str]:
    reason = redis_unavailable()
    if reason:
        pytest.skip(reason)
    with fresh_schema("chatserv_tg") as (url, _):
        yield url


@pytest_twisted.async_yield_fixture
async def cluster(fakebot, pg_url):
    c = Cluster(fakebot, pg_url)
    yield c
    await c.close()


class Cluster:
    """One chat server, several bridge nodes, the fake Bot API."""

    def __init__(self, fake: FakeBotAPI, pg_url: str) -> None:
        self.fake = fake
        self.pg_url = pg_url
        self.name = f"chatserv-test-{uuid.uuid4().hex[:10]}"
        self.server: Any = None
        self.nodes: list[ClusteredBridge] = []
        self.clients: list[LineClient] = []

    def config(self) -> BridgeConfig:
        return BridgeConfig(
            chat_id=GROUP,
            token=TOKEN,
            api_url=self.fake.url,
            cluster_url=REDIS,
            cluster_name=self.name,
            db_url=self.pg_url,
            **FAST,
        )

    async def node(self, name: str, timing: LeaseTiming | None = None, **options: Any) -> ClusteredBridge:
        if self.server is None:
            self.server = await start_server()
        node = ClusteredBridge(
            self.config(), self.server.hub, reactor(), self.server.store, timing=timing, node=name, **options
        )
        node.startService()
        self.nodes.append(node)
        return node

    async def client(self, name: str) -> LineClient:
        client = await connect(self.server)
        self.clients.append(client)
        await client.login(name)
        return client

    async def close(self) -> None:
        for client in self.clients:
            client.close()
        for node in self.nodes:
            if node.running:
                await node.stopService()
        if self.server is not None:
            await self.server.stopService()


async def leading(node: ClusteredBridge, timeout: float = 30.0) -> float:
    """Wait until *node* runs a bridge that polls; return when (monotonic)."""
    d = node.elected()
    d.addTimeout(timeout, reactor())
    bridge = await d
    await bridge.ready
    return time.monotonic()


def crash(node: ClusteredBridge) -> None:
    """Kill *node* as SIGKILL would, as far as the bridge is concerned: its
    lease is neither renewed nor released, its state writes nothing more,
    its bridge sends and polls no more (its hub sessions go, as a dead
    node's users do)."""
    node.running = False
    lease = node.lease
    if lease is not None:
        lease.running = False
        for call in (lease._call, lease._expiry):
            if call is not None and call.active():
                call.cancel()
        lease.term = None
    bridge, node.active = node.active, None
    if bridge is not None:
        bridge.state.fenced = bridge.state.fenced or Fenced(0)
        bridge.stopService()


def from_luis(frames: list[dict[str, Any]]) -> list[str]:
    return [f["msg"] for f in frames if f.get("from") == "Luis (TG)"]


async def frames(client: LineClient, quiet: float = 0.3) -> list[dict[str, Any]]:
    import json

    return [json.loads(line) for line in await client.quiet(quiet) if line.startswith(b"{")]


@pytest_twisted.ensureDeferred
async def test_failover_relays_every_update_and_line_once(cluster):
    fake = cluster.fake
    a = await cluster.node("a")
    await leading(a)
    b = await cluster.node("b")
    ana = await cluster.client("Ana")
    seen: list[dict[str, Any]] = []

    # Before the failover: both ways through a.
    fake.say(LUIS, "u1")
    fake.say(LUIS, "u2")
    await ana.expect("broadcast", msg="u2")
    ana.send(cmd="broadcast", msg="c1")
    await fake.wait_sent(1)
    # (Until the bridge has heard Telegram's answer: cutting it off before
    # would make it send c1 again, at least once being all Telegram allows.)
    await wait_for(lambda: a.queue_depth() == 0)
    assert b.active is None and fake.conflicts == 0

    # Telegram refuses sends with chat lines queued (in the shared outbox)...
    fake.fail("sendMessage", "500", times=1000)
    ana.send(cmd="broadcast", msg="c2")
    ana.send(cmd="broadcast", msg="c3")
    await ana.expect("broadcast", msg="c3")
    await wait_for(lambda: a.queue_depth() == 2, timeout=3)
    assert a.active is not None
    await a.active.state.flush()
    # ... and the leader dies.
    crash(a)
    killed = time.monotonic()
    fake.fail_clear()
    # Said while no node bridges: an update, and a chat line.
    fake.say(LUIS, "u3")
    ana.send(cmd="broadcast", msg="c4")
    await ana.expect("broadcast", msg="c4")

    took = await leading(b)
    after_kill = took - killed
    fake.say(LUIS, "u4")
    await wait_for(lambda: len(fake.group_lines()) >= 4)
    await sleep(0.5)
    seen += await frames(ana)

    # A third node waits; b stops cleanly and c takes over.
    c = await cluster.node("c")
    await sleep(0.3)
    assert c.active is None
    stopping = time.monotonic()
    await b.stopService()
    took = await leading(c)
    after_stop = took - stopping
    fake.say(LUIS, "u5")
    ana.send(cmd="broadcast", msg="c5")
    await wait_for(lambda: len(fake.group_lines()) >= 5)
    await sleep(0.5)
    seen += await frames(ana)

    print(
        f"\nTelegram bridge takeover: {after_kill:.2f} s after a kill, {after_stop:.2f} s after a clean stop"
    )
    # Every update once, in order (u1 and u2 were read above).
    assert from_luis(seen) == ["u3", "u4", "u5"]
    # Every chat line once, in order.
    assert fake.group_lines() == ["Ana: c1", "Ana: c2", "Ana: c3", "Ana: c4", "Ana: c5"]
    assert fake.conflicts == 0
    assert [n.terms for n in (a, b, c)] == [[1], [2], [3]]


@pytest_twisted.ensureDeferred
async def test_death_between_the_chat_commit_and_the_offset(cluster):
    """The leader relays a batch (the chat commits it) and dies before its
    offset is written: the next leader gets the batch again from Telegram
    and relays it again, with the same cids, which the chat stores once
    (without the cids "una" is in the chat twice)."""
    fake = cluster.fake
    dying: list[ClusteredBridge] = []

    class DiesWritingTheOffset(PostgresBackend):
        """The real backend, whose process dies as the batch's offset is
        written: the transaction never commits, nothing more happens."""

        def write(self, ops: Any, meta: dict[str, str]) -> None:
            if meta.get("pending") == "" and dying:
                node = dying.pop()
                reactor().callFromThread(crash, node)
                self.close()
                raise ConnectionError("the process died")
            super().write(ops, meta)

    quick = LeaseTiming(ttl=2.0, renew_every=0.4, retry_every=0.1, margin=0.4)
    a = await cluster.node("a", quick, backend=DiesWritingTheOffset)
    await leading(a)
    b = await cluster.node("b", quick)
    ana = await cluster.client("Ana")
    fake.say(LUIS, "antes")
    await ana.expect("broadcast", msg="antes")
    await sleep(0.2)
    dying.append(a)
    fake.say(LUIS, "una")
    fake.say(LUIS, "dos")
    await wait_for(lambda: not a.running)
    await leading(b)
    fake.say(LUIS, "tres")
    await ana.expect("broadcast", msg="tres", timeout=30)
    await sleep(0.3)
    got = from_luis(await frames(ana))
    # What arrived before "tres" was read by expect; count the whole history.
    history = await cluster.server.store.room_page("general", None, 50)
    relayed = [m.text for m in history if m.sender.endswith("(TG)")]
    assert relayed == ["antes", "una", "dos", "tres"], relayed
    assert got == []


@pytest_twisted.ensureDeferred
async def test_lines_said_without_a_leader_are_found_by_position(cluster):
    """Each node of a cluster numbers messages from blocks of its own, so a
    line said after the last one queued may have a lower id: the new
    leader's catch-up goes by stream position (with ids, c2 is lost)."""
    fake = cluster.fake
    quick = LeaseTiming(ttl=2.0, renew_every=0.4, retry_every=0.1, margin=0.4)
    a = await cluster.node("a", quick)
    await leading(a)
    b = await cluster.node("b", quick)
    ana = await cluster.client("Ana")
    ids = cluster.server.hub.ids
    ids._next = 10_000  # one node's block
    ana.send(cmd="broadcast", msg="c1")
    await fake.wait_sent(1)
    await wait_for(lambda: a.queue_depth() == 0)
    assert a.active is not None
    await a.active.state.flush()
    crash(a)
    ids._next = 500  # another node's, lower
    ana.send(cmd="broadcast", msg="c2")
    await ana.expect("broadcast", msg="c2")
    await leading(b)
    await wait_for(lambda: len(fake.group_lines()) >= 2)
    await sleep(0.3)
    assert fake.group_lines() == ["Ana: c1", "Ana: c2"]


@pytest_twisted.ensureDeferred
async def test_409_conflict_hands_the_bridge_over(cluster):
    """Someone else polls the bot: the leader steps down (409 Conflict is
    lost leadership), and another node takes over from the saved offset."""
    from twisted.web.client import Agent, readBody

    fake = cluster.fake
    timing = LeaseTiming(cooldown=30.0)
    a = await cluster.node("a", timing)
    await leading(a)
    b = await cluster.node("b", timing)
    ana = await cluster.client("Ana")
    fake.say(LUIS, "antes")
    await ana.expect("broadcast", msg="antes")
    await sleep(0.2)
    # A stray poller (short poll, so it does not hold Telegram's slot).
    agent = Agent(reactor())
    response = await agent.request(b"GET", f"{fake.url}{TOKEN}/getUpdates?timeout=0".encode())
    await readBody(response)
    await leading(b)
    assert a.active is None and fake.conflicts >= 1
    fake.say(LUIS, "después")
    await ana.expect("broadcast", msg="después")
    await sleep(0.3)
    assert [f for f in await frames(ana) if f.get("msg") == "antes"] == []


@pytest_twisted.ensureDeferred
async def test_the_database_refuses_a_deposed_leader(pg_url):
    """Fencing: once term 2 has claimed the state, term 1 can write nothing."""
    old = BridgeState(":memory:", reactor(), backend=PostgresBackend(pg_url, "fence-test", 1))
    await old.open()
    old.set_offset(10)
    await old.flush()
    new = BridgeState(":memory:", reactor(), backend=PostgresBackend(pg_url, "fence-test", 2))
    await new.open()
    assert new.offset == 10
    old.set_offset(11)
    with pytest.raises(Fenced) as refused:
        await old.flush()
    assert refused.value.term == 2
    with pytest.raises(Fenced):
        await old.check_term()
    await new.check_term()
    new.set_offset(12)
    await new.flush()
    # A stale term cannot even open the state.
    stale = BridgeState(":memory:", reactor(), backend=PostgresBackend(pg_url, "fence-test", 2))
    with pytest.raises(Fenced):
        await stale.open()
    again = BridgeState(":memory:", reactor(), backend=PostgresBackend(pg_url, "fence-test", 3))
    await again.open()
    assert again.offset == 12
    for state in (old, new, again):
        await state.close()
