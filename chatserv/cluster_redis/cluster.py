"""The cluster over Redis: :class:`RedisCluster` implements
:class:`chatserv.cluster.Cluster` for one node among several.

Redis is the doorbell, the database the truth. One message's path::

    Hub.broadcast -> MessageLog.append_then       (PostgreSQL commit: pos assigned)
      RedisCluster._committed                     ONE notice (t=m, pos), published with
                                                  the rest of the commit batch, at the
                                                  end of the turn: one PUBLISH per batch,
                                                  written to Redis at once
        Sequencer.offer                           then this node, in pos order
      ... every other node: RedisCluster._heard -> Sequencer.offer
        RedisCluster._deliver -> Hub.deliver_to_room / deliver_private / deliver_correction

A node that misses a notice finds the gap (or hears a heartbeat naming a
later position) and reads the missing events from the database
(``events_after``); a reconnect to Redis reads from the database at once.
Names (:mod:`.names`) and membership (:mod:`.members`) live in Redis keys
owned by the node's heartbeat. Typing is only ever a notice.

The keys and the channel all start with the cluster name (``--cluster-name``):
see docs/CLUSTER.md for the list.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall

from ..bus import Bus, BusUnavailable
from ..errors import ChatError, NameTaken, ServerBusy
from ..events import ChatMessage, Correction, MessageIds, Typing
from ..logs import Logger
from ..names import name_key
from . import codec
from .failures import RedisFailures
from .members import ALIVE_MS, RESYNC, Members
from .names import NameClaims
from .sequencer import Sequencer

if TYPE_CHECKING:
    from ..hub import Hub, Session

log = Logger()

#: Seconds between heartbeats (the alive key lives ALIVE_MS).
BEAT = 1.0
#: Seconds between looks for dead nodes.
REAP_EVERY = 2.0
#: A heartbeat older than this, or our own not heard back for this long, is a health problem.
STALE = 4.0
#: Seconds new names wait after a reconnect to a Redis that lost this node's
#: state (restarted empty, or reaped it): the other nodes reconnect within
#: the back-off's longest delay (5 s) and claim their sessions' names again
#: first, so that no newcomer takes a name that is in use.
CLAIM_GRACE = 6.0


class RedisCluster:
    """One node of a chat spread over several; see the module docstring."""

    def __init__(
        self,
        bus: Bus,
        clock: IReactorTime,
        fetch: Callable[[int, int], Deferred[list[Any]]],
        position: int,
        ids: MessageIds,
        name: str = "chatserv",
        node: str | None = None,
    ) -> None:
        self.bus = bus
        self.clock = clock
        self.ids = ids
        self.prefix = name
        self.node = node or uuid.uuid4().hex[:12]
        self.channel = f"{name}:bus"
        self.sequencer = Sequencer(clock, self._deliver, fetch, position)
        self.names = NameClaims(bus, name, self.node, clock)
        self.names.on_lost = self._name_lost
        #: Failed-login counts for every node's accounts (chatserv.accounts).
        self.failures = RedisFailures(bus, name, clock)
        self.members = Members(bus, name, self.node, self.channel, clock)
        #: The last position this node committed: its heartbeats name it.
        self.committed = position
        #: This turn's commits, published together at its end, then delivered here.
        self._outbox: list[Any] = []
        self._hub: Hub | None = None
        self._loops: list[LoopingCall] = []
        self._beat_at: float | None = None
        self._heard_self_at: float | None = None
        self._ready_at = 0.0
        self._was_ready = False
        self._claims_from = 0.0
        self._reasserting = False
        self.publish_room: Callable[[ChatMessage], None] = self._committed
        self.publish_private: Callable[[ChatMessage], None] = self._committed
        self.publish_correction: Callable[[Correction], None] = self._committed

    def __repr__(self) -> str:
        return f"<RedisCluster {self.prefix} node {self.node}>"

    # -- life -----------------------------------------------------------------------

    def attach(self, hub: Hub) -> None:
        self._hub = hub
        self.members.hub = hub

    def start(self) -> None:
        self.bus.start(self.channel, self._heard, self._ready)
        self.start_loops()

    def start_loops(self) -> None:
        """Start the heartbeat, the reaping and the resync (tests pause them)."""
        for every, work in ((BEAT, self._beat), (REAP_EVERY, self._reap), (RESYNC, self._resync)):
            loop = LoopingCall(self._guarded, work)
            loop.clock = self.clock
            loop.start(every, now=False)
            self._loops.append(loop)

    def stop(self) -> Deferred[Any]:
        """A clean stop: leave Redis as if this node had never been (the
        others announce its members' leaving at once), then disconnect."""
        for loop in self._loops:
            if loop.running:
                loop.stop()
        self._loops = []
        if self._outbox:
            # Commits of this last turn: told and delivered before the end.
            self._send_batch()
        self.sequencer.stop()
        if not self.bus.ready:
            return maybeDeferred(self.bus.stop)
        d = DeferredList([self.names.forget_all(), self.members.forget_all()], consumeErrors=True)
        return d.addBoth(lambda _: self.bus.stop())

    def _ready(self, ready: bool) -> None:
        if not ready:
            return
        now = self._ready_at = self.clock.seconds()
        self._heard_self_at = None
        log.info("cluster {name}: node {node} joined through Redis", name=self.prefix, node=self.node)
        if self._was_ready:
            self._claims_from = now + CLAIM_GRACE  # until we know Redis kept our state

            def known(alive: bool) -> None:
                if alive:  # a short cut: Redis kept everything
                    self._claims_from = now

            self.bus.exists(f"{self.prefix}:alive:{self.node}").addCallbacks(known, _ignore)
        self._was_ready = True
        # Redis may have restarted empty, or reaped us: say again who we are,
        # then learn who the others are, then read what we missed.
        self._reassert()
        self.sequencer.catch_up()

    def _reassert(self) -> None:
        """Write this node's names and members whole, and only then renew
        its alive key (a live node's hash is trusted as complete) and ask the
        others to read it (``s``)."""
        self._reasserting = True
        self.names.assert_own()

        def written(_: object) -> Any:
            self._set_alive()
            beat = codec.heartbeat_notice(self.node, self.committed)
            self.bus.publish(self.channel, beat).addErrback(_ignore)
            self.bus.publish(self.channel, codec.synced_notice(self.node)).addErrback(_ignore)
            return self.members.resync()

        def done(result: object) -> object:
            self._reasserting = False
            return result

        d = self.members.assert_own().addCallback(written).addBoth(done)
        d.addErrback(self._failed, "announcing this node")

    def _name_lost(self, key: str) -> None:
        """A name this node's session held went to another node's session
        while this node was taken for dead: that one keeps it, ours goes."""
        assert self._hub is not None
        session = self._hub.sessions.get(key)
        log.warn("the name {key} went to another node while this one was taken for dead", key=key)
        if session is not None:
            self._hub.evict(session, NameTaken("name_lost", name=session.name))

    # -- the stream -------------------------------------------------------------------

    def _committed(self, event: Any) -> None:
        """A message or correction this node committed: one notice for the
        whole cluster, then this node's own delivery, in position order."""
        if event.pos > self.committed:
            self.committed = event.pos
        if not self._outbox:
            # The rest of the commit batch is told in this same turn.
            self.clock.callLater(0, self._send_batch)
        self._outbox.append(event)

    def _send_batch(self) -> None:
        """Publish the turn's commits, and only then deliver them here.

        The order matters for a large room: this node's own fan-out is one
        long run of sends, and the publication (handed to the Redis socket at
        once, before the end-of-turn fan-out) lets the other nodes send to
        their members meanwhile instead of afterwards.
        """
        batch, self._outbox = self._outbox, []
        try:
            if batch and self.bus.ready:
                notices = [
                    codec.message_notice(event, self.node)
                    if isinstance(event, ChatMessage)
                    else codec.correction_notice(event, self.node)
                    for event in batch
                ]
                data = notices[0] if len(notices) == 1 else codec.batch(notices)
                self.bus.publish(self.channel, data, now=True).addErrback(_ignore)
        except Exception:
            # The other nodes will read them from the database; this one
            # delivers them all the same.
            log.failure("publishing {n} committed events failed", n=len(batch))
        offer = self.sequencer.offer
        for event in batch:
            offer(event)

    def _deliver(self, event: Any) -> None:
        hub = self._hub
        assert hub is not None
        if isinstance(event, Correction):
            hub.deliver_correction(event)
        elif event.room is not None:
            if event.cid is not None and event.from_session is None:
                # Read back rather than this node's own object: its sender,
                # if here, must still get its echo with the cid.
                event.from_session = _held_when(hub, event.sender, event.ts)
            hub.deliver_to_room(event)
        else:
            if event.from_session is None and event.to_session is None:
                # From another node (or read back): its ends by name, here,
                # but only sessions that held the name when it was sent.
                assert event.recipient is not None
                event.to_session = _held_when(hub, event.recipient, event.ts)
                event.from_session = _held_when(hub, event.sender, event.ts)
            hub.deliver_private(event)

    def _heard(self, data: str) -> None:
        try:
            for notice in codec.decode(data):
                self._notice(notice)
        except Exception:
            log.failure("a bad notice on {channel}: {data!r}", channel=self.channel, data=data[:200])

    def _notice(self, notice: dict[str, Any]) -> None:
        kind, node = notice["t"], str(notice.get("n"))
        if kind == "h":
            if node == self.node:
                self._heard_self_at = self.clock.seconds()
            else:
                self.sequencer.heard_of(notice["pos"])
                if not self.members.knows(node):  # a node new to us
                    self._resync_node(node)
            return
        if node == self.node:
            if kind == "g":  # reaped while alive (a long pause): say who we are again
                log.warn("this node was taken for dead; announcing it again")
                self._reassert()
            return  # our own notice: delivered already
        if kind == "m":
            self.sequencer.offer(codec.decode_message(notice))
        elif kind == "c":
            self.sequencer.offer(codec.decode_correction(notice))
        elif kind == "y":
            assert self._hub is not None
            self._hub.deliver_typing(Typing(notice["user"], notice["room"]), notice["key"])
        elif kind == "p":
            self.members.remote_change(node, notice["room"], notice.get("j"), notice.get("l"))
        elif kind == "s":
            self._resync_node(node)
        elif kind == "g":
            self.members.node_gone(node)
            # What it committed last may have had no notice: read it.
            self.sequencer.catch_up()

    # -- the Cluster protocol -------------------------------------------------------

    def reserve_name(self, key: str) -> Deferred[bool]:
        if not self.bus.ready or self.clock.seconds() < self._claims_from:
            raise ServerBusy("cluster_unavailable")

        def unavailable(failure: Any) -> Any:
            if failure.check(ChatError):
                return failure
            if not failure.check(BusUnavailable):  # a timeout, a lost connection
                log.warn("cluster: could not reserve a name: {why}", why=failure.getErrorMessage())
            raise ServerBusy("cluster_unavailable")

        return self.names.reserve(key).addErrback(unavailable)

    def claim_name(self, key: str) -> bool:
        return self.names.take(key)

    def release_name(self, key: str) -> None:
        self.names.release(key)

    def membership(self, room: str, joined: str | None = None, left: str | None = None) -> None:
        assert self._hub is not None
        self._hub.note_presence(room, joined, left)
        self.members.local_change(room, joined, left)

    def elsewhere(self, room_key: str) -> dict[str, str]:
        return self.members.elsewhere(room_key)

    def where(self, key: str) -> str | None:
        return self.members.where(key)

    def rooms_elsewhere(self) -> dict[str, tuple[str, int]]:
        return self.members.rooms_elsewhere()

    def publish_typing(self, typing: Typing, key: str) -> None:
        assert self._hub is not None
        self._hub.deliver_typing(typing, key)
        if self.bus.ready:
            self.bus.publish(self.channel, codec.typing_notice(typing, key, self.node)).addErrback(_ignore)

    def health_problems(self) -> list[str]:
        """Why this node should not be sent clients now (empty: healthy)."""
        if not self.bus.ready:
            return ["redis: not connected or not subscribed"]
        problems = []
        now = self.clock.seconds()
        if self._beat_at is None or now - self._beat_at > STALE:
            problems.append("redis: heartbeat not renewed")
        heard = self._heard_self_at
        if now - self._ready_at > STALE and (heard is None or now - heard > STALE):
            problems.append("redis: the subscription does not hear this node's heartbeats")
        return problems

    # -- periodic work -------------------------------------------------------------------

    def _beat(self) -> None:
        if not self.bus.ready:
            return
        alive = f"{self.prefix}:alive:{self.node}"
        if self._reasserting:
            self._set_alive()
        else:
            # A key that had expired: this node was late (a saturated reactor)
            # and may have been reaped, its names given away. Say again who we
            # are, hash first, reclaiming the names, rather than only renew it.
            def renew(existed: bool) -> None:
                if existed or self._reasserting:
                    self._set_alive()
                elif self.bus.ready:
                    log.warn("this node's alive key had expired; announcing it again")
                    self._reassert()

            self.bus.pexpire(alive, ALIVE_MS).addCallbacks(renew, _ignore)
        self.bus.publish(self.channel, codec.heartbeat_notice(self.node, self.committed)).addErrback(_ignore)
        # A subscription that is up but hears nothing (Centrifugo's wedged
        # pub/sub) is made again.
        now = self.clock.seconds()
        heard = self._heard_self_at if self._heard_self_at is not None else self._ready_at
        if now - heard > STALE * 2 and hasattr(self.bus, "resubscribe"):
            log.warn("the Redis subscription has gone quiet; subscribing again")
            self._ready_at = now
            self.bus.resubscribe()

    def _set_alive(self) -> None:
        def renewed(_: object) -> None:
            self._beat_at = self.clock.seconds()

        alive = f"{self.prefix}:alive:{self.node}"
        self.bus.set(alive, str(self.committed), px=ALIVE_MS).addCallbacks(renewed, _ignore)

    def _guarded(self, work: Callable[[], None]) -> None:
        """Run periodic *work*; a failure is logged, and the next period comes
        anyway (a LoopingCall whose call raises stops for good)."""
        try:
            work()
        except Exception:
            log.failure("cluster: periodic {work} failed", work=work.__name__)

    def _reap(self) -> None:
        # Not in the first seconds after a reconnect: the others may be
        # reconnecting too, their alive keys not yet renewed.
        if self.bus.ready and self.clock.seconds() - self._ready_at > ALIVE_MS / 1000:
            self.members.reap().addCallback(self._reaped).addErrback(self._failed, "reaping dead nodes")

    def _reaped(self, gone: list[str]) -> None:
        if gone:
            self.sequencer.catch_up()

    def _resync_node(self, node: str) -> None:
        self.members.resync_node(node).addErrback(self._failed, "reading a node's members")

    def _resync(self) -> None:
        if self.bus.ready:
            self.members.resync().addErrback(self._failed, "resync")

    def _failed(self, failure: Any, what: str) -> None:
        if failure.check(BusUnavailable):
            return
        log.failure("cluster: {what} failed", failure, what=what)


def _held_when(hub: Hub, name: str, ts: float) -> Session | None:
    """This node's session with *name*, if it was logged in at *ts* (when a
    message was sent): a guest who took the name later is somebody else, and
    must not read what was sent to (or confirm what was sent by) the one
    before. Compares the sending node's clock with this node's (see
    docs/CLUSTER.md, Known limits)."""
    session = hub.sessions.get(name_key(name))
    return session if session is not None and session.since <= ts else None


def _ignore(failure: Any) -> None:
    return None
