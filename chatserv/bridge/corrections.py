"""Edits and deletions, both ways: chat corrections applied to the Telegram
messages that carry them, Telegram edits turned into hub corrections."""

from __future__ import annotations

from typing import Any

from .. import conversation
from ..errors import ChatError
from ..events import ChatMessage, Correction
from ..hub import Session
from ..logs import Logger
from ..names import name_key
from ..wire import error_text
from .core import _DROPPED, _RETRY, BridgeCore, _Group
from .format import edit_text, excerpt, render_line, utf16_len
from .state import Ref

log = Logger()


class Corrections(BridgeCore):
    """Edits and deletions between the chat and Telegram."""

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

    def _usable_id(self, ref: Ref) -> int | None:
        if ref.run == self.run or self.stable_ids:
            return ref.chat_id
        return None

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
