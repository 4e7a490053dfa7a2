"""Who is in which room on which node, cluster-wide; and reaping dead nodes.

Each node writes only its own members, to the hash ``PREFIX:members:NODE``
(field ``ROOM_KEY<TAB>NAME_KEY``, value ``ROOM<TAB>NAME``), and announces each
change with a ``p`` notice. Every node keeps, per room, the names of its
members on other nodes (:meth:`Members.elsewhere`, the very dict the hub's
room reads), updated from those notices and, so that a lost notice is not
lost for long, from a full read of the other nodes' hashes at each
reconnect and every :data:`RESYNC` seconds; a difference found that way is
announced to this node's members like any other change.

A node is alive while its key ``PREFIX:alive:NODE`` exists (renewed every
second, with a time to live of 5 s). Survivors look for dead nodes in
``PREFIX:nodes`` every 2 s, and reap one whose key is still missing
:data:`REAP_GRACE` seconds after a look first missed it; the one that takes the lock ``PREFIX:reaping:NODE``
frees the dead node's names, deletes its hash, and sends ``g`` (gone):
every node then announces the dead node's members as having left.

Redis restarting empty, or being out of reach for a while, must not look
like every node dying: a node writes its hash whole (atomically) before it
renews its alive key after a reconnect; a full read trusts the hashes of
live nodes only, and takes a node whose alive key is missing for gone only
when two reads :data:`RESYNC` seconds apart agree (the ``g`` notice is the
fast way); and a node reaps nobody until it has itself been connected for
the alive key's lifetime, so that the others have had time to come back.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, DeferredList, inlineCallbacks
from twisted.internet.interfaces import IReactorTime

from ..bus import Bus
from ..hub import GENERAL
from ..logs import Logger
from ..names import name_key
from . import codec

if TYPE_CHECKING:
    from ..hub import Hub

log = Logger()

#: Seconds between full reads of the other nodes' members.
RESYNC = 10.0
#: Heartbeat key lifetime (ms): a node silent this long is suspected dead.
ALIVE_MS = 5000
#: Seconds a node's alive key must stay missing, from the look that first
#: found it missing, before that node is reaped: a live node whose reactor is
#: saturated (a login storm) renews its key late, and must not lose its
#: users' names for it. A dead node is reaped within ALIVE_MS + REAP_EVERY
#: (the first look that misses it) + 2 * REAP_EVERY (the first look at least
#: REAP_GRACE later): about 11 s after its last heartbeat (issue 9: 15 s).
REAP_GRACE = 3.0


def _field(room: str, name: str) -> str:
    return f"{name_key(room)}\t{name_key(name)}"


class Members:
    def __init__(self, bus: Bus, prefix: str, node: str, channel: str, clock: IReactorTime) -> None:
        self.bus = bus
        self.clock = clock
        #: This turn's changes of this node's members (field -> value, None:
        #: gone) and their notices: written and published together at its
        #: end, so a login storm costs a few commands per turn, not per login.
        self._changes: dict[str, str | None] = {}
        self._notices: list[str] = []
        self.prefix = prefix
        self.node = node
        self.channel = channel
        self.hub: Hub | None = None
        #: room key -> {name key: name} of members on other nodes (live dicts, never replaced).
        self._elsewhere: dict[str, dict[str, str]] = {}
        #: node -> {field: (room, name)}: what each other node has said.
        self._by_node: dict[str, dict[str, tuple[str, str]]] = {}
        self._general = self.elsewhere(name_key(GENERAL))
        #: room key -> the room's name as shown, for rooms heard of from other nodes.
        self._room_names: dict[str, str] = {name_key(GENERAL): GENERAL}
        #: node -> full reads in a row that found it without its alive key.
        self._missing: dict[str, int] = {}
        #: node -> when a reaping look first found its alive key missing.
        self._suspected: dict[str, float] = {}

    def key(self, what: str, node: str | None = None) -> str:
        return f"{self.prefix}:{what}:{node or self.node}"

    # -- reading ------------------------------------------------------------------

    def elsewhere(self, room_key: str) -> dict[str, str]:
        found = self._elsewhere.get(room_key)
        if found is None:
            found = self._elsewhere[room_key] = {}
        return found

    def rooms_elsewhere(self) -> dict[str, tuple[str, int]]:
        """Room key -> (name, members on other nodes), for rooms that have some."""
        return {
            key: (self._room_names.get(key, key), len(members))
            for key, members in self._elsewhere.items()
            if members
        }

    def where(self, key: str) -> str | None:
        """The name as shown of the user *key* online on another node (everyone is in general)."""
        return self._general.get(key)

    # -- this node -----------------------------------------------------------------

    def local_change(self, room: str, joined: str | None, left: str | None) -> None:
        if not self.bus.ready:
            return  # re-asserted whole at the reconnect
        if not self._notices:
            self.clock.callLater(0, self._flush)
        if left is not None:
            self._changes[_field(room, left)] = None
        if joined is not None:
            self._changes[_field(room, joined)] = f"{room}\t{joined}"
        self._notices.append(codec.presence_notice(self.node, room, joined, left))

    def _flush(self) -> None:
        changes, notices = self._changes, self._notices
        self._changes, self._notices = {}, []
        if not notices or not self.bus.ready:
            return
        own = self.key("members")
        joined = {field: value for field, value in changes.items() if value is not None}
        if joined:
            self.bus.hset(own, joined).addErrback(_ignore)
        left = [field for field, value in changes.items() if value is None]
        if left:
            self.bus.hdel(own, left).addErrback(_ignore)
        data = notices[0] if len(notices) == 1 else codec.batch(notices)
        self.bus.publish(self.channel, data).addErrback(_ignore)

    def assert_own(self) -> Deferred[Any]:
        """Write this node's whole membership again (after a reconnect)."""
        assert self.hub is not None
        mapping = {
            _field(room, session.name): f"{room}\t{session.name}"
            for session in self.hub.sessions.values()
            for room in session.rooms
        }
        return DeferredList(
            [
                self.bus.replace_hash(self.key("members"), mapping),
                self.bus.sadd(f"{self.prefix}:nodes", [self.node]),
            ],
            fireOnOneErrback=True,
            consumeErrors=True,
        )

    def forget_all(self) -> Deferred[Any]:
        """A clean stop: remove this node now, and tell the others."""
        self._changes, self._notices = {}, []
        return DeferredList(
            [
                self.bus.delete(self.key("members"), self.key("alive")),
                self.bus.srem(f"{self.prefix}:nodes", [self.node]),
                self.bus.publish(self.channel, codec.gone_notice(self.node)),
            ],
            consumeErrors=True,
        )

    # -- other nodes ---------------------------------------------------------------

    def remote_change(self, node: str, room: str, joined: str | None, left: str | None) -> None:
        known = self._by_node.setdefault(node, {})
        if left is not None:
            if known.pop(_field(room, left), None) is not None:
                self._left(room, left)
        if joined is not None:
            field = _field(room, joined)
            if field not in known:
                known[field] = (room, joined)
                self._joined(room, joined)

    def node_gone(self, node: str) -> None:
        for room, name in self._by_node.pop(node, {}).values():
            self._left(room, name)

    def _joined(self, room: str, name: str) -> None:
        key = name_key(room)
        self.elsewhere(key)[name_key(name)] = name
        self._room_names.setdefault(key, room)
        assert self.hub is not None
        self.hub.note_presence(room, joined=name)

    def _left(self, room: str, name: str) -> None:
        self.elsewhere(name_key(room)).pop(name_key(name), None)
        assert self.hub is not None
        self.hub.note_presence(room, left=name)

    def knows(self, node: str) -> bool:
        return node in self._by_node

    @inlineCallbacks
    def resync(self) -> Any:
        """Read every live node's members and announce the differences."""
        nodes = yield self.bus.smembers(f"{self.prefix}:nodes")
        for node in (set(nodes) | set(self._by_node)) - {self.node}:
            yield self.resync_node(node)

    @inlineCallbacks
    def resync_node(self, node: str) -> Any:
        alive = yield self.bus.exists(self.key("alive", node))
        if not alive:
            if node in self._by_node:
                self._missing[node] = missing = self._missing.get(node, 0) + 1
                if missing >= 2:
                    self._missing.pop(node, None)
                    self.node_gone(node)
            return
        self._missing.pop(node, None)
        entries = yield self.bus.hgetall(self.key("members", node))
        now = {}
        for field, value in entries.items():
            room, _, name = value.partition("\t")
            now[field] = (room, name)
        known = self._by_node.setdefault(node, {})
        for field in [f for f in known if f not in now]:
            room, name = known.pop(field)
            self._left(room, name)
        for field, (room, name) in now.items():
            if field not in known:
                known[field] = (room, name)
                self._joined(room, name)

    @inlineCallbacks
    def reap(self) -> Any:
        """Free the names and members of every node whose heartbeat has expired."""
        nodes = yield self.bus.smembers(f"{self.prefix}:nodes")
        nodes = set(nodes) - {self.node}
        for node in set(self._suspected) - nodes:
            del self._suspected[node]
        gone = []
        for node in nodes:
            alive = yield self.bus.exists(self.key("alive", node))
            if alive:
                self._suspected.pop(node, None)
                continue
            now = self.clock.seconds()
            since = self._suspected.setdefault(node, now)
            if now - since < REAP_GRACE:
                continue  # perhaps only late: look again at the next round
            del self._suspected[node]
            mine = yield self.bus.set(self.key("reaping", node), self.node, px=ALIVE_MS * 2, nx=True)
            if not mine:
                continue
            names = yield self.bus.smembers(self.key("names", node))
            for key in names:
                yield self.bus.delete_if(f"{self.prefix}:name:{key}", node)
            yield self.bus.delete(self.key("members", node), self.key("names", node))
            yield self.bus.srem(f"{self.prefix}:nodes", [node])
            yield self.bus.publish(self.channel, codec.gone_notice(node))
            log.info("reaped node {node}: {n} names freed", node=node, n=len(names))
            self.node_gone(node)
            gone.append(node)
        return gone


def _ignore(failure: Any) -> None:
    return None
