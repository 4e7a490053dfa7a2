"""RedisCluster on the in-memory bus: several hubs in one process, on one
fake clock, sharing a "database" (a list with positions). Names, presence,
reaping, health, and the stream, without a network."""

from __future__ import annotations

import random
from typing import Any

import pytest
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock

from chatserv.bus.memory import MemoryBus, MemoryRedis
from chatserv.cluster_redis import RedisCluster
from chatserv.errors import NameTaken, ServerBusy
from chatserv.events import MessageIds
from chatserv.hub import GENERAL, Hub
from chatserv.names import name_key
from tests.test_hub import Recorder


class SharedLog:
    """One database for every node: commits at the end of the turn, with positions."""

    keeps_history = False

    def __init__(self, clock: Clock, events: list[Any]) -> None:
        self.clock = clock
        self.events = events
        self._queue: list[tuple[Any, Any]] = []

    def append_then(self, message: Any, deliver: Any) -> None:
        self._add(message, deliver)

    def correct_then(self, correction: Any, deliver: Any) -> None:
        self._add(correction, deliver)

    def _add(self, item: Any, deliver: Any) -> None:
        if not self._queue:
            self.clock.callLater(0, self._commit)
        self._queue.append((item, deliver))

    def _commit(self) -> None:
        queue, self._queue = self._queue, []
        for item, deliver in queue:
            self.events.append(item)
            item.pos = len(self.events)
            deliver(item)

    def congested(self) -> bool:
        return False

    def events_after(self, pos: int, limit: int) -> Deferred[list[Any]]:
        return succeed(self.events[pos : pos + limit])


class Chat:
    def __init__(self, drop: float = 0.0) -> None:
        self.clock = Clock()
        self.redis = MemoryRedis(self.clock, random.Random(1), drop=drop)
        self.events: list[Any] = []
        self.nodes: list[tuple[Hub, RedisCluster]] = []
        self._ids = 0

    def node(self) -> tuple[Hub, RedisCluster]:
        self._ids += 1
        log = SharedLog(self.clock, self.events)
        cluster = RedisCluster(
            MemoryBus(self.redis), self.clock, log.events_after, len(self.events),
            MessageIds(self._ids * 1000), name="t", node=f"n{self._ids}",
        )
        hub = Hub(self.clock, store=log, cluster=cluster)
        cluster.start()
        self.nodes.append((hub, cluster))
        return hub, cluster

    def run(self, seconds: float, step: float = 0.05) -> None:
        for _ in range(int(seconds / step)):
            self.clock.advance(step)


def login(hub: Hub, chat: Chat, name: str) -> tuple[Any, Recorder]:
    recorder = Recorder(name)
    d = hub.claim(name)
    assert d is not None
    results: list[Any] = []
    d.addBoth(results.append)
    chat.run(0.1)
    if results and results[0] is not None:
        raise results[0].value
    return hub.login(recorder, name), recorder


@pytest.fixture
def chat() -> Chat:
    return Chat()


def test_members_and_messages_cross_nodes(chat):
    (one, _), (two, _) = chat.node(), chat.node()
    ana, ra = login(one, chat, "Ana")
    luis, rl = login(two, chat, "Luis")
    chat.run(0.2)
    assert sorted(one.users()) == sorted(two.users()) == ["Ana", "Luis"]
    one.broadcast(ana, "hola")
    two.private(luis, "ana", "psst")
    chat.run(0.2)
    assert [m.text for m in rl.take("message")] == ["hola", "psst"]  # and its copy
    assert [m.text for m in ra.take("message")] == ["hola", "psst"]
    two.logout(luis)
    chat.run(0.2)
    assert one.users() == ("Ana",)


def test_one_login_wins_a_name_across_nodes(chat):
    (one, _), (two, _) = chat.node(), chat.node()
    first, second = one.claim("Ana"), two.claim("ANA")
    outcomes: list[Any] = []
    first.addBoth(outcomes.append)
    second.addBoth(outcomes.append)
    chat.run(0.1)
    assert outcomes[0] is None and outcomes[1].check(NameTaken)


def test_a_reservation_no_login_takes_is_given_back(chat):
    (one, _), (two, _) = chat.node(), chat.node()
    one.claim("Ana")  # the client left before its login
    chat.run(11)
    _, recorder = login(two, chat, "Ana")
    assert two.find("Ana") is not None


def test_a_dead_node_is_reaped_and_its_users_leave(chat):
    (one, _), (two, dead) = chat.node(), chat.node()
    ana, ra = login(one, chat, "Ana")
    login(two, chat, "Luis")
    chat.run(1)
    assert one.users() == ("Ana", "Luis")
    # The process dies: no clean stop, its heartbeats just end.
    for loop in dead._loops:
        loop.stop()
    dead.bus.disconnect()
    chat.run(10)  # alive key expired (5 s), then a look every 2 s
    assert one.users() == ("Ana",)
    # Its names are free again.
    login(one, chat, "LUIS")


def test_nodes_without_redis_refuse_new_names_and_report_unhealthy(chat):
    (one, cluster), _ = chat.node(), chat.node()
    chat.run(5)
    assert cluster.health_problems() == []
    cluster.bus.disconnect()
    with pytest.raises(ServerBusy):
        one.claim("Ana")
    assert cluster.health_problems()
    cluster.bus.connect()
    chat.run(2)
    assert cluster.health_problems() == []


def test_a_lost_notice_is_read_from_the_database(chat):
    chat.redis.drop = 1.0  # nothing arrives through the bus
    (one, _), (two, _) = chat.node(), chat.node()
    chat.redis.drop = 0.0
    ana, ra = login(one, chat, "Ana")
    luis, rl = login(two, chat, "Luis")
    chat.redis.drop = 1.0
    one.broadcast(ana, "perdido")
    chat.run(0.2)
    assert rl.take("message") == []
    chat.redis.drop = 0.0  # heartbeats get through again, naming the position
    chat.run(2)
    assert [m.text for m in rl.take("message")] == ["perdido"]


def pause(cluster: RedisCluster, chat: Chat, seconds: float) -> None:
    """A node whose reactor is saturated (a login storm): no heartbeat, no
    look for dead nodes, nothing heard, for *seconds*; then it goes on."""
    loops, cluster._loops = cluster._loops, []
    for loop in loops:
        loop.stop()
    hear, cluster.bus._on_message = cluster.bus._on_message, lambda data: None  # type: ignore[attr-defined]
    chat.run(seconds)
    cluster.bus._on_message = hear  # type: ignore[attr-defined]
    cluster.start_loops()


def test_a_late_node_is_not_reaped(chat):
    """Its alive key expires for a moment: a live node, late, keeps its users' names."""
    (one, _), (two, late) = chat.node(), chat.node()
    login(one, chat, "Ana")
    login(two, chat, "Luis")
    chat.run(1)
    pause(late, chat, 7.5)  # the key expired 1.5-2.5 s ago
    assert one.users() == ("Ana", "Luis")
    assert chat.redis.data.get("t:name:" + name_key("Luis")) == "n2"
    chat.run(6)
    assert one.users() == ("Ana", "Luis")
    with pytest.raises(NameTaken):
        login(one, chat, "LUIS")


def test_a_node_taken_for_dead_takes_its_names_back_or_evicts(chat):
    """Reaped while alive (and deaf to the ``g`` notice): at its next beat it
    finds its alive key gone, re-asserts its names and members, and a session
    whose name another node gave away meanwhile is evicted with name_taken."""
    (one, _), (two, late) = chat.node(), chat.node()
    login(one, chat, "Ana")
    luis, _ = login(two, chat, "Luis")
    bea, _ = login(two, chat, "Bea")
    chat.run(1)
    loops, late._loops = late._loops, []
    for loop in loops:
        loop.stop()
    hear, late.bus._on_message = late.bus._on_message, lambda data: None
    chat.run(14)
    assert one.users() == ("Ana",)  # reaped: a dead node's users leave
    login(one, chat, "LUIS")  # the name is free: someone else takes it
    late.bus._on_message = hear
    late.start_loops()
    chat.run(3)
    assert two.find("Luis") is None  # evicted: the other node's session keeps it
    assert two.find("Bea") is bea
    assert chat.redis.data.get("t:name:" + name_key("Bea")) == "n2"
    assert chat.redis.data.get("t:name:" + name_key("Luis")) == "n1"
    assert sorted(one.users()) == ["Ana", "Bea", "LUIS"]
    assert sorted(two.users()) == ["Ana", "Bea", "LUIS"]


def test_a_name_online_on_another_node_is_held_for_register(chat):
    (one, _), (two, _) = chat.node(), chat.node()
    _, ra = login(one, chat, "Ana")
    chat.run(0.5)
    assert two.online_holder("ANA") == "Ana"  # register refuses it there too
    assert one.online_holder("ana", ra) is None  # Ana may register her own name
    assert one.online_holder("Bea") is None and two.online_holder("Bea") is None


def test_rooms_lists_every_nodes_rooms_with_every_nodes_members(chat):
    (one, _), (two, _) = chat.node(), chat.node()
    ana, _ = login(one, chat, "Ana")
    luis, _ = login(two, chat, "Luis")
    bea, _ = login(two, chat, "Bea")
    one.join(ana, "Cocina")
    two.join(luis, "Cocina")
    two.join(bea, "Jardín")
    chat.run(0.5)
    for hub in (one, two):
        listed, more, total = hub.room_listing()
        assert listed == [("Cocina", 2), (GENERAL, 3), ("Jardín", 1)] and not more and total == 3
    assert one.room_listing("cocina", limit=1) == ([(GENERAL, 3)], True, 3)
    two.leave(bea, "Jardín")
    chat.run(0.5)
    assert one.room_listing()[0] == [("Cocina", 2), (GENERAL, 3)]


def test_a_private_message_reaches_only_who_held_the_name_when_it_was_sent(chat):
    """Read back from the database after its notice was lost: the guest who
    took the recipient's name meanwhile must not get it; a recipient who was
    online when it was sent still does."""
    (one, _), (two, _) = chat.node(), chat.node()
    ana, ra = login(one, chat, "Ana")
    luis, rl = login(two, chat, "Luis")
    bea, rb = login(two, chat, "Bea")
    chat.run(0.5)
    chat.redis.drop = 1.0  # the notices are lost: node two reads them back later
    one.private(ana, "Luis", "solo para Luis")
    one.private(ana, "Bea", "para Bea")
    chat.run(0.2)
    two.logout(luis)
    chat.run(0.2)
    impostor, ri = login(two, chat, "LUIS")  # another guest takes the name
    chat.redis.drop = 0.0  # heartbeats name the position: node two catches up
    chat.run(2)
    assert [m.text for m in rb.take("message")] == ["para Bea"]
    assert ri.take("message") == []
    assert rl.take("message") == []
    assert [m.text for m in ra.take("message")] == ["solo para Luis", "para Bea"]  # the sender's copies


def test_a_reservation_found_taken_when_reasserting_fails_its_login(chat):
    """A login was waiting on its reservation when this node was taken for
    dead and the name went elsewhere: the login gets name_taken."""
    (one, cluster), _ = chat.node(), chat.node()
    d = one.claim("Luis")
    chat.run(0.1)
    assert d.called
    key = name_key("Luis")
    chat.redis.data[f"t:name:{key}"] = "n2"  # given to node two meanwhile
    cluster.names.assert_own()
    chat.run(0.1)
    with pytest.raises(NameTaken):
        one.login(Recorder("Luis"), "Luis")
    assert chat.redis.data[f"t:name:{key}"] == "n2"


def test_a_commit_is_published_before_this_node_delivers_it(chat):
    """The other nodes must not wait for this node's own fan-out (a long run
    of sends in a large room): the notice goes to the bus first."""
    (one, cluster), (two, _) = chat.node(), chat.node()
    ana, ra = login(one, chat, "Ana")
    login(two, chat, "Luis")
    chat.run(0.2)
    ra.take()
    order: list[str] = []
    publish = cluster.bus.publish

    def recording_publish(channel: str, data: str, **kw: Any) -> Any:
        order.append("published " + ("hola" if "hola" in data else "other"))
        return publish(channel, data, **kw)

    def recording_receive(message: Any) -> None:
        order.append("delivered " + message.text)

    cluster.bus.publish = recording_publish  # type: ignore[method-assign]
    ra.receive_message = recording_receive  # type: ignore[method-assign]
    ra.receive_own = recording_receive  # type: ignore[method-assign]
    one.broadcast(ana, "hola")
    chat.run(0.2)
    assert order == ["published hola", "delivered hola"]


def test_a_publication_that_raises_still_delivers_here(chat):
    (one, cluster), (two, _) = chat.node(), chat.node()
    ana, ra = login(one, chat, "Ana")
    luis, rl = login(two, chat, "Luis")
    chat.run(0.2)
    ra.take()
    rl.take()

    publish = cluster.bus.publish

    def broken_publish(channel: str, data: str, **kw: Any) -> Any:
        if "hola" in data:
            raise ValueError("a client library bug")
        return publish(channel, data, **kw)

    cluster.bus.publish = broken_publish  # type: ignore[method-assign]
    one.broadcast(ana, "hola")
    chat.run(0.2)
    assert [e.text for k, e in ra.events if k in ("own", "message")] == ["hola"]
    # The other node finds it by the gap it leaves, on the next heartbeat.
    chat.run(3.0)
    assert [m.text for m in rl.take("message")] == ["hola"]
