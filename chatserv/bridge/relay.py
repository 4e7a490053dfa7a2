"""Telegram -> chat: updates from Telegram become hub messages (and
answers to ``/users`` and to private chats with the bot)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.defer import TimeoutError as DeferredTimeout  # what addTimeout raises

from ..events import ChatMessage
from ..logs import Logger
from .aio import as_deferred
from .core import BridgeCore, _Group
from .format import display_name, excerpt, message_body
from .state import Fenced, Ref

log = Logger()


PRIVATE_ANSWER = (
    "Soy el puente entre un grupo de Telegram y una sala de chat; solo reenvío los mensajes de ese grupo."
)


#: A private chat gets the answer above at most once in this many seconds.
PRIVATE_ANSWER_EVERY = 3600.0


def relay_cid(tg_chat: int, tg_msg: int) -> str:
    """The cid a Telegram message is relayed with: its chat and message id,
    which name it for good (update ids start afresh after a quiet week)."""
    return f"tg:{tg_chat}:{tg_msg}"


@dataclass(slots=True)
class _Relayed:
    """A Telegram message relayed in this batch, until the chat commits it."""

    tg_chat: int
    tg_msg: int
    #: The id the hub gave it; None when the hub recognised its cid at once.
    chat_id: int | None = None
    #: Updates later in the batch that refer to it (replies, edits), waiting
    #: for its commit to learn which chat message it is.
    waiters: list[Deferred[None]] = field(default_factory=list)


def _is_topic_root(message: Any) -> bool:
    # In forum supergroups every message "replies" to its topic's first message.
    return getattr(message, "forum_topic_created", None) is not None


class InboundRelay(BridgeCore):
    """Telegram updates relayed into the hub."""

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
        await self._original_committed(update)
        try:
            self._relay_update(update)
        finally:
            # Marked handled even if relaying failed: an update that breaks
            # the bridge must not come back after every restart. Written
            # with the end of the batch, once the chat has committed it.
            self.state.set_offset(uid, force=True, write=False)

    async def _original_committed(self, update: Any) -> None:
        """If *update* replies to (or edits) a message relayed earlier in
        this batch, wait for that one's commit: relayed before, the chat
        holds it under the id it had then, which the commit tells."""
        msg = update.message or update.edited_message
        if msg is None:
            return
        original = msg if update.message is None else msg.reply_to_message
        relayed = self._relayed.get(relay_cid(msg.chat.id, original.message_id)) if original else None
        if relayed is None:
            return
        d: Deferred[None] = Deferred()
        relayed.waiters.append(d)
        d.addTimeout(self.config.http_timeout, self.reactor)
        try:
            # PTB's handler is an asyncio task: the Deferred is awaited as a Future.
            await d.asFuture(asyncio.get_running_loop())
        except Exception:
            pass  # not committed in time: _committed says so

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
        # The Telegram message's own id as the message's cid: relayed again
        # (a leader died before writing the offset, and Telegram offers the
        # update anew) it is a resend the chat recognises and stores once.
        cid = relay_cid(chat.id, msg.message_id)
        relayed = self._relayed[cid] = _Relayed(chat.id, msg.message_id)
        try:
            message = self.hub.broadcast(session, body, group.room, reply_to=reply_to, cid=cid)
        except BaseException:
            self._relayed.pop(cid, None)
            raise
        if cid in self._relayed:
            relayed.chat_id = message.id
            self._relayed_ids[message.id] = cid
        # At once, not at the commit: a reply later in this batch finds it.
        self.state.map_add(chat.id, msg.message_id, [Ref(message.id, session.name, excerpt(body), self.run)])

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

    # -- polling ----------------------------------------------------------------

    async def _poll(self) -> None:
        """Fetch updates with ``getUpdates`` and relay them, one batch at a time.

        Our own loop rather than PTB's Updater, because the Updater confirms
        a batch to Telegram (its next ``getUpdates`` carries the offset) as
        soon as it has fetched it, before the batch is handled: a node that
        dies then loses it. Here the next request, which confirms the batch,
        goes out only after every update of it is relayed, committed to the
        chat's storage, and the new offset is written to the bridge state.
        In a cluster the state's fencing is checked before a batch is relayed
        (a deposed leader relays nothing), and 409 Conflict (someone else
        polls this bot) ends this node's leadership.
        """
        from telegram.error import Conflict, InvalidToken, RetryAfter, TelegramError

        from .pump import _seconds

        cfg = self.config
        delay = cfg.backoff_initial
        failures = 0
        webhook_cleared = False
        while self.running:
            try:
                if not webhook_cleared:
                    # Polling is refused while a webhook is set.
                    await self._polling(self.bot.delete_webhook())
                    webhook_cleared = True
                    if not self.ready.called:
                        self.ready.callback(None)
                updates = await self._polling(
                    self.bot.get_updates(
                        offset=self._next_update,
                        timeout=int(cfg.poll_timeout),
                        # Deletions are not among them: the Bot API tells
                        # bots of none (docs/TELEGRAM.md).
                        allowed_updates=["message", "edited_message"],
                    )
                )
            except CancelledError:
                return
            except Conflict as e:
                if self.on_lost is not None:
                    log.warn(
                        "Telegram says another client polls this bot ({error})", error=self._redact(str(e))
                    )
                    self.on_lost("409 Conflict from Telegram", 0)
                    return
                failures += 1
                if failures == 1:
                    log.warn(
                        "another program polls this bot ({error}); only one may: retrying",
                        error=self._redact(str(e)),
                    )
                await self._sleep(delay)
                delay = min(cfg.backoff_max, delay * 2)
                continue
            except InvalidToken:
                log.critical("Telegram refused the bot token; the bridge stops receiving (the chat runs on)")
                return
            except RetryAfter as e:
                await self._sleep(_seconds(e))
                continue
            except TelegramError as e:
                failures += 1
                emit = log.warn if failures == 1 else log.debug
                emit("polling Telegram failed: {error}", error=self._redact(str(e)))
                await self._sleep(delay)
                delay = min(cfg.backoff_max, delay * 2)
                continue
            if failures:
                log.info("polling Telegram works again after {n} failed attempts", n=failures)
            failures = 0
            delay = cfg.backoff_initial
            if not updates or not self.running:
                continue
            self._relaying = True
            try:
                # Fenced: a deposed leader relays nothing.
                self.state.begin_batch([u.update_id for u in updates])
                await self.state.flush()
                for update in updates:
                    self._next_update = update.update_id + 1
                    await as_deferred(self.app.process_update(update))
                await self._committed()
                self.state.end_batch()
                await self.state.flush()
            except Fenced:
                return  # the state told the lease; this bridge is being stopped
            finally:
                self._relaying = False

    async def _polling(self, call: Any) -> Any:
        # Only a request in flight is cancelled at stop, never a batch being
        # relayed: that one is finished and its offset written.
        self._poll_call = as_deferred(call)
        try:
            return await self._poll_call
        finally:
            self._poll_call = None

    async def _committed(self) -> None:
        """Wait until the chat has committed every message this batch
        relayed (or recognised it as relayed before, by its cid)."""
        if not self._relayed:
            return
        d = self._all_committed = Deferred()
        d.addTimeout(self.config.http_timeout, self.reactor)
        try:
            await d
        except (TimeoutError, DeferredTimeout, CancelledError):
            log.warn("{n} messages relayed from Telegram were not committed in time", n=len(self._relayed))
        finally:
            self._all_committed = None
            self._relayed.clear()
            self._relayed_ids.clear()

    def _heard(self, message: ChatMessage) -> None:
        """The bridge's session heard room message *message* (committed)."""
        cid = self._relayed_ids.get(message.id)
        if cid is not None:
            self._relay_done(cid, message)

    def _own_echo(self, message: ChatMessage) -> None:
        """A Telegram user's session got its own room message back (the hub's
        ``receive_own``): committed, or, when the chat held its cid already,
        the message stored then (confirmed again, nothing stored)."""
        if message.cid is not None and message.cid in self._relayed:
            self._relay_done(message.cid, message)

    def _relay_done(self, cid: str, stored: ChatMessage) -> None:
        relayed = self._relayed.pop(cid)
        if relayed.chat_id is not None:
            self._relayed_ids.pop(relayed.chat_id, None)
        if relayed.chat_id != stored.id:
            # The chat had it already (an earlier leader relayed it): map the
            # Telegram message to that one; the last ref is what replies use.
            log.info(
                "Telegram message {msg} is in the chat already (message {id}); not relayed again",
                msg=relayed.tg_msg,
                id=stored.id,
            )
            if relayed.chat_id is not None:
                ref = Ref(stored.id, stored.sender, excerpt(stored.text), self.run)
                self.state.map_add(relayed.tg_chat, relayed.tg_msg, [ref])
        for waiter in relayed.waiters:
            if not waiter.called:
                waiter.callback(None)
        if not self._relayed and self._all_committed is not None and not self._all_committed.called:
            self._all_committed.callback(None)

    def _poll_died(self, failure: Any) -> None:
        if not failure.check(CancelledError):
            log.failure("receiving from Telegram stopped", failure)
