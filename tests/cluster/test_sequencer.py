"""The stream's delivery logic on a bus that drops, duplicates and delays
notices: every node delivers every committed event exactly once, in
position order (issue 9's property test).

Each simulated node is what RedisCluster is around its Sequencer: it offers
its own commits at once, publishes one notice per commit and a heartbeat
naming its last position every second, offers what it hears, and catches up
from the "database" (a list, read with a random delay, bounded by the
position committed when the read starts, as ``events_after`` is) at every
reconnect. Retention may delete old events, leaving holes in the stream.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from chatserv.bus.memory import MemoryBus, MemoryRedis
from chatserv.cluster_redis.sequencer import Sequencer

CHANNEL = "t:bus"


@dataclass
class Event:
    pos: int
    origin: int


class Database:
    def __init__(self, clock: Clock, rng: random.Random) -> None:
        self.clock = clock
        self.rng = rng
        self.events: dict[int, Event] = {}
        self.position = 0

    def commit(self, origin: int) -> Event:
        self.position += 1
        event = self.events[self.position] = Event(self.position, origin)
        return event

    def read(self, after: int, limit: int) -> Deferred[list[Event]]:
        bound = self.position  # what is committed when the read starts
        d: Deferred[list[Event]] = Deferred()

        def answer() -> None:
            found = [self.events[p] for p in range(after + 1, bound + 1) if p in self.events]
            d.callback(found[:limit])

        self.clock.callLater(self.rng.random() * 0.05, answer)
        return d


class Node:
    def __init__(self, number: int, redis: MemoryRedis, db: Database, clock: Clock, page: int) -> None:
        self.number = number
        self.db = db
        self.bus = MemoryBus(redis)
        self.got: list[int] = []
        self.committed = 0
        self.sequencer = Sequencer(clock, lambda e: self.got.append(e.pos), db.read, 0, page=page)
        self.bus.start(CHANNEL, self.heard, self.ready)

    def ready(self, up: bool) -> None:
        if up:
            self.sequencer.catch_up()

    def heard(self, data: str) -> None:
        notice = json.loads(data)
        if notice["n"] == self.number:
            return
        if notice["t"] == "h":
            self.sequencer.heard_of(notice["pos"])
        else:
            self.sequencer.offer(Event(notice["pos"], notice["n"]))

    def commit(self) -> None:
        event = self.db.commit(self.number)
        self.committed = event.pos
        if self.bus.ready:
            self.bus.publish(CHANNEL, json.dumps({"t": "m", "n": self.number, "pos": event.pos}))
        self.sequencer.offer(event)

    def beat(self) -> None:
        if self.bus.ready:
            self.bus.publish(CHANNEL, json.dumps({"t": "h", "n": self.number, "pos": self.committed}))


steps = st.lists(
    st.one_of(
        st.tuples(st.just("commit"), st.integers(0, 2)),
        st.tuples(st.just("wait"), st.floats(0, 0.3)),
        st.tuples(st.just("cut"), st.integers(0, 2)),
        st.tuples(st.just("mend"), st.integers(0, 2)),
        st.tuples(st.just("retain"), st.integers(0, 2)),
    ),
    max_size=120,
)


@settings(max_examples=150, deadline=None)
@given(
    steps=steps,
    seed=st.integers(0, 2**32),
    drop=st.floats(0, 0.6),
    duplicate=st.floats(0, 0.4),
    delay=st.floats(0, 0.5),
    page=st.integers(1, 8),
)
def test_every_node_delivers_every_commit_once_in_order(steps, seed, drop, duplicate, delay, page):
    clock = Clock()
    rng = random.Random(seed)
    redis = MemoryRedis(clock, rng, drop=drop, duplicate=duplicate, delay=delay)
    db = Database(clock, rng)
    nodes = [Node(n, redis, db, clock, page) for n in range(3)]
    deleted: set[int] = set()
    for what, arg in steps:
        if what == "commit":
            nodes[arg].commit()
        elif what == "wait":
            clock.advance(arg)
        elif what == "cut":
            nodes[arg].bus.disconnect()
        elif what == "mend":
            nodes[arg].bus.connect()
        elif what == "retain" and db.position:
            # Retention deletes the oldest events everyone has seen already
            # (a message is retained for days; nodes are seconds behind).
            seen = min(node.sequencer.delivered for node in nodes)
            for pos in range(1, min(seen, arg * 3) + 1):
                if db.events.pop(pos, None) is not None:
                    deleted.add(pos)
        for node in nodes:  # heartbeats, now and then
            if rng.random() < 0.2:
                node.beat()
    # Quiet: the bus works again, everyone connected, heartbeats go on.
    redis.drop = redis.duplicate = 0.0
    for node in nodes:
        node.bus.connect()
    for _ in range(40):
        clock.advance(0.25)
        for node in nodes:
            node.beat()
    expected = [p for p in range(1, db.position + 1) if p not in deleted]
    for node in nodes:
        got = [p for p in node.got if p not in deleted]
        assert got == expected, f"node {node.number}"
        assert node.got == sorted(set(node.got)), f"node {node.number}: duplicates or disorder"
        assert node.sequencer.waiting == 0
