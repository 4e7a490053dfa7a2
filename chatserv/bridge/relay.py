"""Telegram -> chat: updates from Telegram become hub messages (and
answers to ``/users`` and to private chats with the bot)."""

from __future__ import annotations

from typing import Any

from ..logs import Logger
from .core import BridgeCore, _Group
from .format import display_name, excerpt, message_body
from .state import Ref

log = Logger()


PRIVATE_ANSWER = (
    "Soy el puente entre un grupo de Telegram y una sala de chat; solo reenvío los mensajes de ese grupo."
)


#: A private chat gets the answer above at most once in this many seconds.
PRIVATE_ANSWER_EVERY = 3600.0


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
