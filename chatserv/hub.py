"""The hub: who is online, which rooms exist, and where every message goes.

The hub knows nothing of sockets or of any wire format. A connection, the
Telegram bridge or a test joins it through :class:`Participant`, and the hub
hands each participant immutable event objects. Every recipient of one event
gets the very same object, so a transport can encode it once (into
``event.wire``) and write the same bytes to all of its connections.

Time comes from the injected clock, never from the wall, so tests drive the hub
with a fake clock.

One room message's path (the hot path)::

    ChatProtocol._cmd_broadcast            (protocol: frame -> hub call)
      Hub.broadcast                        checks, ChatMessage(ids.take(), ...)
        MessageLog.append_then             (storage.store group commit, or
                                            local.MemoryLog: end of the turn)
          Cluster.publish_room             (local: Hub.deliver_to_room itself)
            Hub.deliver_to_room            presence first, window, then the
                                           room's plan (rebuilt when its
                                           membership changes, see _plan):
              Fanout.bind(...)'s deliver   participants sharing a Fanout (the
                                           JSON connections: output.RoomFanout,
                                           one send_all call per turn), or
              Participant.receive_message  each other one (plain text, bridge)

Everything that another node would share (ids, names, membership, delivery)
goes through :class:`chatserv.cluster.Cluster`; the ``deliver_*`` and
``note_presence`` methods are where events from elsewhere come in.
"""

from __future__ import annotations

import bisect
import heapq
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime

from .cluster import Cluster
from .errors import (
    ChatError,
    Congested,
    EditTooLate,
    InvalidName,
    MessageDeleted,
    NameTaken,
    NoSuchMessage,
    NoSuchUser,
    NotInRoom,
    NotYourMessage,
    TooFast,
)
from .events import ChatMessage, Correction, PresenceChange, Typing, copied, corrected, sender_key
from .local import LocalCluster, MemoryLog
from .logs import Logger
from .names import BadName, check_name, name_key
from .ratelimit import TokenBucket
from .stats import HubStats
from .windows import HISTORY_MEMORY, Windows

GENERAL = "general"
MAX_ROOMS_PER_SESSION = 100
#: How long after sending it its author may edit or delete a message (seconds).
EDIT_WINDOW = 48 * 3600.0
#: Rooms one session may bring into being: a burst of 10, then one per 10 s.
#: Joining a room that exists costs nothing.
ROOM_CREATE_RATE = 0.1
ROOM_CREATE_BURST = 10
#: Rooms one ``rooms`` answer lists, at most (and by default).
ROOMS_PAGE = 100
#: The hub remembers the messages sent with a ``cid`` that it saw committed
#: for this long, up to this many and this much text, so that a resend is
#: answered without asking the database (which stays the truth; without a
#: database this is the whole window, see docs/PROTOCOL.md).
RECENT_CIDS_SECONDS = 600.0
RECENT_CIDS = 10_000
RECENT_CIDS_TEXT = 16 * 1024 * 1024

log = Logger()


class Participant(Protocol):
    """What the hub needs from anything that logs in: a place to hand events."""

    def receive_message(self, message: ChatMessage) -> None:
        """A room message for a room the session is in (its own included), or a
        private message to or from the session."""

    def receive_own(self, message: ChatMessage) -> None:
        """The session's own message, sent with a ``cid``, is committed: its
        confirmation (instead of ``receive_message`` for the session that
        sent it), given again for a resend of the same ``cid``."""

    def receive_presence(self, change: PresenceChange) -> None:
        """Membership of a room the session is in has changed. A session that
        has just entered the room finds its own name in ``change.joined``: this
        is when it learns the member list (whole, or for a lazy_members client
        in a large room its first page, see chatserv.dialects.members)."""

    def receive_typing(self, typing: Typing) -> None:
        """Somebody else is typing in one of the session's rooms, or privately to it."""

    def receive_correction(self, correction: Correction) -> None:
        """A message of a room the session is in, or of one of its private
        conversations, was edited or deleted by its author."""


class MessageLog(Protocol):
    """The storage seam: where messages are committed before they are relayed.

    Committing gives every message and correction the next position of the
    log's stream (``pos``), in commit order; it is set before ``deliver``.
    """

    def append_then(self, message: ChatMessage, deliver: Callable[[ChatMessage], None]) -> None:
        """Commit *message*, then call ``deliver(message)``, in commit order.

        A callback rather than a Deferred per message: this is on every
        message's path. A message that cannot be stored is the store's to
        report, and is never delivered. A message whose sender's ``cid`` is
        committed already is not committed again: ``deliver`` is called with
        that original instead (see :meth:`Hub._append_unique`).
        """

    def correct_then(self, correction: Correction, deliver: Callable[[Correction], None]) -> None:
        """Record *correction* (keeping the original text), then call
        ``deliver(correction)``; what cannot be stored is not delivered."""

    def congested(self) -> bool:
        """True while the messages waiting to be committed hold more than the
        store's bound: clients' new messages are refused until it catches up."""

    #: Whether history is kept beyond the hub's windows, so that an evicted
    #: window can be read back (False for the in-memory log).
    keeps_history: bool


class Session:
    """One logged-in name, bound to the participant that receives its events."""

    __slots__ = (
        "name", "key", "participant", "rooms", "creations", "trusted", "sender_key", "since",
        "__weakref__",
    )

    def __init__(
        self, name: str, key: str, participant: Participant, trusted: bool = False, account: bool = False
    ) -> None:
        self.name = name
        self.key = key
        #: Whose client message ids (``cid``) this session's are: its
        #: account's, or its guest name's (chatserv.events.sender_key).
        self.sender_key = sender_key(key, account)
        self.participant = participant
        self.rooms: set[str] = set()
        #: An in-process participant (the Telegram bridge), whose input is
        #: already paced, and which has no way to resend a refused message.
        self.trusted = trusted
        #: Rooms this session may still bring into being (made at its first one).
        self.creations: TokenBucket | None = None
        #: When it logged in (the hub's clock): a message sent before it came
        #: from another node was not for it, whatever name it holds
        #: (chatserv.cluster_redis; the hub sets it).
        self.since = 0.0

    def __repr__(self) -> str:
        return f"<Session {self.name!r}>"


class Fanout(Protocol):
    """Hands one room message to many participants in one call.

    A participant may name one as its ``fanout`` attribute (the JSON
    connections of one factory share theirs, see :class:`chatserv.output.RoomFanout`):
    the hub then hands a room's messages to all the participants that share
    it at once, instead of calling each one's ``receive_message``.
    """

    def bind(self, participants: list[Any]) -> Callable[..., None]:
        """What delivers a room message to every one of *participants*, as
        their ``receive_message`` would; kept until the room's membership
        changes. Called as ``deliver(message, leave_out)``: to all of them
        but the participant *leave_out* (a sender whose echo is its own, see
        ``receive_own``), or to all when it is None."""


class Room:
    __slots__ = (
        "name", "members", "order", "others", "history", "cost", "partial", "joined", "left",
        "flush_call", "wire", "plan",
    )

    def __init__(self, name: str, history_size: int, others: dict[str, str] | None = None) -> None:
        self.name = name
        #: key -> session, in the order they joined
        self.members: dict[str, Session] = {}
        #: ``(folded name, key)`` of every member, sorted: member-list pages
        #: (``Hub.member_page``) in an order people recognise.
        self.order: list[tuple[str, str]] = []
        #: key -> name of its members on other nodes, kept by the cluster
        #: (Cluster.elsewhere); empty on a lone node.
        self.others: dict[str, str] = others if others is not None else {}
        self.history: deque[ChatMessage] = deque(maxlen=history_size)
        #: The bytes the window and its cached encodings are counted for
        #: (see chatserv.windows).
        self.cost = 0
        #: The window was evicted to stay within the budget: storage has it,
        #: and it must be read again (merged with what came since) before
        #: anyone is shown it.
        self.partial = False
        # Membership changes not yet announced, and the call that will announce them.
        # Dicts as ordered sets: a storm of joins or leaves asks "is this
        # name in it?" once per change, which a list made O(changes²).
        self.joined: dict[str, None] = {}
        self.left: dict[str, None] = {}
        self.flush_call: IDelayedCall | None = None
        #: Encoded forms of the history window; emptied whenever it changes.
        self.wire: dict[str, Any] = {}
        #: What hands a message to every member, built from ``members`` at the
        #: first message after a membership change (see _plan): the
        #: participants without a Fanout, and the Fanouts' bindings.
        self.plan: tuple[list[Any], list[Callable[..., None]]] | None = None

    def names(self) -> tuple[str, ...]:
        """Its members' names: this node's in the order they joined, then
        those on other nodes."""
        names = tuple(session.name for session in self.members.values())
        return names + tuple(self.others.values()) if self.others else names

    def size(self) -> int:
        return len(self.members) + len(self.others)


def _plan(room: Room) -> tuple[list[Any], list[Callable[..., None]]]:
    """What hands a message to every member of *room*: the participants
    without a :class:`Fanout` (each called with ``receive_message``), and
    one binding per Fanout its members' participants share."""
    singles: list[Any] = []
    shared: dict[Fanout, list[Any]] = {}
    for session in room.members.values():
        participant = session.participant
        fanout = getattr(participant, "fanout", None)
        if fanout is None:
            singles.append(participant)
        else:
            shared.setdefault(fanout, []).append(participant)
    return singles, [fanout.bind(participants) for fanout, participants in shared.items()]


def _order(room_name: str) -> tuple[str, str]:
    return (room_name.casefold(), name_key(room_name))


def presence_window(members: int) -> float:
    """How long membership changes in a room of *members* are gathered before
    being announced.

    Small rooms hear of a join in the same reactor turn; large rooms get one
    announcement per window, so a login storm costs each member a few frames
    instead of one full member list per login.
    """
    if members <= 50:
        return 0.0
    return min(2.0, 0.05 + members / 10_000)


class Hub:
    """Routing core. Every method is synchronous and never blocks."""

    def __init__(
        self,
        clock: IReactorTime,
        history_size: int = 50,
        store: MessageLog | None = None,
        first_id: int = 1,
        room_rate: float = ROOM_CREATE_RATE,
        room_burst: int = ROOM_CREATE_BURST,
        history_memory: int = HISTORY_MEMORY,
        cluster: Cluster | None = None,
    ) -> None:
        self.clock = clock
        self.history_size = history_size
        #: Where messages are committed before they are relayed; without a
        #: database, a log that commits with the same timing (chatserv.local).
        self.store: MessageLog = store if store is not None else MemoryLog(clock)
        #: Ids, names, membership and delivery as shared with other nodes.
        self.cluster: Cluster = cluster if cluster is not None else LocalCluster(first_id)
        self.sessions: dict[str, Session] = {}
        self.rooms: dict[str, Room] = {
            GENERAL: Room(GENERAL, history_size, self.cluster.elsewhere(name_key(GENERAL)))
        }
        #: ``(folded name, key)`` of every room, sorted: ``rooms`` answers
        #: are pages of it, in an order people recognise.
        self._room_order: list[tuple[str, str]] = [_order(GENERAL)]
        #: Room creations per session (``room_rate <= 0``: unlimited).
        self.room_rate = room_rate
        self.room_burst = room_burst
        #: Keys that client names may not end with (see reserve_suffix).
        self._reserved: list[str] = []
        #: Message ids, owned by the cluster; ``ids.upcoming`` is the next one.
        self.ids = self.cluster.ids
        #: The memory bound on all rooms' history windows together.
        self.windows = Windows(history_memory, reloadable=self.store.keeps_history)
        #: Counts for the metrics (chatserv.metrics); plain integers.
        self.stats = HubStats()
        self.cluster.attach(self)
        #: A lone node: a login needs nobody's leave (see claim).
        self._lone = isinstance(self.cluster, LocalCluster)
        # Taken once: the per-message path pays no look-up for the seam.
        self._publish_room = self.cluster.publish_room
        self._publish_private = self.cluster.publish_private
        #: Committed messages sent with a ``cid``: ``(sender_key, cid)`` ->
        #: ``(message, when)``, oldest first (see RECENT_CIDS).
        self._recent: OrderedDict[tuple[str, str], tuple[ChatMessage, float]] = OrderedDict()
        self._recent_text = 0

    # -- sessions ---------------------------------------------------------

    def claim(self, name: object, *, trusted: bool = False) -> Deferred[None] | None:
        """Make sure *name* may log in here, asking the rest of the cluster
        when it must be asked: None when :meth:`login` may follow at once (a
        lone node), else a Deferred that fires once the name is this node's,
        for a login in the same turn, or fails (``name_taken``). Raises at
        once what is known at once."""
        if self._lone:
            return None  # login itself checks everything, as it always has
        name, key = self._login_name(name, trusted)
        if key in self.sessions:
            raise NameTaken("name_taken", name=name)
        asked = self.cluster.reserve_name(key)
        if asked is None:
            return None

        def decided(ours: bool) -> None:
            if not ours:
                raise NameTaken("name_taken", name=name)

        return asked.addCallback(decided)

    def login(
        self, participant: Participant, name: object, *, trusted: bool = False, account: bool = False
    ) -> Session:
        """Bring *name* online in the room ``general``; raise if it may not be.

        *trusted* is for in-process participants (the Telegram bridge): their
        names skip the client name rules, so they may hold a space ("Luis (TG)")
        and no client can ever claim or impersonate them. *account*: the name
        is an account's, not a guest's (their ``cid``s are kept apart). In a
        cluster, a client's login follows :meth:`claim`.
        """
        name, key = self._login_name(name, trusted)
        if key in self.sessions or not self.cluster.claim_name(key):
            raise NameTaken("name_taken", name=name)
        session = Session(name, key, participant, trusted, account)
        session.since = self.clock.seconds()
        self.sessions[key] = session
        self.stats.logins += 1
        log.debug("login {name}", name=name)
        self._enter(session, self.rooms[GENERAL])
        return session

    def _login_name(self, name: object, trusted: bool) -> tuple[str, str]:
        """*name* checked for a login, and its look-alike key."""
        if trusted:
            if not isinstance(name, str) or not name.strip() or not name.isprintable():
                raise InvalidName("trusted_name")
        else:
            try:
                name = check_name(name)
            except BadName as e:
                raise InvalidName("name_rules", detail=str(e)) from None
            if any(name_key(name).endswith(suffix) for suffix in self._reserved):
                raise InvalidName("reserved_name", name=name)
        assert isinstance(name, str)
        return name, name_key(name)

    def reserve_suffix(self, suffix: str) -> None:
        """Refuse client names that end like *suffix* (the Telegram bridge's
        " (TG)"): compared by look-alike key, white space aside, so that
        "Luis(TG)" or "Luis(ТG)" cannot pass for "Luis (TG)"."""
        key = name_key("".join(suffix.split()))
        if key and key not in self._reserved:
            self._reserved.append(key)

    def logout(self, session: Session) -> None:
        """Take *session* offline; harmless if it already is."""
        if self.sessions.get(session.key) is not session:
            return
        del self.sessions[session.key]
        self.stats.logouts += 1
        for room_name in list(session.rooms):
            self._exit(session, self.rooms[name_key(room_name)])
        self.cluster.release_name(session.key)
        log.debug("logout {name}", name=session.name)

    def evict(self, session: Session, error: ChatError) -> None:
        """Take *session* offline because the chat no longer lets it be
        (*error*: why, for its client): the cluster found its name held by
        another node's session (see chatserv.cluster_redis). A participant
        with an ``evicted`` method is told, and hangs up; any other is only
        logged out."""
        if self.sessions.get(session.key) is not session:
            return
        told = getattr(session.participant, "evicted", None)
        if told is not None:
            told(error)
        self.logout(session)

    def find(self, name: str) -> Session | None:
        return self.sessions.get(name_key(name))

    def online_holder(self, name: str, participant: object = None) -> str | None:
        """The name as shown of whoever is online with *name* (or a look-alike),
        on this node or any other, unless it is *participant* itself; None
        when nobody is. What ``register`` refuses (``name_taken``)."""
        holder = self.find(name)
        if holder is not None:
            return None if holder.participant is participant else holder.name
        return self._elsewhere(name)

    # -- rooms ------------------------------------------------------------

    def join(self, session: Session, room_name: object, *, admitted: bool = False) -> Room:
        """Put *session* in the room, creating it; return the room.

        Every check comes before the room is created, so a refused join
        leaves nothing behind. *admitted*: :meth:`admit` already said yes
        (and took the creation token) for this join.
        """
        room_name = self._valid_room(room_name)
        room = self.rooms.get(name_key(room_name))
        if room is not None and room.name in session.rooms:
            return room
        if not admitted:
            self._check_join(session, room is None)
        if room is None:
            room = self._create_room(room_name)
        self._enter(session, room)
        return room

    def admit(self, session: Session, room_name: object) -> None:
        """Raise if *session* may not join *room_name* now; otherwise take
        what joining costs, for a join that must first read storage."""
        room_name = self._valid_room(room_name)
        room = self.rooms.get(name_key(room_name))
        if room is None or room.name not in session.rooms:
            self._check_join(session, room is None)

    def _valid_room(self, room_name: object) -> str:
        try:
            return check_name(room_name)
        except BadName as e:
            raise InvalidName("name_rules", detail=str(e)) from None

    def _check_join(self, session: Session, creates: bool) -> None:
        if len(session.rooms) >= MAX_ROOMS_PER_SESSION:
            raise ChatError("too_many_rooms", limit=MAX_ROOMS_PER_SESSION)
        if creates and self.room_rate > 0:
            if session.creations is None:
                session.creations = TokenBucket(self.room_rate, self.room_burst, self.clock.seconds)
            if not session.creations.allow():
                raise TooFast("room_creation")

    def leave(self, session: Session, room_name: str) -> str:
        """Take *session* out of the room; return the room's name as it is shown."""
        room = self._member_room(session, room_name)
        if room.name == GENERAL:
            raise NotInRoom("leave_general")
        self._exit(session, room)
        return room.name

    def room(self, room_name: str) -> Room | None:
        return self.rooms.get(name_key(room_name))

    def member_room(self, session: Session, room_name: str | None) -> Room:
        """The room *session* names (``general`` when None), which it must be in."""
        return self._member_room(session, GENERAL if room_name is None else room_name)

    def room_list(self) -> list[tuple[str, int]]:
        return [(room.name, room.size()) for room in self.rooms.values()]

    def room_page(self, after: str | None = None, limit: int = ROOMS_PAGE) -> tuple[list[Room], bool]:
        """Up to *limit* rooms in case-folded name order, from the first one
        after the name *after* (from the start when None), and whether more follow."""
        order = self._room_order
        start = 0 if after is None else bisect.bisect_right(order, _order(after))
        page = order[start : start + limit]
        return [self.rooms[key] for _, key in page], start + limit < len(order)

    def room_listing(
        self, after: str | None = None, limit: int = ROOMS_PAGE
    ) -> tuple[list[tuple[str, int]], bool, int]:
        """What ``rooms`` answers: up to *limit* (name, members) after the
        name *after*, in case-folded name order, whether more follow, and how
        many rooms there are; in a cluster, the rooms of every node (a room
        with members only on other nodes included), with every node's members
        counted."""
        remote = self.cluster.rooms_elsewhere()
        extra = sorted(_order(name) for key, (name, _) in remote.items() if key not in self.rooms)
        if not extra:
            page, more = self.room_page(after, limit)
            return [(room.name, room.size()) for room in page], more, len(self.rooms)
        order = list(heapq.merge(self._room_order, extra))
        start = 0 if after is None else bisect.bisect_right(order, _order(after))
        listed = []
        for _, key in order[start : start + limit]:
            room = self.rooms.get(key)
            listed.append((room.name, room.size()) if room is not None else (remote[key][0], remote[key][1]))
        return listed, start + limit < len(order), len(order)

    def _create_room(self, room_name: str) -> Room:
        key = name_key(room_name)
        room = self.rooms[key] = Room(room_name, self.history_size, self.cluster.elsewhere(key))
        bisect.insort(self._room_order, _order(room_name))
        return room

    def _member_room(self, session: Session, room_name: str) -> Room:
        room = self.rooms.get(name_key(room_name))
        if room is None or room.name not in session.rooms:
            raise NotInRoom("not_in_room", room=room_name)
        return room

    def member_page(self, room: Room, after: str | None = None, limit: int = 200) -> tuple[list[str], bool]:
        """Up to *limit* names of the room's members in case-folded name order,
        from the first one after the name *after* (from the start when None),
        and whether more follow. O(log members + limit)."""
        order = room.order
        names = {key: session.name for key, session in room.members.items()} if room.others else None
        if names is not None:
            # A clustered room: its members elsewhere are merged in per page;
            # a lone node keeps the O(log n) path.
            names.update(room.others)
            order = sorted(order + [(name.casefold(), key) for key, name in room.others.items()])
        start = 0 if after is None else bisect.bisect_right(order, _order(after))
        entries = order[start : start + limit]
        if names is None:
            members = room.members
            page = [members[key].name for _, key in entries]
        else:
            page = [names[key] for _, key in entries]
        return page, start + limit < len(order)

    def _enter(self, session: Session, room: Room) -> None:
        if session.key not in room.members:
            bisect.insort(room.order, (session.name.casefold(), session.key))
        room.members[session.key] = session
        room.plan = None
        session.rooms.add(room.name)
        self.cluster.membership(room.name, joined=session.name)

    def _exit(self, session: Session, room: Room) -> None:
        if room.members.pop(session.key, None) is not None:
            entry = (session.name.casefold(), session.key)
            i = bisect.bisect_left(room.order, entry)
            if i < len(room.order) and room.order[i] == entry:
                del room.order[i]
        room.plan = None
        session.rooms.discard(room.name)
        self.cluster.membership(room.name, left=session.name)
        if not room.members and room.name != GENERAL and not room.joined:
            self._drop_room(room)

    def _drop_room(self, room: Room) -> None:
        # An empty room keeps nothing worth holding in memory; storage keeps
        # its history.
        if room.flush_call is not None and room.flush_call.active():
            room.flush_call.cancel()
        self.windows.evict(room)
        del self.rooms[name_key(room.name)]
        entry = _order(room.name)
        i = bisect.bisect_left(self._room_order, entry)
        if i < len(self._room_order) and self._room_order[i] == entry:
            del self._room_order[i]

    # -- presence ---------------------------------------------------------

    def note_presence(self, room_name: str, joined: str | None = None, left: str | None = None) -> None:
        """*joined* entered, or *left* left, the room *room_name*: its members
        here hear of it at the end of its presence window (the entry point
        for membership changes, from this node or another)."""
        room = self.rooms.get(name_key(room_name))
        if room is not None:
            self._note_presence(room, joined, left)

    def _note_presence(self, room: Room, joined: str | None = None, left: str | None = None) -> None:
        # A leave and a later join of the same name in one window are both
        # kept (members apply `left` before `joined`): the new session must
        # find itself in `joined` to get its member list. A join followed by
        # a leave cancels out: nobody else needs to hear of it.
        if joined is not None:
            room.joined[joined] = None
        if left is not None:
            if left in room.joined:
                del room.joined[left]
            else:
                room.left[left] = None
        if room.flush_call is None:
            room.flush_call = self.clock.callLater(
                presence_window(room.size()), self._flush_presence, room
            )

    def _flush_presence(self, room: Room) -> None:
        if room.flush_call is not None and room.flush_call.active():
            room.flush_call.cancel()
        room.flush_call = None
        if not room.joined and not room.left:
            return
        change = PresenceChange(room.name, tuple(room.joined), tuple(room.left), room.names())
        room.joined.clear()
        room.left.clear()
        self.stats.delivered_presence += len(room.members)
        for session in list(room.members.values()):
            session.participant.receive_presence(change)

    def flush_all_presence(self) -> None:
        """Announce every pending membership change now (used at shutdown and in tests)."""
        for room in list(self.rooms.values()):
            if room.flush_call is not None:
                self._flush_presence(room)

    # -- messages ---------------------------------------------------------

    def broadcast(
        self,
        session: Session,
        text: str,
        room_name: str | None = None,
        *,
        reply_to: dict[str, Any] | None = None,
        edit_of: int | None = None,
        cid: str | None = None,
    ) -> ChatMessage:
        """Post *text* to a room the session is in (``general`` by default).

        With *cid* (the sender's own id for the message) a resend of a
        message already committed stores and relays nothing: the sender is
        confirmed again with the original, which is returned.
        """
        if cid is not None:
            # First: a resend is confirmed even if the sender has left the
            # room since (it was allowed when the message was committed).
            original = self._repeated(session, cid)
            if original is not None:
                return original
        room = self.member_room(session, room_name)
        self._check_backlog(session)
        message = ChatMessage(
            self.ids.take(), self.clock.seconds(), session.name, text, room=room.name,
            reply_to=reply_to, edit_of=edit_of,
        )
        self.stats.received_room += 1
        if cid is None:
            self.store.append_then(message, self._publish_room)
        else:
            # The sender's echo carries the cid: it goes to this session only.
            message.from_session = session
            self._append_unique(session, message, cid, self._publish_room)
        return message

    def private(
        self,
        session: Session,
        to: str,
        text: str,
        *,
        reply_to: dict[str, Any] | None = None,
        cid: str | None = None,
    ) -> ChatMessage:
        """Send *text* to the online user *to*, and a copy to the sender
        (*cid*: as for :meth:`broadcast`)."""
        if cid is not None:
            original = self._repeated(session, cid)  # even if *to* has left since
            if original is not None:
                return original
        target = self.find(to) if isinstance(to, str) else None
        # Or online on another node: delivered there, by name.
        shown = target.name if target is not None else self._elsewhere(to)
        if shown is None:
            raise NoSuchUser("not_online", name=to)
        self._check_backlog(session)
        message = ChatMessage(
            self.ids.take(), self.clock.seconds(), session.name, text, recipient=shown,
            reply_to=reply_to,
            to_session=target, from_session=session,
        )
        self.stats.received_private += 1
        if cid is None:
            self.store.append_then(message, self._publish_private)
        else:
            self._append_unique(session, message, cid, self._publish_private)
        return message

    # -- client message ids (cid) -------------------------------------------
    #
    # The database is the truth (a unique index on the sender and its cid,
    # checked in the commit transaction, so it holds across restarts and
    # servers); the hub remembers what it saw committed lately, so that the
    # usual resend, a client retrying on the same server, costs no query.

    def _repeated(self, session: Session, cid: str) -> ChatMessage | None:
        """The committed message *session*'s sender already sent as *cid*,
        confirmed to *session* again; None when the hub does not know one."""
        remembered = self._recent.get((session.sender_key, cid))
        if remembered is None:
            return None
        original = remembered[0]
        self.confirm(session, original)
        return original

    def _append_unique(
        self, session: Session, message: ChatMessage, cid: str, publish: Callable[[ChatMessage], None]
    ) -> None:
        message.cid = cid
        message.sender_key = session.sender_key

        def committed(stored: ChatMessage) -> None:
            self._remember_cid(stored)
            if stored is message:
                publish(message)
            else:
                # It was a resend of a message committed before (elsewhere,
                # or before a restart): nothing was stored; confirm that one.
                self.confirm(session, stored)

        self.store.append_then(message, committed)

    def confirm(self, session: Session, original: ChatMessage) -> None:
        """Tell *session* (if still online) that *original*, its message, is
        committed, as its own echo (``broadcast`` or ``sent``) told it first:
        the answer to a resend of its ``cid`` (the protocol calls it when
        only storage knew the message)."""
        if self.sessions.get(session.key) is not session:
            return
        session.participant.receive_own(copied(original))

    def _remember_cid(self, message: ChatMessage) -> None:
        assert message.sender_key is not None and message.cid is not None
        recent = self._recent
        now = self.clock.seconds()
        key = (message.sender_key, message.cid)
        old = recent.pop(key, None)
        if old is not None:
            self._recent_text -= len(old[0].text)
        recent[key] = (message, now)
        self._recent_text += len(message.text)
        while recent and (
            len(recent) > RECENT_CIDS
            or self._recent_text > RECENT_CIDS_TEXT
            or next(iter(recent.values()))[1] < now - RECENT_CIDS_SECONDS
        ):
            _, (gone, _) = recent.popitem(last=False)
            self._recent_text -= len(gone.text)

    def typing(self, session: Session, to: str | None = None, room_name: str | None = None) -> None:
        """Tell the private peer *to*, or the other members of a room, that *session* types."""
        if to is not None:
            target = self.find(to)
            if target is None:
                if self._elsewhere(to) is None:
                    raise NoSuchUser("not_online", name=to)
                self.cluster.publish_typing(Typing(session.name, None), name_key(to))
            elif target is not session:
                self.cluster.publish_typing(Typing(session.name, None), target.key)
            return
        room = self.member_room(session, room_name)
        self.cluster.publish_typing(Typing(session.name, room.name), name_key(room.name))

    def deliver_typing(self, typing: Typing, key: str) -> None:
        """Hand *typing* to this node's members of the room whose key is
        *key*, its typist aside, or (``typing.room`` None) to the session
        whose name key is *key*."""
        if typing.room is None:
            target = self.sessions.get(key)
            if target is not None:
                self.stats.delivered_typing += 1
                target.participant.receive_typing(typing)
            return
        room = self.rooms.get(key)
        if room is None:
            return
        for member in list(room.members.values()):
            if member.name != typing.user:
                self.stats.delivered_typing += 1
                member.participant.receive_typing(typing)

    def _elsewhere(self, name: object) -> str | None:
        """The name as shown of *name* if it is online on another node."""
        return self.cluster.where(name_key(name)) if isinstance(name, str) else None

    def users(self, room_name: str | None = None) -> tuple[str, ...]:
        room = self.rooms.get(name_key(room_name or GENERAL))
        return room.names() if room is not None else ()

    def recent(self, room_name: str = GENERAL) -> list[ChatMessage]:
        """The history window of a room, oldest first."""
        room = self.rooms.get(name_key(room_name))
        return list(room.history) if room is not None else []

    def remember(self, messages: Iterable[ChatMessage]) -> None:
        """Fill history windows from storage at start-up, oldest first."""
        by_room: dict[str, list[ChatMessage]] = {}
        for message in messages:
            # Private messages are not history, but their ids are taken.
            self.ids.seen(message.id)
            if message.room is not None:
                by_room.setdefault(message.room, []).append(message)
        for room_name, found in by_room.items():
            self.restore(room_name, found)

    def restore(self, room_name: str, messages: list[ChatMessage]) -> Room | None:
        """Fill the window of *room_name* from storage, creating the room if
        there is anything to fill it with.

        A window read while the room was live (a join of a room not in
        memory, or of one whose window was evicted) is merged by id with what
        arrived meanwhile, keeping the newest.
        """
        key = name_key(room_name)
        room = self.rooms.get(key)
        if room is None:
            if not messages:
                return None
            # Shown as it was stored, whatever spelling the joiner used.
            room = self._create_room(messages[-1].room or room_name)
        merged = {m.id: m for m in room.history}
        for message in messages:
            merged.setdefault(message.id, message)
            self.ids.seen(message.id)
        # Stream order: across a cluster, id order is not commit order.
        window = sorted(merged.values(), key=lambda m: (m.pos, m.id))[-self.history_size :]
        self.windows.evict(room)
        room.partial = False
        for message in window:
            self.windows.keep(room, message)
        return room

    def window_frame(self, room: Room, key: str, encode: Callable[[Room], bytes]) -> bytes:
        """The encoded history window of *room* in one format, cached until
        the window changes and counted against the windows' memory bound."""
        return self.windows.frame(room, key, encode)

    def _check_backlog(self, session: Session) -> None:
        if self.store.congested() and not session.trusted:
            raise Congested("store_behind")

    def deliver_to_room(self, message: ChatMessage) -> None:
        """Hand a committed room message to this node's members of its room,
        and keep it in the room's history window: the end of every room
        message's path, whichever node it was sent on."""
        assert message.room is not None
        room = self.rooms.get(name_key(message.room))
        # Set only when the sender gave a cid: its echo is its confirmation.
        own = message.from_session
        if own is not None:
            message.from_session = None
        if room is None:
            return
        if room.flush_call is not None:
            # Nobody may read a message from someone they have not seen join.
            self._flush_presence(room)
        self.windows.keep(room, message)
        self.stats.delivered_room += len(room.members)
        # The plan's lists are its own: a participant that goes offline
        # while it is handed the message changes the members, not them.
        plan = room.plan
        if plan is None:
            plan = room.plan = _plan(room)
        singles, bound = plan
        # A sender that gave a cid (every desktop client and the bridge do)
        # is left out: its echo is its confirmation, and its output queue
        # puts it in order.
        sender = own.participant if own is not None and room.members.get(own.key) is own else None
        for participant in singles:
            if participant is not sender:
                participant.receive_message(message)
        for deliver in bound:
            deliver(message, sender)
        if sender is not None:
            sender.receive_own(message)
        # Its encodings were for this fan-out; the window keeps the message
        # only, and the window's own encoding is built when asked for.
        message.wire.clear()

    def deliver_private(self, message: ChatMessage) -> None:
        """Hand a committed private message to its two ends."""
        # The sessions bound when the message was accepted, not whoever holds
        # the names after the commit: a guest name may have changed hands
        # meanwhile, and the next holder must never read the message (nor its
        # `sent` confirmation).
        recipient, sender = message.to_session, message.from_session
        message.to_session = message.from_session = None
        # With a cid, the sender's copy is its confirmation.
        own = message.cid is not None
        if recipient is not None and self.sessions.get(recipient.key) is recipient:
            self.stats.delivered_private += 1
            if own and recipient is sender:
                recipient.participant.receive_own(message)
            else:
                recipient.participant.receive_message(message)
        if sender is not None and sender is not recipient and self.sessions.get(sender.key) is sender:
            self.stats.delivered_private += 1
            if own:
                sender.participant.receive_own(message)
            else:
                sender.participant.receive_message(message)

    # -- replies and corrections -------------------------------------------
    #
    # Finding the message an id names may need storage, so the protocol
    # looks it up (chatserv.conversation) and hands it here; these methods
    # decide whether the session may use it.

    def can_see(self, session: Session, message: ChatMessage, since: float = 0.0) -> bool:
        """Whether *session* may read *message*: a room message of a room it
        is in, or a private message of its own conversations from *since*
        (its private-history horizon, see accounts.Identity) on."""
        if message.room is not None:
            room = self.rooms.get(name_key(message.room))
            return room is not None and room.name in session.rooms
        assert message.recipient is not None
        return session.key in (name_key(message.sender), name_key(message.recipient)) and (
            message.ts >= since
        )

    def reply_quote(
        self,
        session: Session,
        original: ChatMessage | None,
        *,
        room_name: str | None = None,
        to: str | None = None,
        since: float = 0.0,
    ) -> dict[str, Any]:
        """The ``reply_to`` object for a reply by *session* to *original*,
        posted to *room_name* (a room message) or privately to *to*.

        The original must be one the session can see in that very
        conversation: a reply never quotes another room or another private
        conversation. Raises :class:`NoSuchMessage` (or
        :class:`MessageDeleted`) otherwise, before anything is relayed.
        """
        if original is None or not self.can_see(session, original, since):
            raise NoSuchMessage("not_visible")
        if to is not None:
            same = original.room is None and {
                name_key(original.sender),
                name_key(original.recipient or ""),
            } == {session.key, name_key(to)}
        else:
            room = self.member_room(session, room_name)
            same = original.room is not None and name_key(original.room) == name_key(room.name)
        if not same:
            raise NoSuchMessage("other_conversation")
        if original.deleted is not None:
            raise MessageDeleted("quoted_deleted")
        return {"id": original.id, "from": original.sender, "msg": quote(original.text)}

    def correct(
        self, session: Session, original: ChatMessage | None, text: str | None, since: float = 0.0
    ) -> Correction:
        """Edit *original* to *text*, or delete it when *text* is None, on
        behalf of its author *session*; everyone who can read it is told
        once storage has recorded it (the original text stays stored)."""
        if original is None or not self.can_see(session, original, since):
            raise NoSuchMessage("not_visible")
        if original.deleted is not None:
            raise MessageDeleted("already_deleted")
        if name_key(original.sender) != session.key or original.ts < since:
            raise NotYourMessage("not_author")
        now = self.clock.seconds()
        if now - original.ts > EDIT_WINDOW:
            raise EditTooLate("edit_window", hours=EDIT_WINDOW / 3600)
        correction = Correction(
            original.id, now, original.sender, text, room=original.room, recipient=original.recipient
        )
        self.store.correct_then(correction, self.cluster.publish_correction)
        return correction

    def window_message(self, message_id: int, room_name: str | None) -> ChatMessage | None:
        """Message *message_id* if it is in the history window of *room_name*."""
        room = self.rooms.get(name_key(room_name or GENERAL))
        if room is None:
            return None
        for message in room.history:
            if message.id == message_id:
                return message
        return None

    def deliver_correction(self, correction: Correction) -> None:
        """Tell this node's sessions that can read it of a recorded correction,
        and correct the history window."""
        if correction.room is not None:
            room = self.rooms.get(name_key(correction.room))
            if room is None:
                return
            for message in room.history:
                if message.id == correction.id:
                    self.windows.replace(room, message, corrected(message, correction))
                    break
            for member in list(room.members.values()):
                member.participant.receive_correction(correction)
            return
        assert correction.recipient is not None
        sender = self.find(correction.sender)
        recipient = self.find(correction.recipient)
        for who in (sender, recipient) if sender is not recipient else (sender,):
            if who is not None:
                who.participant.receive_correction(correction)


#: Characters of the original a reply quotes (``reply_to.msg``).
QUOTE_LENGTH = 40


def quote(text: str, length: int = QUOTE_LENGTH) -> str:
    """The first line of *text*, cut to *length* characters with an ellipsis."""
    line = text.strip().split("\n", 1)[0].strip()
    if len(line) > length or "\n" in text.strip():
        return line[:length].rstrip() + "…"
    return line
