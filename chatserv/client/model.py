"""UI-free state of a chat client: conversations, lines, unread counts,
typing indicators, online users and connection state.

Nothing here knows about Tk or sockets. Widgets subscribe with a
:class:`ModelObserver` and only render what they are told; the session
(:mod:`chatserv.client.session`) is the only writer apart from the user
actions that are pure view state (which tab is shown).
"""

from __future__ import annotations

import enum
import time as _time
import unicodedata
from dataclasses import dataclass, field
from typing import Literal

from twisted.internet.interfaces import IDelayedCall, IReactorTime

GENERAL = "general"
#: How long a peer is shown as typing after its last ``typing`` frame.
TYPING_SHOWN_FOR = 6.0


def fold(name: str) -> str:
    """The server's identity of a name: NFKC then casefold (PROTOCOL.md, Names)."""
    return unicodedata.normalize("NFKC", name).casefold()


def now_hms() -> str:
    """HH:MM:SS for lines the server did not stamp (local messages, notices).

    The wall clock, not the injected reactor clock: a test clock starts at 0.
    """
    return _time.strftime("%H:%M:%S")


class LineKind(enum.Enum):
    MESSAGE = "message"  # a chat message, live
    HISTORY = "history"  # a chat message the server replayed on login/join
    SYSTEM = "system"  # join/leave notices from the server
    ERROR = "error"  # an error the server reported, or a local failure
    INFO = "info"  # client notices: connection lost, reconnected, headers


class SendState(enum.Enum):
    QUEUED = "queued"  # not written yet: offline, or waiting to be retried
    SENDING = "sending"  # written to the server, confirmation pending
    SENT = "sent"  # the server confirmed it (echo or ping barrier)
    HELD = "held"  # private to a user who is offline: goes out when they return
    FAILED = "failed"  # refused by the server for good (note says why)


class ConnState(enum.Enum):
    DISCONNECTED = "disconnected"  # not trying: the connect form is shown
    CONNECTING = "connecting"
    LOGGING_IN = "logging_in"
    ONLINE = "online"
    WAITING = "waiting"  # lost or failed, next attempt at ``retry_at``


@dataclass(frozen=True)
class ConvKey:
    kind: Literal["room", "private"]
    name: str  # folded room or peer name

    @classmethod
    def room(cls, name: str) -> ConvKey:
        return cls("room", fold(name))

    @classmethod
    def private(cls, name: str) -> ConvKey:
        return cls("private", fold(name))


GENERAL_KEY = ConvKey.room(GENERAL)


@dataclass(eq=False)
class Line:
    kind: LineKind
    text: str
    sender: str | None = None
    time: str = ""
    own: bool = False
    state: SendState | None = None
    note: str = ""
    msg_id: int | None = None
    #: The message this one answers: ``{"id", "from", "msg"}`` (PROTOCOL.md).
    reply_to: dict[str, object] | None = None
    #: Corrected by its author after it was sent.
    edited: bool = False
    #: Deleted by its author: ``text`` is then empty.
    deleted: bool = False

    @property
    def can_reply(self) -> bool:
        return (
            self.kind in (LineKind.MESSAGE, LineKind.HISTORY)
            and self.msg_id is not None
            and not self.deleted
        )

    @property
    def can_correct(self) -> bool:
        """Its author may edit or delete it (the server checks the age)."""
        return self.own and self.can_reply and self.state in (None, SendState.SENT)


@dataclass(eq=False)
class Conversation:
    key: ConvKey
    title: str
    lines: list[Line] = field(default_factory=list)
    unread: int = 0
    #: folded name -> (name as written, clock time when it expires)
    typing: dict[str, tuple[str, float]] = field(default_factory=dict)
    members: list[str] = field(default_factory=list)
    #: How many members the room has when ``members`` is only the pages
    #: loaded so far (a large room, see client.members); None: it is whole.
    member_count: int | None = None
    #: More names follow the loaded pages.
    members_more: bool = False
    draft: str = ""
    #: identities of server messages already shown, so replays are not doubled
    seen: set[tuple[object, ...]] = field(default_factory=set)
    had_history: bool = False
    #: The highest stream position (``pos``) of a message of this
    #: conversation seen so far; None when the server sends no positions.
    last_pos: int | None = None
    #: After a reconnect: asking for what was missed (``history`` with
    #: ``after``); live frames wait in ``held`` until it has all arrived.
    catching_up: bool = False
    held: list[dict[str, object]] = field(default_factory=list)

    def saw_pos(self, frame: dict[str, object]) -> None:
        pos = frame.get("pos")
        if isinstance(pos, int) and not isinstance(pos, bool):
            if self.last_pos is None or pos > self.last_pos:
                self.last_pos = pos

    @property
    def is_room(self) -> bool:
        return self.key.kind == "room"

    @property
    def is_general(self) -> bool:
        return self.key == GENERAL_KEY

    def typing_names(self) -> list[str]:
        return [name for name, _expiry in self.typing.values()]

    def line_by_id(self, msg_id: int) -> Line | None:
        for line in reversed(self.lines):
            if line.msg_id == msg_id:
                return line
        return None

    def last_own(self) -> Line | None:
        """The newest message of ours the server has confirmed, for Up-to-edit."""
        for line in reversed(self.lines):
            if line.own and line.kind in (LineKind.MESSAGE, LineKind.HISTORY):
                return line if line.can_correct else None
        return None


class ModelObserver:
    """Callbacks a view implements; every method is optional."""

    def conversation_added(self, conv: Conversation) -> None: ...
    def conversation_removed(self, conv: Conversation) -> None: ...
    def line_added(self, conv: Conversation, line: Line) -> None: ...
    def line_changed(self, conv: Conversation, line: Line) -> None: ...
    def line_rewritten(self, conv: Conversation, line: Line) -> None: ...
    def unread_changed(self, conv: Conversation) -> None: ...
    def typing_changed(self, conv: Conversation) -> None: ...
    def members_changed(self, conv: Conversation) -> None: ...
    def state_changed(self) -> None: ...
    def rooms_changed(self) -> None: ...
    def login_failed(self, message: str) -> None: ...
    def active_changed(self) -> None: ...


class ChatModel:
    def __init__(self, clock: IReactorTime) -> None:
        self.clock = clock
        self.observers: list[ModelObserver] = []
        self.conversations: dict[ConvKey, Conversation] = {}
        self.active: ConvKey = GENERAL_KEY
        self.me: str = ""
        self.server: str = ""
        self.state = ConnState.DISCONNECTED
        self.retry_at: float | None = None
        self.ever_online = False
        self.last_error = ""
        #: None until the server answers ``rooms`` (supported) or rejects it
        self.rooms_supported: bool | None = None
        self.room_list: list[tuple[str, int]] = []
        self._typing_timer: IDelayedCall | None = None
        self.conversation(GENERAL_KEY, "General")

    # -- observers -----------------------------------------------------
    def subscribe(self, observer: ModelObserver) -> None:
        self.observers.append(observer)

    def unsubscribe(self, observer: ModelObserver) -> None:
        if observer in self.observers:
            self.observers.remove(observer)

    def _emit(self, event: str, *args: object) -> None:
        for observer in list(self.observers):
            getattr(observer, event)(*args)

    # -- conversations ---------------------------------------------------
    def conversation(self, key: ConvKey, title: str | None = None) -> Conversation:
        """The conversation for ``key``, created (and announced) if new. A
        newer spelling of a peer's name replaces the title."""
        conv = self.conversations.get(key)
        if conv is None:
            conv = Conversation(key, title or key.name)
            self.conversations[key] = conv
            self._emit("conversation_added", conv)
        elif title and key.kind == "private" and title != conv.title:
            conv.title = title
            self._emit("unread_changed", conv)
        return conv

    def get(self, key: ConvKey) -> Conversation | None:
        return self.conversations.get(key)

    def remove(self, key: ConvKey) -> None:
        if key == GENERAL_KEY:
            return
        conv = self.conversations.pop(key, None)
        if conv is None:
            return
        if self.active == key:
            self.active = GENERAL_KEY
        self._emit("conversation_removed", conv)
        self._emit("active_changed")

    def set_active(self, key: ConvKey) -> None:
        if key not in self.conversations:
            return
        changed = key != self.active
        self.active = key
        conv = self.conversations[key]
        if conv.unread:
            conv.unread = 0
            self._emit("unread_changed", conv)
        if changed:
            self._emit("active_changed")

    def total_unread(self) -> int:
        return sum(c.unread for c in self.conversations.values())

    def private_conversations(self) -> list[Conversation]:
        return [c for c in self.conversations.values() if c.key.kind == "private"]

    # -- lines -------------------------------------------------------------
    def add_line(self, conv: Conversation, line: Line) -> Line:
        if not line.time:
            line.time = now_hms()
        conv.lines.append(line)
        self._emit("line_added", conv, line)
        # Only live messages from others count: history, notices and our own
        # lines are not something the user has missed.
        if line.kind is LineKind.MESSAGE and not line.own and conv.key != self.active:
            conv.unread += 1
            self._emit("unread_changed", conv)
        return line

    def line_changed(self, conv: Conversation, line: Line) -> None:
        self._emit("line_changed", conv, line)

    def correct_line(self, conv: Conversation, line: Line, text: str | None) -> None:
        """The author edited *line* to *text*, or deleted it (*text* None)."""
        if text is None:
            line.deleted, line.text = True, ""
        else:
            line.edited, line.text = True, text
        self._emit("line_rewritten", conv, line)

    def notice(self, key: ConvKey, text: str, kind: LineKind = LineKind.INFO) -> Line:
        conv = self.conversation(key)
        return self.add_line(conv, Line(kind, text))

    # -- members -----------------------------------------------------------
    def online(self) -> list[str]:
        return list(self.conversations[GENERAL_KEY].members)

    def is_online(self, name: str) -> bool:
        folded = fold(name)
        general = self.conversations[GENERAL_KEY]
        if any(fold(n) == folded for n in general.members):
            return True
        # Only some pages of a large room are loaded: who is not in them
        # may well be online (the server says no_such_user if not).
        return general.members_more

    def set_members(
        self, key: ConvKey, names: list[str], count: int | None = None, more: bool = False
    ) -> None:
        """The room's member list: whole, or (*count* given) the pages
        loaded of a large room, with *more* names to come."""
        conv = self.conversation(key)
        conv.members = list(names)
        conv.member_count = count
        conv.members_more = more
        self._emit("members_changed", conv)
        if key == GENERAL_KEY:
            # Private tabs show whether their peer is online.
            for other in self.private_conversations():
                self._emit("members_changed", other)

    def set_rooms(self, rooms: list[tuple[str, int]]) -> None:
        self.rooms_supported = True
        self.room_list = rooms
        self._emit("rooms_changed")

    def set_rooms_unsupported(self) -> None:
        self.rooms_supported = False
        self._emit("rooms_changed")

    # -- typing -----------------------------------------------------------
    def set_typing(self, key: ConvKey, user: str) -> None:
        conv = self.conversations.get(key)
        if conv is None:
            return
        conv.typing[fold(user)] = (user, self.clock.seconds() + TYPING_SHOWN_FOR)
        self._emit("typing_changed", conv)
        self._schedule_typing_expiry()

    def clear_typing(self, key: ConvKey, user: str) -> None:
        conv = self.conversations.get(key)
        if conv is not None and conv.typing.pop(fold(user), None) is not None:
            self._emit("typing_changed", conv)

    def clear_all_typing(self) -> None:
        for conv in self.conversations.values():
            if conv.typing:
                conv.typing.clear()
                self._emit("typing_changed", conv)

    def _schedule_typing_expiry(self) -> None:
        # One timer for the whole model, set to the earliest expiry.
        expiries = [
            exp for c in self.conversations.values() for _n, exp in c.typing.values()
        ]
        if self._typing_timer is not None and self._typing_timer.active():
            self._typing_timer.cancel()
        self._typing_timer = None
        if expiries:
            delay = max(0.0, min(expiries) - self.clock.seconds())
            self._typing_timer = self.clock.callLater(delay, self._expire_typing)

    def _expire_typing(self) -> None:
        self._typing_timer = None
        now = self.clock.seconds()
        for conv in self.conversations.values():
            stale = [k for k, (_n, exp) in conv.typing.items() if exp <= now]
            for k in stale:
                del conv.typing[k]
            if stale:
                self._emit("typing_changed", conv)
        self._schedule_typing_expiry()

    # -- connection state ---------------------------------------------------
    def set_state(self, state: ConnState, retry_at: float | None = None) -> None:
        self.state = state
        self.retry_at = retry_at
        if state is ConnState.ONLINE:
            self.ever_online = True
        if state is not ConnState.ONLINE:
            # Nobody is typing to us while we cannot hear them.
            self.clear_all_typing()
        self._emit("state_changed")

    def login_failed(self, message: str) -> None:
        self.last_error = message
        self._emit("login_failed", message)

    def reset(self) -> None:
        """Forget everything (a different user or server)."""
        for key in [k for k in self.conversations if k != GENERAL_KEY]:
            self.remove(key)
        general = self.conversations[GENERAL_KEY]
        general.lines.clear()
        general.members.clear()
        general.member_count = None
        general.members_more = False
        general.seen.clear()
        general.unread = 0
        general.had_history = False
        self.ever_online = False
        self.rooms_supported = None
        self.room_list = []
        self._emit("conversation_removed", general)
        self._emit("conversation_added", general)
        self._emit("active_changed")

    def shutdown(self) -> None:
        if self._typing_timer is not None and self._typing_timer.active():
            self._typing_timer.cancel()
        self._typing_timer = None
