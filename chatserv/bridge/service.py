"""The Telegram bridge: one Twisted service that makes each configured
Telegram group and its chat room one conversation.

How it sits in the server
-------------------------
* It joins the hub like a connection does, through the ``Participant``
  interface: one session of its own (``Telegram (TG)``) that hears the
  bridged room, and one session per active Telegram user (``Luis (TG)``),
  whose deliveries are dropped because that person reads the chat in
  Telegram. So chat users see who is talking from Telegram in their user
  lists; a Telegram user leaves that list after ``idle_timeout`` without
  writing. Bridged names are logged in as *trusted*: they carry the marker
  with its space, which no client can claim, so nobody can impersonate a
  Telegram user and no chat user's message is ever mistaken for an echo.
* python-telegram-bot runs in the reactor's own asyncio loop (the asyncio
  reactor). Its ``Application`` is built in :meth:`startService`, driven by
  hand (``initialize``, ``start``, ``updater.start_polling``; the reverse on
  stop) and every PTB coroutine is awaited as a Deferred. There is no
  second thread or loop; the state file's single writer thread is the only
  other thread.

Outbound (chat -> Telegram) goes, per group (:class:`_Group`), through a
bounded queue that coalesces lines into as few Telegram messages as the
limits need; a single pump sends them in order, each group paced by its own
:class:`~.outbox.Pacer` and all by a global one, honouring 429
``retry_after`` and backing off on network errors. Nothing in that path
blocks the reactor, so the chat keeps serving its clients while Telegram is
slow or away.

Replies and corrections. A chat reply to a message that a Telegram message
carries goes out as a Telegram reply to it (the id map in :mod:`.state`
works both ways). Chat edits and deletions wait in the group's corrections
queue and become ``editMessageText``/``deleteMessage`` of the bot's own
message (or a short notice where that cannot be done). Telegram edits become
hub corrections (``edited`` frames) when the hub still allows them. Telegram
deletions are never reported to bots, so they cannot be relayed.
"""

from __future__ import annotations

import itertools
import logging
import uuid
import warnings
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, ensureDeferred
from twisted.internet.interfaces import IDelayedCall

from .. import conversation
from ..errors import ChatError, NameTaken
from ..events import ChatMessage, Correction, PresenceChange, Typing
from ..hub import GENERAL, Hub, Session
from ..logs import Logger
from ..names import name_key
from ..storage import MessageStore
from ..wire import error_text, join_text, leave_text
from .aio import as_deferred, require_asyncio_reactor
from .config import BridgeConfig
from .format import display_name, edit_text, excerpt, message_body, render_line, reply_text, utf16_len
from .outbox import Batch, Entry, Outbox, Pacer, dropped_notice
from .state import BridgeState, Ref, StateError

log = Logger()

PRIVATE_ANSWER = (
    "Soy el puente entre un grupo de Telegram y una sala de chat; solo reenvío los mensajes de ese grupo."
)
#: A private chat gets the answer above at most once in this many seconds.
PRIVATE_ANSWER_EVERY = 3600.0
BRIDGE_USER = "Telegram"
BRIDGE_PRIVATE = (
    "Soy el puente con Telegram: lo que se escribe en la sala {room} llega al grupo; "
    "los mensajes privados, no."
)
NO_PRIVATE = "Estoy en Telegram: los mensajes privados del chat no me llegan."
_RETRY = object()
_DROPPED = object()


class _Listener:
    """The bridge's own session: it hears the bridged room for Telegram."""

    def __init__(self, bridge: TelegramBridge) -> None:
        self.bridge = bridge

    def receive_message(self, message: ChatMessage) -> None:
        self.bridge._chat_message(message)

    def receive_presence(self, change: PresenceChange) -> None:
        self.bridge._chat_presence(change)

    def receive_typing(self, typing: Typing) -> None:
        pass

    def receive_correction(self, correction: Correction) -> None:
        self.bridge._chat_correction(correction)


class _Mute:
    """A Telegram user's session. That person reads the chat in Telegram,
    through the bridge's own session, so what the hub hands it is dropped.
    A private message to it is answered, once per message, saying it cannot
    be delivered (see docs/TELEGRAM.md)."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.session: Session | None = None

    def receive_message(self, message: ChatMessage) -> None:
        me = self.session
        if me is None or message.room is not None or message.sender == me.name:
            return
        sender = self.hub.find(message.sender)
        if sender is None or isinstance(sender.participant, _Mute):
            return
        try:
            self.hub.private(me, message.sender, NO_PRIVATE)
        except ChatError:
            pass

    def receive_presence(self, change: PresenceChange) -> None:
        pass

    def receive_typing(self, typing: Typing) -> None:
        pass

    def receive_correction(self, correction: Correction) -> None:
        pass


class _Group:
    """One bridged Telegram group and its room. Each group has its own
    queue, pacing, pending corrections and memory of sent lines; nothing in
    here is shared with another group, so one never sees another's traffic."""

    def __init__(self, chat_id: int, room: str, config: BridgeConfig) -> None:
        self.chat_id = chat_id
        self.room = room
        self.room_key = name_key(room)
        self.outbox: Outbox | None = None
        # Chat lines that arrive while the state file is still loading.
        self.early: deque[tuple[int | None, str | None, str, int | None]] = deque(maxlen=config.queue_max)
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


class _Redact(logging.Filter):
    """Keeps the bot token out of PTB's and httpx's log records (their
    request URLs contain it)."""

    def __init__(self, token: str) -> None:
        super().__init__()
        self.token = token

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if record.exc_info:
            text += "\n" + logging.Formatter().formatException(record.exc_info)
            record.exc_info = None
            record.exc_text = None
        record.msg = text.replace(self.token, "<token>")
        record.args = ()
        return True


class _ToTwisted(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        log.warn("{logger}: {text}", logger=record.name, text=record.getMessage())


class TelegramBridge(Service):
    """Bridges each Telegram group of ``config.chats()`` with its room of *hub*.

    ``ready`` fires once polling has started (tests wait for it). *store*,
    the server's message store, is not written to: the bridge keeps its own
    bookkeeping in ``config.state_path`` (see :mod:`.state`), and learns
    whether chat ids survive restarts from the hub's numbering.
    """

    name = "telegram-bridge"  # type: ignore[assignment]

    def __init__(
        self, config: BridgeConfig, hub: Hub, reactor: Any, store: MessageStore | None = None
    ) -> None:
        self.config = config
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
        self.state = BridgeState(config.state_path, reactor, config.map_size, self.run)
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

    # -- service ------------------------------------------------------------

    def startService(self) -> None:
        require_asyncio_reactor(self.reactor)
        super().startService()
        self._install_log_redaction()
        # Log in now, synchronously: nothing said in the room from here on is
        # missed, even while Telegram is still being reached.
        self.session = self._login(_Listener(self), BRIDGE_USER, [g.room for g in self.groups.values()])
        # The id the hub gives its next message, read before anything is said.
        self._first_id = self.hub.ids.upcoming
        self._starting = ensureDeferred(self._start())
        self._starting.addErrback(self._start_failed)
        for group in self.groups.values():
            log.info("Telegram bridge: chat {chat} <-> room {room}", chat=group.chat_id, room=group.room)

    def _start_failed(self, failure: Any) -> None:
        if not failure.check(CancelledError):
            log.failure("the Telegram bridge could not start; the chat server runs without it", failure)

    async def _start(self) -> None:
        try:
            queued = await self.state.open()
        except StateError as e:
            log.critical("{error}; the chat server runs without the Telegram bridge", error=str(e))
            self._logout_all()
            return
        # With durable storage the hub numbers on from the stored messages;
        # without it, or with :memory:, it starts again at 1 and ids from
        # earlier runs would name other messages.
        self.stable_ids = self._first_id is not None and self._first_id > self.state.max_chat_id
        seqs = itertools.count(max((e.seq for _, e in queued), default=0) + 1)
        first = next(iter(self.groups))
        restored: dict[int, list[Entry]] = {}
        for tg_chat, entry in queued:
            restored.setdefault(first if tg_chat is None else tg_chat, []).append(entry)
        for tg_chat, entries in restored.items():
            if tg_chat not in self.groups:
                log.warn(
                    "dropping {n} queued lines for chat {chat}, no longer bridged",
                    n=len(entries),
                    chat=tg_chat,
                )
                self.state.queue_remove(entries)
        for group in self.groups.values():
            outbox = Outbox(self.config.queue_max, self.config.max_length, seqs=seqs)
            self.state.queue_remove(outbox.restore(restored.get(group.chat_id, [])))
            group.outbox = outbox
            early, group.early = group.early, deque()
            for item in early:
                self._enqueue(group, *item)
            outbox.dropped += group.early_dropped
        if queued:
            log.info("{n} chat lines still queued for Telegram from the last run", n=len(queued))
        self._pump_d = ensureDeferred(self._pump())
        self._pump_d.addErrback(self._pump_died)
        await self._start_telegram()

    def _build_application(self) -> Any:
        from telegram import Update
        from telegram.ext import Application, TypeHandler

        t = self.config.http_timeout
        app = (
            Application.builder()
            .token(self.config.token)
            .base_url(self.config.api_url)
            .job_queue(None)
            .concurrent_updates(False)
            .connect_timeout(t)
            .read_timeout(t)
            .write_timeout(t)
            .pool_timeout(t)
            .get_updates_connect_timeout(t)
            .get_updates_read_timeout(t)
            .get_updates_write_timeout(t)
            .get_updates_pool_timeout(t)
            .build()
        )
        app.add_handler(TypeHandler(Update, self._on_update))
        app.add_error_handler(self._on_handler_error)
        return app

    async def _start_telegram(self) -> None:
        from telegram.error import InvalidToken, TelegramError

        app = self.app = self._build_application()
        delay = self.config.backoff_initial
        while self.running:
            try:
                await as_deferred(app.initialize())
                break
            except InvalidToken:
                log.critical("Telegram refused the bot token; the bridge stays off (the chat runs on)")
                return
            except TelegramError as e:
                log.warn(
                    "cannot reach the Telegram Bot API ({error}); retrying in {delay:.1f}s",
                    error=self._redact(str(e)),
                    delay=delay,
                )
            await self._sleep(delay)
            delay = min(self.config.backoff_max, delay * 2)
        if not self.running:
            return
        self.bot = app.bot
        log.info("Telegram bot @{username} is up", username=self.bot.username)
        await as_deferred(app.start())
        await self._confirm_offset()
        await as_deferred(
            app.updater.start_polling(
                timeout=timedelta(seconds=self.config.poll_timeout),
                # Deletions are not among them: the Bot API tells bots of
                # none (docs/TELEGRAM.md).
                allowed_updates=["message", "edited_message"],
                error_callback=self._poll_error,
                # Telegram may drop out between getMe and deleteWebhook too;
                # stopping the service cancels these retries.
                bootstrap_retries=-1,
            )
        )
        self._kick()
        self.ready.callback(None)

    async def _confirm_offset(self) -> None:
        """Tell Telegram which updates the last run handled, so it does not
        send them again (the offset is ours; PTB's starts from zero)."""
        from telegram.error import TelegramError

        if not self.state.offset:
            return
        try:
            await as_deferred(self.bot.get_updates(offset=self.state.offset + 1, limit=1, timeout=0))
        except TelegramError as e:
            # Not fatal: updates offered again are recognised by their id.
            log.warn("could not confirm the saved update offset: {error}", error=self._redact(str(e)))
            self._catching_up = True

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return ensureDeferred(self._stop())

    async def _stop(self) -> None:
        if self._starting is not None and not self._starting.called:
            self._starting.cancel()
        if self._kick_call is not None and self._kick_call.active():
            self._kick_call.cancel()
        if self._wake is not None and not self._wake.called:
            self._wake.callback(None)
        if self._pump_d is not None and not self._pump_d.called:
            # A send in flight may finish: cancelling it could deliver a line
            # now and again after the restart.
            self._pump_d.addTimeout(5, self.reactor)
            try:
                await self._pump_d
            except Exception:
                pass
        app = self.app
        if app is not None:
            try:
                if app.updater is not None and app.updater.running:
                    await as_deferred(app.updater.stop())
                if app.running:
                    await as_deferred(app.stop())
                await as_deferred(app.shutdown())
            except Exception as e:
                log.warn("stopping python-telegram-bot: {error}", error=self._redact(repr(e)))
        self._logout_all()
        await self.state.close()
        self._remove_log_redaction()

    # -- the hub side ---------------------------------------------------------

    def _login(self, participant: Any, base: str, rooms: list[str]) -> Session:
        for n in range(1, 1000):
            name = f"{base}{'' if n == 1 else f' {n}'}{self.config.marker}"
            try:
                session = self.hub.login(participant, name, trusted=True)
            except NameTaken:
                continue
            self.bridged.add(session.key)
            for room in rooms:
                if name_key(room) != name_key(GENERAL):
                    self.hub.join(session, room)
            return session
        raise NameTaken(f"no free name for {base}")

    def _logout(self, session: Session) -> None:
        self.bridged.discard(session.key)
        self.hub.logout(session)

    def _logout_all(self) -> None:
        for user in self.tg_users.values():
            if user.idle.active():
                user.idle.cancel()
            self._logout(user.session)
        self.tg_users.clear()
        if self.session is not None:
            self._logout(self.session)
            self.session = None

    def _tg_session(self, key: int, base: str, group: _Group) -> Session:
        """The hub session speaking for Telegram user (or channel) *key* in
        *group*'s room (one session per person, in the rooms of the groups
        they wrote in)."""
        user = self.tg_users.get(key)
        if user is not None and user.base == base and self.hub.find(user.session.name) is user.session:
            user.idle.reset(self.config.idle_timeout)
            if group.room_key != name_key(GENERAL):
                self.hub.join(user.session, group.room)
            return user.session
        if user is not None:
            # Renamed in Telegram: show the new name.
            if user.idle.active():
                user.idle.cancel()
            self._logout(user.session)
        mute = _Mute(self.hub)
        session = mute.session = self._login(mute, base, [group.room])
        idle = self.reactor.callLater(self.config.idle_timeout, self._expire, key)
        self.tg_users[key] = _TgUser(base, session, idle)
        return session

    def _expire(self, key: int) -> None:
        user = self.tg_users.pop(key, None)
        if user is not None:
            self._logout(user.session)

    def _chat_message(self, message: ChatMessage) -> None:
        if message.room is None:
            self._chat_private(message)
            return
        group = self._group(message.room)
        if group is None:
            return
        if name_key(message.sender) in self.bridged:
            return  # it came from Telegram: no echo
        text, reply_tg = message.text, None
        quoted = message.reply_to
        if quoted is not None:
            reply_tg = self._carrier(group, quoted.get("id"))
            if reply_tg is None:
                # Nothing in Telegram to answer: say it in words.
                text = reply_text(str(quoted.get("from", "?")), str(quoted.get("msg", "")), text)
        self._enqueue(group, message.id, message.sender, text, reply_tg)

    def _carrier(self, group: _Group, chat_id: Any) -> int | None:
        """The first Telegram message of *group* that carries chat message *chat_id*."""
        if not isinstance(chat_id, int):
            return None
        carriers = self._carriers(group, chat_id)
        return carriers[0][0] if carriers else None

    def _carriers(self, group: _Group, chat_id: int) -> list[tuple[int, list[Ref]]]:
        """The Telegram messages of *group* carrying chat message *chat_id*,
        counting only ids that still name it (see :meth:`_usable_id`)."""
        return [
            (tg_msg, refs)
            for tg_msg, refs in self.state.carriers(chat_id, group.chat_id)
            if any(ref.chat_id == chat_id and self._usable_id(ref) == chat_id for ref in refs)
        ]

    def _chat_correction(self, correction: Correction) -> None:
        """A chat edit or deletion of a message relayed to Telegram: change
        it there too (in the queue if it has not left yet)."""
        group = self._group(correction.room)
        if group is None or name_key(correction.sender) in self.bridged:
            return
        if group.outbox is not None:
            changed = group.outbox.replace(correction.id, correction.sender, correction.text)
            if changed is not None:
                removed, added = changed
                self.state.queue_remove(removed)
                self.state.queue_add(added, group.chat_id)
                return
        if not self._carriers(group, correction.id) and not any(
            e.chat_id == correction.id for e in (group.outbox.entries if group.outbox else ())
        ):
            return  # never reached Telegram (or too long ago to know where)
        group.corrections.append(correction)
        self._kick()

    def _chat_private(self, message: ChatMessage) -> None:
        me = self.session
        if me is None or name_key(message.sender) in self.bridged:
            return
        try:
            rooms = ", ".join(g.room for g in self.groups.values())
            self.hub.private(me, message.sender, BRIDGE_PRIVATE.format(room=rooms))
        except ChatError:
            pass

    def _chat_presence(self, change: PresenceChange) -> None:
        # Not while stopping: clients leaving at shutdown are no news, and
        # the lines would wait in the queue for the next start.
        group = self._group(change.room)
        if not self.config.notices or not self.running or group is None:
            return
        joined = tuple(n for n in change.joined if name_key(n) not in self.bridged)
        left = tuple(n for n in change.left if name_key(n) not in self.bridged)
        if joined:
            self._enqueue(group, None, None, join_text(joined))
        if left:
            self._enqueue(group, None, None, leave_text(left))

    def online(self, room: str | None = None) -> list[str]:
        """Who is in a bridged room (the first group's by default), Telegram
        users and the bridge left out."""
        room = room if room is not None else next(iter(self.groups.values())).room
        return [n for n in self.hub.users(room) if name_key(n) not in self.bridged]

    # -- Telegram -> chat -----------------------------------------------------

    async def _on_update(self, update: Any, context: Any) -> None:
        uid = update.update_id
        if uid <= self.state.offset:
            if self._catching_up:
                log.debug("update {id} already handled", id=uid)
                return
            # Telegram delivers ids in order, and it has confirmed everything
            # up to our offset: a lower id means it started numbering afresh
            # (it does after a week without updates).
            log.info("Telegram restarted its update numbering at {id}", id=uid)
        else:
            self._catching_up = False
        try:
            self._relay_update(update)
        finally:
            # Marked handled even if relaying failed: an update that breaks
            # the bridge must not come back after every restart.
            self.state.set_offset(uid, force=True)

    async def _on_handler_error(self, update: Any, context: Any) -> None:
        log.error("Telegram update could not be relayed: {error}", error=self._redact(repr(context.error)))

    def _relay_update(self, update: Any) -> None:
        edited = update.message is None and update.edited_message is not None
        msg = update.message or update.edited_message
        if msg is None:
            return
        chat = msg.chat
        if chat.type == "private":
            self._answer_private(msg)
            return
        group = self.groups.get(chat.id)
        if group is None:
            # At info, once per chat: docs/TELEGRAM.md sends operators here
            # to learn their group's id, and a busy foreign chat cannot flood the log.
            if chat.id not in self._ignored_chats and len(self._ignored_chats) < 1000:
                self._ignored_chats.add(chat.id)
                log.info("ignoring a message from chat {chat}", chat=chat.id)
            return
        user = msg.from_user
        if user is not None and self.bot is not None and user.id == self.bot.id:
            return
        body = message_body(msg)
        if body is None:
            return
        if not edited and self._is_users_command(body):
            self._answer_users(group)
            return
        sender_chat = msg.sender_chat
        if sender_chat is not None:
            session = self._tg_session(sender_chat.id, display_name(None, sender_chat), group)
        else:
            session = self._tg_session(user.id if user else 0, display_name(user), group)
        if edited:
            self._relay_edit(group, session, msg.message_id, body)
            return
        reply_to = None
        if msg.reply_to_message is not None and not _is_topic_root(msg.reply_to_message):
            reply_to = self._reply(chat.id, msg.reply_to_message)
        message = self.hub.broadcast(session, body, group.room, reply_to=reply_to)
        self.state.map_add(chat.id, msg.message_id, [Ref(message.id, session.name, excerpt(body), self.run)])

    def _relay_edit(self, group: _Group, session: Session, tg_msg: int, body: str) -> None:
        """A Telegram edit: an ``edited`` correction of the chat message it
        was relayed as, when the chat still knows it and allows it (within
        the edit window); else, as before, a new message marked (editado)."""
        refs = self.state.map_get(group.chat_id, tg_msg)
        chat_id = self._usable_id(refs[-1]) if refs else None

        def fallback(_: object = None) -> None:
            if self.hub.find(session.name) is not session:
                return
            message = self.hub.broadcast(session, edit_text(body), group.room, edit_of=chat_id)
            ref = Ref(message.id, session.name, excerpt(body), self.run)
            self.state.map_add(group.chat_id, tg_msg, [ref])

        if chat_id is None:
            fallback()
            return

        def correct(original: ChatMessage | None) -> None:
            try:
                self.hub.correct(session, original, body)
            except ChatError as e:
                why = error_text(e)
                log.debug("Telegram edit of {id} relayed as a new message: {why}", id=chat_id, why=why)
                fallback()

        def failed(failure: Any) -> None:
            log.failure("looking up the original of a Telegram edit", failure)
            fallback()

        found = conversation.find(self.hub, self.store, chat_id, [group.room])
        found.addCallback(correct).addErrback(failed)

    def _usable_id(self, ref: Ref) -> int | None:
        if ref.run == self.run or self.stable_ids:
            return ref.chat_id
        return None

    def _reply(self, tg_chat: int, original: Any) -> dict[str, Any]:
        refs = self.state.map_get(tg_chat, original.message_id)
        chat_id: int | None = None
        if refs:
            # A Telegram message may carry several chat lines; a reply to it
            # answers the last of them.
            ref = refs[-1]
            who, quoted, chat_id = ref.sender, ref.excerpt, self._usable_id(ref)
        elif original.from_user is not None and self.bot is not None and original.from_user.id == self.bot.id:
            # Ours, but older than the map: its text is "Name: line...".
            first = (original.text or "").split("\n", 1)[0]
            who, sep, quoted = first.partition(": ")
            if not sep:
                who, quoted = "chat", first
        else:
            if original.sender_chat is not None:
                who = display_name(None, original.sender_chat) + self.config.marker
            else:
                who = display_name(original.from_user) + self.config.marker
            quoted = message_body(original) or ""
        reply_to: dict[str, Any] = {"from": who, "msg": excerpt(quoted)}
        if chat_id is not None:
            reply_to["id"] = chat_id
        return reply_to

    def _is_users_command(self, text: str) -> bool:
        word = text.strip().split(maxsplit=1)[0].lower() if text.strip() else ""
        if word == "/users":
            return True
        username = (self.bot.username or "").lower() if self.bot is not None else ""
        return bool(username) and word == f"/users@{username}"

    def _answer_users(self, group: _Group) -> None:
        names = self.online(group.room)
        if names:
            text = f"En línea en el chat ({len(names)}): {', '.join(names)}"
        else:
            text = "Nadie en línea en el chat ahora mismo."
        self._enqueue(group, None, None, text)

    def _answer_private(self, msg: Any) -> None:
        user = msg.from_user
        if user is None or user.is_bot:
            return
        now = self.reactor.seconds()
        last = self._answered.get(user.id)
        if last is not None and now - last < PRIVATE_ANSWER_EVERY:
            return
        self._answered[user.id] = now
        self._answered.move_to_end(user.id)
        while len(self._answered) > 10_000:
            self._answered.popitem(last=False)
        self._direct.append((msg.chat.id, PRIVATE_ANSWER))
        self._kick()

    def _poll_error(self, error: Exception) -> None:
        # PTB retries polling by itself (backing off up to 30 s); we only log.
        log.warn("polling Telegram failed: {error}", error=self._redact(str(error)))

    # -- chat -> Telegram -----------------------------------------------------

    def _enqueue(
        self, group: _Group, chat_id: int | None, sender: str | None, text: str, reply_tg: int | None = None
    ) -> None:
        if group.outbox is None:
            if len(group.early) == group.early.maxlen:
                group.early_dropped += 1
                if group.early_dropped == 1:
                    log.warn(
                        "chat lines for Telegram arrive faster than the bridge starts; dropping the oldest"
                    )
            group.early.append((chat_id, sender, text, reply_tg))
            return
        added, dropped = group.outbox.add(chat_id, sender, text, reply_tg)
        self.state.queue_add(added, group.chat_id)
        if dropped:
            self.state.queue_remove(dropped)
            if not group.overflowing:
                group.overflowing = True
                log.warn(
                    "Telegram outbound queue is full ({max} lines) for chat {chat}: dropping the oldest "
                    "lines until Telegram catches up; the group will be told how many",
                    chat=group.chat_id,
                    max=self.config.queue_max,
                )
        self._kick()

    def _kick(self) -> None:
        # Wake the pump at the end of this reactor turn, so that every line
        # that arrived in the same turn goes out in one message.
        if self._kick_call is None or not self._kick_call.active():
            self._kick_call = self.reactor.callLater(0, self._wake_pump)

    def _wake_pump(self) -> None:
        wake, self._wake = self._wake, None
        if wake is not None and not wake.called:
            wake.callback(None)

    async def _idle(self, delay: float | None) -> None:
        """Wait until kicked, or until *delay* seconds have passed."""
        wake = self._wake = Deferred()
        call = self.reactor.callLater(delay, self._wake_pump) if delay is not None else None
        try:
            await wake
        finally:
            if call is not None and call.active():
                call.cancel()

    async def _sleep(self, delay: float) -> None:
        d: Deferred[None] = Deferred()
        call = self.reactor.callLater(delay, d.callback, None)
        d.addErrback(lambda f: (call.cancel() if call.active() else None, f)[1])
        await d

    def _pump_died(self, failure: Any) -> None:
        if not failure.check(CancelledError):
            log.failure("the Telegram sender stopped", failure)

    async def _pump(self) -> None:
        """Send queued lines, corrections and private answers, one Telegram
        call at a time: private answers first, then the groups in turn, each
        within its own pacing and all within the global one."""
        while self.running:
            busy = [g for g in self.groups.values() if g.pending()]
            if self.bot is None or (not self._direct and not busy):
                await self._idle(None)
                continue
            now = self.reactor.seconds()
            wait = max(self._not_before - now, self.global_pacer.delay(now))
            group = None
            if not self._direct:
                # Round robin over the groups that may send now, so that a
                # busy group cannot starve a quiet one.
                ready = [g for g in busy if g.pacer.delay(now) <= 0]
                if ready:
                    self._turn += 1
                    group = ready[self._turn % len(ready)]
                else:
                    wait = max(wait, min(g.pacer.delay(now) for g in busy))
            if wait > 0:
                await self._idle(wait)
                continue
            if self._direct:
                chat_id, text = self._direct[0]
                result = await self._send(chat_id, text, html=False)
                if result is not _RETRY and self._direct and self._direct[0] == (chat_id, text):
                    self._direct.popleft()
                continue
            assert group is not None and group.outbox is not None
            if group.correction_due():
                correction = group.corrections[0]
                result = await self._correct_in_telegram(group, correction)
                if result is not _RETRY and group.corrections and group.corrections[0] is correction:
                    group.corrections.popleft()
                group.batch_last = False
                continue
            group.batch_last = True
            batch = group.outbox.batch()
            assert batch is not None
            result = await self._send(
                group.chat_id, batch.html, html=True, group=group, reply_tg=batch.reply_tg
            )
            if result is _RETRY:
                continue
            self._sent(group, batch, result)

    def _sent(self, group: _Group, batch: Batch, result: Any) -> None:
        assert group.outbox is not None
        group.outbox.done(batch)
        self.state.queue_remove(batch.entries)
        if batch.announced:
            log.warn("{n} chat lines were dropped while the Telegram queue was full", n=batch.announced)
            group.overflowing = bool(group.outbox.dropped)
        if result is _DROPPED:
            return
        refs = [
            Ref(e.chat_id, e.sender or "chat", excerpt(e.text), self.run)
            for e in _distinct_messages(batch.entries)
        ]
        self.state.map_add(result.chat.id, result.message_id, refs)
        lines: list[tuple[int | None, str]] = [(e.chat_id, e.html) for e in batch.entries]
        if batch.announced:
            lines.insert(0, (None, dropped_notice(batch.announced)))
        group.remember(result.message_id, lines)

    async def _correct_in_telegram(self, group: _Group, correction: Correction) -> Any:
        """Apply a chat edit or deletion to the Telegram message carrying it.

        A message that carries only this chat message is edited or deleted
        (the bot may edit and delete its own messages; Telegram refuses
        deletions after 48 hours). One carrying several chat lines gets just
        its line changed when the bridge still holds them; otherwise, or if
        the chat message was split over several Telegram messages, a short
        notice answers the Telegram message instead.
        """
        carriers = self._carriers(group, correction.id)
        if not carriers:
            return None
        sender = correction.sender
        if len(carriers) == 1:
            tg_msg, refs = carriers[0]
            if len({r.chat_id for r in refs}) == 1 and tg_msg not in group.lines:
                group.lines[tg_msg] = [(correction.id, "")]
            lines = group.lines.get(tg_msg)
            if lines is not None and sum(1 for c, _ in lines if c == correction.id) == 1:
                if correction.text is None:
                    kept = [(c, h) for c, h in lines if c != correction.id]
                else:
                    new = render_line(sender, correction.text)
                    kept = [(c, new if c == correction.id else h) for c, h in lines]
                html = "\n".join(h for _, h in kept)
                if not kept or not any(c is not None for c, _ in kept):
                    result = await self._telegram(group, "deleteMessage", group.chat_id, tg_msg)
                elif utf16_len(html) <= self.config.max_length:
                    result = await self._telegram(group, "editMessageText", group.chat_id, tg_msg, html)
                else:
                    result = _DROPPED
                if result is not _RETRY and result is not _DROPPED:
                    group.lines[tg_msg] = kept
                if result is not _DROPPED:
                    return result
        # Say it in words, as an answer to the first Telegram message carrying it.
        if correction.text is None:
            notice = render_line(None, f"{sender} ha borrado este mensaje")
        else:
            notice = render_line(sender, f"(editado) {correction.text}")
        result = await self._send(group.chat_id, notice, html=True, group=group, reply_tg=carriers[0][0])
        if result is not _RETRY and result is not _DROPPED:
            ref = Ref(correction.id, sender, excerpt(correction.text or ""), self.run)
            self.state.map_add(result.chat.id, result.message_id, [ref])
        return result

    async def _send(
        self, chat_id: int, text: str, html: bool, group: _Group | None = None, reply_tg: int | None = None
    ) -> Any:
        """One sendMessage; returns the Message, ``_DROPPED`` or ``_RETRY``."""
        from telegram import ReplyParameters
        from telegram.constants import ParseMode

        reply = None
        if reply_tg is not None:
            # If the original is gone, the line still goes out, as a plain message.
            reply = ReplyParameters(reply_tg, allow_sending_without_reply=True)
        return await self._telegram(
            group,
            "sendMessage",
            chat_id,
            None,
            text,
            parse_mode=ParseMode.HTML if html else None,
            reply_parameters=reply,
        )

    async def _telegram(
        self,
        group: _Group | None,
        method: str,
        chat_id: int,
        tg_msg: int | None = None,
        text: str | None = None,
        **options: Any,
    ) -> Any:
        """One Bot API call (sendMessage, editMessageText with HTML, or
        deleteMessage) with the bridge's fault handling: returns its result,
        ``_DROPPED`` (refused for good) or ``_RETRY``."""
        from telegram.constants import ParseMode
        from telegram.error import (
            BadRequest,
            ChatMigrated,
            Forbidden,
            InvalidToken,
            RetryAfter,
            TelegramError,
        )

        try:
            if method == "sendMessage":
                call = self.bot.send_message(chat_id, text, **options)
            elif method == "editMessageText":
                call = self.bot.edit_message_text(text, chat_id, tg_msg, parse_mode=ParseMode.HTML)
            else:
                call = self.bot.delete_message(chat_id, tg_msg)
            message = await as_deferred(call)
        except RetryAfter as e:
            wait = _seconds(e)
            self.api_calls["retry_after"] += 1
            self.flood_wait_seconds += wait
            self._not_before = self.reactor.seconds() + wait
            log.warn("Telegram asks the bridge to wait {wait:.0f}s (flood control)", wait=wait)
            return _RETRY
        except ChatMigrated as e:
            self.api_calls["error"] += 1
            log.warn(
                "Telegram chat {old} became supergroup {new}: bridging that one now; update --telegram-chat",
                old=chat_id,
                new=e.new_chat_id,
            )
            if group is not None and self.groups.get(group.chat_id) is group:
                del self.groups[group.chat_id]
                group.chat_id = e.new_chat_id
                self.groups[group.chat_id] = group
            return _RETRY
        except BadRequest as e:
            self.api_calls["error"] += 1
            if "chat not found" in str(e).lower():
                self._failed(e, "Telegram does not know the chat; is --telegram-chat right?")
                return _RETRY
            # Also an edit or deletion Telegram no longer allows (the message
            # is gone, or too old to delete): nothing to retry.
            log.error(
                "Telegram refused {method} ({error}); it is dropped",
                method=method,
                error=self._redact(str(e)),
            )
            return _DROPPED
        except (Forbidden, InvalidToken) as e:
            self.api_calls["error"] += 1
            self._failed(e, "Telegram refuses the bot; is it still in the group?", longest=True)
            return _RETRY
        except TelegramError as e:
            self.api_calls["error"] += 1
            self._failed(e, "cannot reach Telegram")
            return _RETRY
        self.api_calls["ok"] += 1
        now = self.reactor.seconds()
        self.global_pacer.record(now)
        if group is not None:
            group.pacer.record(now)
        if self._failures:
            log.info("Telegram reachable again after {n} failed attempts", n=self._failures)
        self._failures = 0
        self._backoff = 0.0
        return message

    def queue_depth(self) -> int:
        """Chat lines waiting for Telegram, all groups together."""
        return sum(
            len(group.outbox.entries) if group.outbox is not None else len(group.early)
            for group in self.groups.values()
        )

    def _failed(self, error: Exception, why: str, longest: bool = False) -> None:
        cfg = self.config
        self._backoff = (
            cfg.backoff_max if longest else min(cfg.backoff_max, self._backoff * 2 or cfg.backoff_initial)
        )
        self._not_before = self.reactor.seconds() + self._backoff
        self._failures += 1
        # The first failure is news; the rest of an outage is noise.
        emit = log.warn if self._failures == 1 else log.debug
        emit(
            "{why} ({error}); retrying in {delay:.1f}s",
            why=why,
            error=self._redact(str(error)),
            delay=self._backoff,
        )

    # -- logging ------------------------------------------------------------------

    def _redact(self, text: str) -> str:
        return text.replace(self.config.token, "<token>")

    def _install_log_redaction(self) -> None:
        # PTB warns about its own RetryAfter on every 429 (its int ->
        # timedelta transition); _seconds() already accepts both.
        warnings.filterwarnings("ignore", message=r".*`retry_after` will be of type")
        handler = _ToTwisted(logging.WARNING)
        handler.addFilter(_Redact(self.config.token))
        for name in ("telegram", "httpx", "httpcore"):
            logger = logging.getLogger(name)
            self._log_setup.append((logger, list(logger.handlers), logger.propagate, logger.level))
            # Their records reach the root logger (and whatever an embedding
            # program configured there) only through this redacting handler.
            logger.handlers = [handler]
            logger.propagate = False
            logger.setLevel(logging.WARNING)

    def _remove_log_redaction(self) -> None:
        for logger, handlers, propagate, level in self._log_setup:
            logger.handlers = handlers
            logger.propagate = propagate
            logger.setLevel(level)
        self._log_setup.clear()


def _is_topic_root(message: Any) -> bool:
    # In forum supergroups every message "replies" to its topic's first message.
    return getattr(message, "forum_topic_created", None) is not None


def _distinct_messages(entries: list[Entry]) -> list[Entry]:
    """One entry per chat message (a long one is split over several)."""
    seen: set[int] = set()
    out = []
    for entry in entries:
        if entry.chat_id is None or entry.chat_id in seen:
            continue
        seen.add(entry.chat_id)
        out.append(entry)
    return out


def _seconds(error: Any) -> float:
    with warnings.catch_warnings():
        # PTB 22 warns that retry_after will become a timedelta; accept both.
        warnings.simplefilter("ignore")
        value = error.retry_after
    if isinstance(value, timedelta):
        return value.total_seconds()
    return float(value)
