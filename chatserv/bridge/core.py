"""The state every part of the bridge shares: its groups, sessions, queues and timers.

:class:`~.service.TelegramBridge` is one object made of parts, one module
each: :mod:`.sessions` (the hub side), :mod:`.relay` (Telegram -> chat),
:mod:`.pump` (chat -> Telegram, paced), :mod:`.corrections` (edits and
deletions both ways) and :mod:`.redaction` (the token kept out of logs),
with :mod:`.service` starting and stopping them. They share this state,
and call one another through the methods declared at the end here.
"""

from __future__ import annotations

import logging
import uuid
from collections import Counter, OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall

from ..events import ChatMessage, Correction
from ..hub import Hub, Session
from ..logs import Logger
from ..names import name_key
from ..storage import MessageStore
from .config import BridgeConfig
from .outbox import Outbox, Pacer
from .state import BridgeState, Ref, StateBackend

log = Logger()


#: What a send returns when Telegram asked to wait, and when the line was given up.
_RETRY = object()
_DROPPED = object()


class _Group:
    """One bridged Telegram group and its room. Each group has its own
    queue, pacing, pending corrections and memory of sent lines; nothing in
    here is shared with another group, so one never sees another's traffic."""

    def __init__(self, chat_id: int, room: str, config: BridgeConfig) -> None:
        self.chat_id = chat_id
        self.room = room
        self.room_key = name_key(room)
        self.outbox: Outbox | None = None
        # Chat lines that arrive while the state file is still loading:
        # _enqueue's arguments (chat id, sender, text, reply_tg, pos).
        self.early: deque[tuple[int | None, str | None, str, int | None, int]] = deque(
            maxlen=config.queue_max
        )
        self.early_dropped = 0
        self.pacer = Pacer(*config.group_rate, burst=config.group_burst)
        #: Chat edits and deletions waiting to be applied in Telegram.
        self.corrections: deque[Correction] = deque(maxlen=config.corrections_max)
        self.overflowing = False
        #: Whether the last call for this group sent lines (corrections take turns).
        self.batch_last = False
        #: The lines of recently sent Telegram messages, ``(chat id, html)``,
        #: so that one line of several can be edited in place.
        self.lines: OrderedDict[int, list[tuple[int | None, str]]] = OrderedDict()
        self.lines_max = config.map_size

    def correction_due(self) -> bool:
        """Whether the next call for this group applies a correction rather
        than sending queued lines: when nothing else waits, or in turn with
        the lines, so a busy room does not hold corrections back for ever;
        but never before the corrected message itself has gone out."""
        if not self.corrections:
            return False
        outbox = self.outbox
        if outbox is None or (not outbox.entries and not outbox.dropped):
            return True
        wanted = self.corrections[0].id
        return self.batch_last and not any(e.chat_id == wanted for e in outbox.entries)

    def pending(self) -> bool:
        outbox = self.outbox
        return bool(outbox is not None and (outbox.entries or outbox.dropped)) or bool(self.corrections)

    def remember(self, tg_msg: int, lines: list[tuple[int | None, str]]) -> None:
        self.lines[tg_msg] = lines
        while len(self.lines) > self.lines_max:
            self.lines.popitem(last=False)

@dataclass
class _TgUser:
    base: str
    session: Session
    idle: IDelayedCall


class BridgeCore(Service):
    """The bridge's state; see the module docstring."""

    def __init__(
        self,
        config: BridgeConfig,
        hub: Hub,
        reactor: Any,
        store: MessageStore | None = None,
        *,
        backend: StateBackend | None = None,
        on_lost: Callable[[str, int], None] | None = None,
        catch_up: bool = False,
    ) -> None:
        self.config = config
        #: Clustered: called with a reason (and the database's term, when it
        #: refused ours) once this node must stop bridging (see .cluster).
        self.on_lost = on_lost
        #: Clustered: queue what the rooms said while no node bridged them.
        self.catch_up = catch_up
        self.hub = hub
        self.reactor = reactor
        #: whether chat ids recorded by earlier runs still name the same
        #: messages; decided once the state file is loaded
        self.stable_ids = False
        self._first_id: int | None = None
        #: true until updates newer than the saved offset arrive, when
        #: Telegram may offer handled ones again
        self._catching_up = False
        #: Telegram chat id -> group; the first configured group first.
        self.groups: dict[int, _Group] = {c: _Group(c, r, config) for c, r in config.chats()}
        self._rooms = {g.room_key: g for g in self.groups.values()}
        self._turn = 0
        #: The server's store (for the originals of Telegram edits), if any.
        self.store = store
        # No client may take a name that looks like one of ours.
        hub.reserve_suffix(config.marker)
        self.run = uuid.uuid4().hex[:12]
        self.state = BridgeState(
            config.state_path,
            reactor,
            config.map_size,
            self.run,
            backend=backend,
            on_fenced=(lambda e: on_lost(str(e), e.term)) if on_lost is not None else None,
        )
        self.session: Session | None = None
        self.tg_users: dict[int, _TgUser] = {}
        #: name keys of every session the bridge holds: their messages and
        #: presence never go back to Telegram.
        self.bridged: set[str] = set()
        self.global_pacer = Pacer(*config.global_rate)
        self._not_before = 0.0
        self._backoff = 0.0
        self._failures = 0
        self._direct: deque[tuple[int, str]] = deque(maxlen=100)
        self._answered: OrderedDict[int, float] = OrderedDict()
        self.app: Any = None
        self.bot: Any = None
        self.ready: Deferred[None] = Deferred()
        self._starting: Deferred[None] | None = None
        self._pump_d: Deferred[None] | None = None
        self._poll_d: Deferred[None] | None = None
        self._poll_call: Deferred[Any] | None = None
        #: the offset of the next getUpdates (None: whatever Telegram holds)
        self._next_update: int | None = None
        #: the Telegram messages of the batch being relayed, by cid, until
        #: the chat has committed them (the batch's offset waits for that),
        #: and the cid of each by the chat message id the hub gave it
        self._relayed: dict[str, Any] = {}
        self._relayed_ids: dict[int, str] = {}
        self._all_committed: Deferred[None] | None = None
        self._relaying = False
        self._wake: Deferred[None] | None = None
        self._kick_call: IDelayedCall | None = None
        self._log_setup: list[tuple[logging.Logger, list[logging.Handler], bool, int]] = []
        #: sendMessage calls by outcome ("ok", "error", "retry_after") and the
        #: seconds of flood-control waits asked for (chatserv.metrics).
        self.api_calls: Counter[str] = Counter()
        self.flood_wait_seconds = 0.0
        #: Other chats whose messages were ignored: each is logged once.
        self._ignored_chats: set[int] = set()

    @property
    def outbox(self) -> Outbox | None:
        """The first group's queue."""
        return next(iter(self.groups.values())).outbox

    def _group(self, room: str | None) -> _Group | None:
        return self._rooms.get(name_key(room)) if room is not None else None

    # -- what the parts call across modules (defined in the module named) --

    def _redact(self, text: str) -> str:
        raise NotImplementedError  # in .redaction

    def _tg_session(self, key: int, base: str, group: _Group) -> Session:
        raise NotImplementedError  # in .sessions

    def _relay_edit(self, group: _Group, session: Session, tg_msg: int, body: str) -> None:
        raise NotImplementedError  # in .corrections

    def _usable_id(self, ref: Ref) -> int | None:
        raise NotImplementedError  # in .corrections

    def online(self, room: str | None = None) -> list[str]:
        raise NotImplementedError  # in .sessions

    def _enqueue(
        self,
        group: _Group,
        chat_id: int | None,
        sender: str | None,
        text: str,
        reply_tg: int | None = None,
        pos: int = 0,
    ) -> None:
        raise NotImplementedError  # in .pump

    def _kick(self) -> None:
        raise NotImplementedError  # in .pump

    def _heard(self, message: ChatMessage) -> None:
        raise NotImplementedError  # in .relay

    def _own_echo(self, message: ChatMessage) -> None:
        raise NotImplementedError  # in .relay

    def _chat_message(self, message: ChatMessage) -> None:
        raise NotImplementedError  # in .pump

    async def _sleep(self, delay: float) -> None:
        raise NotImplementedError  # in .pump

    def _chat_private(self, message: ChatMessage) -> None:
        raise NotImplementedError  # in .sessions

    def _carrier(self, group: _Group, chat_id: Any) -> int | None:
        raise NotImplementedError  # in .corrections

    async def _correct_in_telegram(self, group: _Group, correction: Correction) -> Any:
        raise NotImplementedError  # in .corrections

    async def _telegram(
        self,
        group: _Group | None,
        method: str,
        chat_id: int,
        tg_msg: int | None = None,
        text: str | None = None,
        **options: Any,
    ) -> Any:
        raise NotImplementedError  # in .pump

    async def _send(
        self, chat_id: int, text: str, html: bool, group: _Group | None = None, reply_tg: int | None = None
    ) -> Any:
        raise NotImplementedError  # in .pump
