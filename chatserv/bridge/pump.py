"""Chat -> Telegram: the per-group queues, the single send pump and its
pacing, flood-control waits and back-off."""

from __future__ import annotations

import warnings
from datetime import timedelta
from typing import Any

from twisted.internet.defer import CancelledError, Deferred

from ..events import ChatMessage, PresenceChange
from ..logs import Logger
from ..names import name_key
from ..wire import join_text, leave_text
from .aio import as_deferred
from .core import _DROPPED, _RETRY, BridgeCore, _Group
from .format import excerpt, reply_text
from .outbox import Batch, Entry, dropped_notice
from .state import Fenced, Ref

log = Logger()


def _seconds(error: Any) -> float:
    with warnings.catch_warnings():
        # PTB 22 warns that retry_after will become a timedelta; accept both.
        warnings.simplefilter("ignore")
        value = error.retry_after
    if isinstance(value, timedelta):
        return value.total_seconds()
    return float(value)


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


class SendPump(BridgeCore):
    """Chat lines queued per group and sent to Telegram in order, paced."""

    def _chat_message(self, message: ChatMessage) -> None:
        if message.room is not None:
            self._heard(message)
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
        self._enqueue(group, message.id, message.sender, text, reply_tg, pos=message.pos)

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

    def _enqueue(
        self,
        group: _Group,
        chat_id: int | None,
        sender: str | None,
        text: str,
        reply_tg: int | None = None,
        pos: int = 0,
    ) -> None:
        """Queue a line for *group*; *pos*: the chat message's stream
        position, which moves the group's mark (see BridgeState.marks)."""
        if group.outbox is None:
            if len(group.early) == group.early.maxlen:
                group.early_dropped += 1
                if group.early_dropped == 1:
                    log.warn(
                        "chat lines for Telegram arrive faster than the bridge starts; dropping the oldest"
                    )
            group.early.append((chat_id, sender, text, reply_tg, pos))
            return
        added, dropped = group.outbox.add(chat_id, sender, text, reply_tg)
        self.state.queue_add(added, group.chat_id)
        if pos:
            # Written with the queued line, in one transaction.
            self.state.set_mark(group.chat_id, pos)
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
            try:
                # Clustered: a deposed leader sends nothing more.
                await self.state.check_term()
            except Fenced:
                return
            if not self.running:
                return  # stopped during the check: the next leader sends it
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
