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

Outbound (chat -> Telegram) goes, per group (:class:`.core._Group`), through a
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

Where the code is
-----------------
:class:`TelegramBridge` is one service assembled from parts, one module per
responsibility, sharing the state in :mod:`.core`: this module starts and
stops it; :mod:`.sessions` is the hub side (its sessions and what the hub
hands them); :mod:`.relay` is Telegram -> chat; :mod:`.pump` is chat ->
Telegram with its queues and pacing; :mod:`.corrections` is edits and
deletions both ways; :mod:`.redaction` keeps the token out of the logs.
"""

from __future__ import annotations

import itertools
from collections import deque
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, ensureDeferred

from ..events import ChatMessage
from ..logs import Logger
from .aio import as_deferred, require_asyncio_reactor
from .corrections import Corrections
from .outbox import Entry, Outbox
from .pump import SendPump
from .redaction import LogRedaction
from .relay import InboundRelay
from .sessions import BRIDGE_USER, HubSide, _Listener
from .state import StateError

log = Logger()

#: A new leader's catch-up reads the chat history in pages of this many
#: messages, at most this many pages (see TelegramBridge._room_since).
CATCH_UP_PAGE = 200
CATCH_UP_PAGES = 50


class TelegramBridge(InboundRelay, Corrections, SendPump, HubSide, LogRedaction):
    """Bridges each Telegram group of ``config.chats()`` with its room of *hub*.

    ``ready`` fires once polling has started (tests wait for it). *store*,
    the server's message store, is not written to: the bridge keeps its own
    bookkeeping in ``config.state_path`` (see :mod:`.state`), and learns
    whether chat ids survive restarts from the hub's numbering.
    """

    name = "telegram-bridge"  # type: ignore[assignment]

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
            if self.on_lost is not None:
                # Clustered: another node may do better; the lease decides.
                log.warn("{error}; this node gives up the Telegram bridge", error=str(e))
                self._logout_all()
                self.on_lost(str(e), getattr(e, "term", 0))
                return
            log.critical("{error}; the chat server runs without the Telegram bridge", error=str(e))
            self._logout_all()
            return
        # With durable storage the hub numbers on from the stored messages;
        # without it, or with :memory:, it starts again at 1 and ids from
        # earlier runs would name other messages. In a cluster (catch_up)
        # the store is the shared PostgreSQL one: ids are never reused,
        # although each node numbers in blocks of its own.
        self.stable_ids = self.catch_up or (
            self._first_id is not None and self._first_id > self.state.max_chat_id
        )
        # Read before the queues exist, so that whatever the rooms say
        # meanwhile waits in group.early and is queued after the lines
        # missed, in the order the chat said them.
        missed = await self._missed_lines({e.chat_id for _, e in queued}) if self.catch_up else {}
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
            for message in missed.get(group.chat_id, ()):
                self._chat_message(message)
            early, group.early = group.early, deque()
            queued_ids = {e.chat_id for e in group.outbox.entries}
            for item in early:
                if item[0] is None or item[0] not in queued_ids:
                    self._enqueue(group, *item)
            group.outbox.dropped += group.early_dropped
        if queued:
            log.info("{n} chat lines still queued for Telegram from the last run", n=len(queued))
        self._pump_d = ensureDeferred(self._pump())
        self._pump_d.addErrback(self._pump_died)
        await self._start_telegram()

    async def _missed_lines(self, queued: set[int | None]) -> dict[int, list[ChatMessage]]:
        """A new leader of a cluster: what the bridged rooms said while no
        node bridged them, per group, from the chat history.

        Each group's mark is the stream position of the last line queued for
        it (kept with the shared state, written with the queue), so the
        room's messages after it are the ones no leader queued. Paged by
        position (``room_after``), not by id: ids come in blocks per node,
        and only positions follow the commit order. Lines from Telegram
        users (the marker), lines deleted, still queued or already sent are
        left out; at most ``queue_max`` of the newest are kept, like the queue.
        """
        store = self.store
        if store is None or not getattr(store, "keeps_history", False):
            return {}
        sent = set(self.state.sent_ids())
        missed: dict[int, list[ChatMessage]] = {}
        for group in self.groups.values():
            mark = self.state.marks.get(group.chat_id)
            try:
                if mark is None:
                    # The first leader ever: the bridge starts now (its session
                    # hears everything from here), and a later gap is caught
                    # up from here.
                    self.state.set_mark(group.chat_id, await store.current_position())
                    continue
                lines = await self._room_since(group.room, mark)
            except Exception as e:
                log.warn("cannot read the chat history to catch up: {error}", error=str(e))
                continue
            found = [
                m
                for m in lines
                if m.deleted is None
                and m.id not in queued
                and m.id not in sent
                and not m.sender.endswith(self.config.marker)
            ]
            if found:
                missed[group.chat_id] = found
                log.info(
                    "{n} chat lines of room {room} said while no node bridged it are queued for Telegram",
                    n=len(found),
                    room=group.room,
                )
        return missed

    async def _room_since(self, room: str, after: int) -> list[ChatMessage]:
        """The newest ``queue_max`` messages of *room* past position *after*,
        in position order."""
        assert self.store is not None
        kept: deque[ChatMessage] = deque(maxlen=self.config.queue_max)
        for _ in range(CATCH_UP_PAGES):
            page = await self.store.room_after(room, after, CATCH_UP_PAGE)
            kept.extend(page)
            if len(page) < CATCH_UP_PAGE:
                return list(kept)
            after = page[-1].pos
        # A very long gap (no leader for ages): rather than read it all, the
        # room's newest messages (by id, close enough to their order) past it.
        newest = await self.store.room_page(room, None, self.config.queue_max)
        log.warn(
            "room {room} said more than {n} lines while no node bridged it; the newest are queued",
            room=room,
            n=CATCH_UP_PAGE * CATCH_UP_PAGES,
        )
        return sorted((m for m in newest if m.pos > after), key=lambda m: m.pos)

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
        self._poll_d = ensureDeferred(self._poll())
        self._poll_d.addErrback(self._poll_died)
        self._kick()

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
        if self._poll_call is not None and not self._poll_call.called:
            self._poll_call.cancel()
        if self._poll_d is not None and not self._poll_d.called:
            if self._relaying:
                # A batch being relayed is finished, and its offset written.
                self._poll_d.addTimeout(10, self.reactor)
            else:
                self._poll_d.cancel()
            try:
                await self._poll_d
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


    # -- Telegram -> chat -----------------------------------------------------


    # -- chat -> Telegram -----------------------------------------------------


    # -- logging ------------------------------------------------------------------
