"""The client's brain: turns server frames into model changes and user actions
into frames, logs in (again, after every reconnect), and keeps what the user
wrote until the server has confirmed it.

What the user wrote waits in the outbox until the server has confirmed it
(see :mod:`chatserv.client.outbox` for how).

Several servers (the nodes of a cluster, docs/CLUSTER.md): each connection
attempt goes to the next one (:class:`~chatserv.client.network.RoundRobinEndpoint`).
After a reconnect, to whichever node, the session logs in again (retrying
``name_taken`` while the cluster has not yet noticed the old session is
gone) and catches up: every open conversation whose messages carried
positions (``pos``) asks ``history`` with ``after`` = the highest position
it has shown, page after page, before it shows live messages again; so a
node's death shows as a short "reconnecting" and no gap.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from chatserv.client.errors import _str, readable_error, with_detail
from chatserv.client.i18n import _, join_names, ngettext
from chatserv.client.members import MemberLists
from chatserv.client.model import (
    GENERAL,
    GENERAL_KEY,
    ChatModel,
    ConnState,
    Conversation,
    ConvKey,
    Line,
    LineKind,
    SendState,
    fold,
)
from chatserv.client.network import (
    ChatLineProtocol,
    ConnectionKeeper,
    Frame,
    RetryPolicy,
    ServerAddress,
    clean_text,
    describe,
    encode_frame,
)
from chatserv.client.outbox import MAX_MESSAGE_LINE, RATE_LIMIT_RETRY, Delivery, Outgoing

#: Send ``typing`` at most this often per conversation (seconds).
TYPING_EVERY = 3.0
#: After a reconnect our old session may not be gone yet on the server side
#: (in a cluster, a dead node's names are freed within 15 s); ``name_taken``
#: then is retried this many times, this far apart.
NAME_RETRIES = 10
NAME_RETRY_DELAY = 2.0
#: Messages per catch-up page (the server serves at most 200).
CATCH_UP_PAGE = 200
#: Seconds before asking again when the server is too busy checking passwords.
BUSY_RETRY = 5.0


@dataclass
class Credentials:
    user: str
    password: str = ""
    register: bool = False


def _message_line(kind: LineKind, frame: Frame, sender: str, msg: str, own: bool = False) -> Line:
    """A chat line from a message object (a live frame or a history item)."""
    msg_id = frame.get("id")
    reply_to = frame.get("reply_to")
    return Line(
        kind,
        msg,
        sender=sender,
        time=_str(frame, "time") or "",
        own=own,
        msg_id=msg_id if isinstance(msg_id, int) else None,
        reply_to=reply_to if isinstance(reply_to, dict) else None,
        edited=bool(frame.get("edited")),
        deleted=bool(frame.get("deleted")),
    )


#: Characters of the original a reply quotes, as the server cuts them.
QUOTE_LENGTH = 40


def quote_of(line: Line) -> dict[str, object]:
    """The ``reply_to`` object a reply to *line* will carry (shown at once,
    before the server's echo brings its own)."""
    text = line.text.strip()
    first = text.split("\n", 1)[0].strip()
    if len(first) > QUOTE_LENGTH or "\n" in text:
        first = first[:QUOTE_LENGTH].rstrip() + "…"
    return {"id": line.msg_id, "from": line.sender or "?", "msg": first}


def _str_list(value: Any) -> list[str]:
    if not isinstance(value, list):
        return []
    return [v for v in value if isinstance(v, str)]


def _identity(item: Frame) -> tuple[object, ...]:
    # The id alone where there is one: an edited message is still the same
    # message when history replays it with its new text.
    msg_id = item.get("id")
    if isinstance(msg_id, int):
        return ("id", msg_id)
    return (item.get("id"), item.get("time"), item.get("from"), item.get("msg"))


class ChatSession(Delivery):
    log = Logger()

    def __init__(
        self, model: ChatModel, reactor: Any, policy: RetryPolicy | None = None
    ) -> None:
        self.model = model
        self.reactor = reactor
        self.keeper = ConnectionKeeper(reactor, self, self._waiting, policy)
        self.conn: ChatLineProtocol | None = None
        self.members = MemberLists(model, self._send_if_connected)
        self.address: ServerAddress | None = None
        #: every server to try, in turn (``address`` is the first)
        self.addresses: list[ServerAddress] = []
        #: conversations whose catch-up ``history`` request is unanswered, in order
        self.catching: list[ConvKey] = []
        self._cid_prefix = os.urandom(16).hex()  # 128 random bits: never repeats (PROTOCOL.md)
        self._cid_seq = 0
        self.creds: Credentials | None = None
        self.outbox: list[Outgoing] = []
        #: conversations we may post to on the current connection
        self.ready: set[ConvKey] = set()
        #: rooms asked for with ``join`` and not answered yet, oldest first
        self.joining: list[ConvKey] = []
        self._typing_sent: dict[ConvKey, float] = {}
        self._ack_seq = 0
        self._acks: list[int] = []
        self._registered = False
        self._name_retries = 0
        self._timers: dict[str, IDelayedCall] = {}

    # -- timers -------------------------------------------------------------
    def _later(self, name: str, delay: float, fn: Any) -> None:
        self._cancel(name)

        def fire() -> None:
            self._timers.pop(name, None)
            fn()

        self._timers[name] = self.reactor.callLater(delay, fire)

    def _cancel(self, name: str) -> None:
        call = self._timers.pop(name, None)
        if call is not None and call.active():
            call.cancel()

    # -- user actions ----------------------------------------------------
    def connect(self, address: ServerAddress | Sequence[ServerAddress], creds: Credentials) -> None:
        """Start (or restart) connecting, to *address* or to each of several
        servers in turn; conversations are kept when it is the same user on
        the same servers."""
        if self.keeper.running:
            raise RuntimeError("already connected; disconnect first")
        addresses = [address] if isinstance(address, ServerAddress) else list(address)
        same = (
            self.addresses
            and self.creds is not None
            and describe(self.addresses) == describe(addresses)
            and fold(self.creds.user) == fold(creds.user)
        )
        if not same:
            self.model.reset()
            self.outbox.clear()
        self.address, self.addresses, self.creds = addresses[0], addresses, creds
        self._registered = False
        self._name_retries = 0
        self.model.me = creds.user
        self.model.server = str(addresses[0])
        self.model.set_state(ConnState.CONNECTING)
        self.keeper.start(addresses)

    def disconnect(self) -> Deferred[None]:
        for name in list(self._timers):
            self._cancel(name)
        self.conn = None
        self._requeue_unconfirmed()
        stopping = self.keeper.stop()
        self.model.set_state(ConnState.DISCONNECTED)
        return stopping

    def send(self, key: ConvKey, text: str, reply_to: Line | None = None) -> Line | None:
        """Post ``text`` to a conversation (as a reply to *reply_to*, a line
        of it): shown at once, sent now or as soon as we are logged in.
        Returns the line, or None if there was nothing to send."""
        text = clean_text(text).rstrip()
        conv = self.model.get(key)
        if not text.strip() or conv is None:
            return None
        line = Line(
            LineKind.MESSAGE, text, sender=self.model.me, own=True, state=SendState.QUEUED
        )
        self._cid_seq += 1
        out = Outgoing(key, conv.title, text, line, cid=f"{self._cid_prefix}-{self._cid_seq}")
        if reply_to is not None and reply_to.can_reply:
            out.reply_to = reply_to.msg_id
            line.reply_to = quote_of(reply_to)
        if len(encode_frame(self._frame_for(out))) >= MAX_MESSAGE_LINE:
            line.state = SendState.FAILED
            line.note = _("too long to send")
        else:
            self.outbox.append(out)
        self.model.add_line(conv, line)
        # The peer's indicator is cleared by the message; if we keep typing
        # they should see it again right away.
        self._typing_sent.pop(key, None)
        self._flush()
        return line

    def edit(self, line: Line, text: str) -> bool:
        """Ask the server to change our message *line* to *text*; the view
        changes when the server's ``edited`` comes back. False if it cannot
        be sent now."""
        text = clean_text(text).rstrip()
        if not text.strip() or text == line.text:
            return False
        return self._correct({"cmd": "edit", "id": line.msg_id, "msg": text}, line)

    def delete(self, line: Line) -> bool:
        """Ask the server to delete our message *line*."""
        return self._correct({"cmd": "delete", "id": line.msg_id}, line)

    def _correct(self, frame: Frame, line: Line) -> bool:
        if not line.can_correct:
            return False
        if self.conn is None or self.model.state is not ConnState.ONLINE:
            self.model.notice(
                self.model.active, _("Not connected: the message was not changed."), LineKind.ERROR
            )
            return False
        self.conn.send_frame(frame)
        return True

    def user_typing(self, key: ConvKey) -> None:
        if self.conn is None or self.model.state is not ConnState.ONLINE:
            return
        conv = self.model.get(key)
        if conv is None:
            return
        now = self.reactor.seconds()
        if now - self._typing_sent.get(key, float("-inf")) < TYPING_EVERY:
            return
        frame: Frame = {"cmd": "typing"}
        if key.kind == "private":
            if not self.model.is_online(conv.title):
                return
            frame["to"] = conv.title
        elif key != GENERAL_KEY:
            if key not in self.ready:
                return
            frame["room"] = conv.title
        self._typing_sent[key] = now
        self.conn.send_frame(frame)

    def open_private(self, name: str) -> ConvKey:
        key = ConvKey.private(name)
        self.model.conversation(key, name)
        self.model.set_active(key)
        return key

    def join(self, room: str) -> ConvKey | None:
        room = room.strip()
        if not room:
            return None
        key = ConvKey.room(room)
        if key not in self.model.conversations:
            self.model.conversation(key, room)
            if self.conn is not None and self.model.state is ConnState.ONLINE:
                self._send_join(key)
        self.model.set_active(key)
        return key

    def close(self, key: ConvKey) -> None:
        """Close a private tab, or leave a room. ``general`` stays."""
        if key == GENERAL_KEY or key not in self.model.conversations:
            return
        if key.kind == "room" and self.conn is not None and key in self.ready:
            self.conn.send_frame({"cmd": "leave", "room": self.model.conversations[key].title})
        self.ready.discard(key)
        # The user closed it: what it still held is discarded knowingly.
        self.outbox = [o for o in self.outbox if o.key != key]
        self.model.remove(key)

    def request_rooms(self) -> None:
        if self.conn is not None and self.model.state is ConnState.ONLINE:
            self.conn.send_frame({"cmd": "rooms"})

    # -- connection events (FrameHandler) -------------------------------------
    def connection_made(self, conn: ChatLineProtocol) -> None:
        self.conn = conn
        self.members.reset()
        self.ready.clear()
        self.joining.clear()
        self._acks.clear()
        self._typing_sent.clear()
        self.catching.clear()
        if self.keeper.current is not None:
            self.model.server = str(self.keeper.current)
        for conv in self.model.conversations.values():
            # What arrives live waits until what was missed has been asked for.
            conv.catching_up = conv.last_pos is not None
            conv.held.clear()
        self.model.set_state(ConnState.LOGGING_IN)
        self._send_login()

    def connection_lost(self, conn: ChatLineProtocol, reason: Failure) -> None:
        if conn is not self.conn:
            return
        self.conn = None
        was_online = self.model.state is ConnState.ONLINE
        self._cancel("flush")
        self._cancel("relogin")
        self._requeue_unconfirmed()
        self.ready.clear()
        if was_online:
            self.model.notice(GENERAL_KEY, _("Connection to the server lost."))
        self.model.set_state(ConnState.CONNECTING)

    def _waiting(self, delay: float) -> None:
        if not self.keeper.running:
            return
        self.model.set_state(ConnState.WAITING, retry_at=self.reactor.seconds() + delay)
        self._later("attempt", delay, self._attempting)

    def _attempting(self) -> None:
        if self.model.state is ConnState.WAITING:
            self.model.set_state(ConnState.CONNECTING)

    def frame_received(self, conn: ChatLineProtocol, frame: Frame) -> None:
        if conn is not self.conn:
            return
        handler = getattr(self, "_on_" + frame["cmd"], None)
        if handler is None:
            return  # PROTOCOL.md: ignore frames we do not know
        try:
            handler(frame)
        except Exception:
            # A frame we misread must not take the connection down.
            self.log.failure("Could not handle a {cmd} frame", cmd=frame["cmd"])

    # -- login ----------------------------------------------------------------
    def _send_login(self) -> None:
        assert self.creds is not None
        if self.conn is None:
            return
        if self.creds.register and not self._registered:
            self.conn.send_frame(
                {"cmd": "register", "user": self.creds.user, "password": self.creds.password}
            )
            return
        # "sent": the server tells us the id of each private message we
        # send, so that we can edit or delete it later.
        # "lazy_members": a large room's member list comes as a count and
        # pages (client.members), not as the whole list on every change.
        frame: Frame = {"cmd": "login", "user": self.creds.user, "features": ["sent", "lazy_members"]}
        if self.creds.password:
            frame["password"] = self.creds.password
        self.conn.send_frame(frame)

    def _on_registered(self, frame: Frame) -> None:
        self._registered = True
        self._send_login()

    def _logged_in(self) -> None:
        assert self.creds is not None
        if self.model.ever_online:
            self.model.notice(GENERAL_KEY, _("Reconnected."))
        # An account, once made, is logged into on every later reconnect.
        self.creds.register = False
        self._name_retries = 0
        self.model.set_state(ConnState.ONLINE)
        self.ready.add(GENERAL_KEY)
        for conv in list(self.model.conversations.values()):
            if conv.is_room and not conv.is_general:
                self._send_join(conv.key)  # catches up once joined
            elif conv.catching_up:
                self._ask_after(conv)
        if self.conn is not None and self.model.rooms_supported is not False:
            self.conn.send_frame({"cmd": "rooms"})
        self._flush()

    def _login_failed(self, message: str) -> None:
        self.conn = None
        for name in list(self._timers):
            self._cancel(name)
        self.keeper.stop()
        self.model.set_state(ConnState.DISCONNECTED)
        self.model.login_failed(message)

    def _login_error(self, code: str, msg: str, ref: str | None) -> None:
        assert self.creds is not None
        user = self.creds.user
        if code == "server_busy":
            self._later("relogin", BUSY_RETRY, self._send_login)
            return
        if ref == "register":
            if code == "unknown_cmd":
                self._login_failed(
                    _("This server has no accounts: connect without creating one.")
                )
            elif code == "name_taken":
                self._login_failed(_("An account named {user} already exists.").format(user=user))
            elif code == "bad_request":
                self._login_failed(
                    _("Could not create the account: {reason}").format(reason=msg)
                )
            else:
                self._login_failed(with_detail(readable_error(code, msg), msg))
            return
        if code == "name_taken" and self.model.ever_online and self._name_retries < NAME_RETRIES:
            # Probably our own previous session, not yet noticed as gone.
            self._name_retries += 1
            self._later("relogin", NAME_RETRY_DELAY, self._send_login)
            return
        if code == "rate_limited":
            self._later("relogin", RATE_LIMIT_RETRY, self._send_login)
            return
        if code == "name_taken":
            self._login_failed(
                _("The name {user} is already in use. Choose another one.").format(user=user)
            )
        else:
            self._login_failed(with_detail(readable_error(code, msg), msg))

    # -- frames -----------------------------------------------------------------
    def _room_key(self, frame: Frame) -> ConvKey:
        room = _str(frame, "room")
        return ConvKey.room(room) if room else GENERAL_KEY

    def _room_conv(self, frame: Frame) -> Conversation:
        room = _str(frame, "room") or GENERAL
        key = ConvKey.room(room)
        return self.model.conversation(key, "General" if key == GENERAL_KEY else room)

    def _is_me(self, name: str | None) -> bool:
        return name is not None and fold(name) == fold(self.model.me)

    # -- catching up after a reconnect -------------------------------------------
    def _ask_after(self, conv: Conversation) -> None:
        """Ask for *conv*'s messages after the last one shown."""
        if self.conn is None or conv.last_pos is None:
            self._caught_up(conv)
            return
        frame: Frame = {"cmd": "history", "after": conv.last_pos, "limit": CATCH_UP_PAGE}
        if conv.is_room:
            frame["room"] = GENERAL if conv.is_general else conv.title
        else:
            frame["with"] = conv.title
        self.catching.append(conv.key)
        self.conn.send_frame(frame)

    def _catch_up_page(self, conv: Conversation, items: list[Frame], more: bool) -> None:
        before = conv.last_pos
        for item in items:
            sender, msg = _str(item, "from"), _str(item, "msg")
            if sender is None or msg is None:
                continue
            conv.saw_pos(item)
            ident = _identity(item)
            if ident in conv.seen:
                self._catch_up_correction(conv, item, msg)
                continue
            conv.seen.add(ident)
            own = self._is_me(sender)
            if own:
                confirmed = (
                    self._confirm_room(conv.key, item, maybe_only=True)
                    if conv.is_room
                    else self._confirm_private(conv.key, item)
                )
                if confirmed:
                    continue
            self.model.add_line(conv, _message_line(LineKind.MESSAGE, item, sender, msg, own))
        if more and items and conv.last_pos != before:
            self._ask_after(conv)
        else:
            self._caught_up(conv)

    def _caught_up(self, conv: Conversation) -> None:
        """*conv* shows everything up to now: what arrived meanwhile follows,
        and its waiting messages go out."""
        conv.catching_up = False
        held, conv.held = conv.held, []
        for frame in held:
            try:
                getattr(self, "_on_" + str(frame["cmd"]))(frame)
            except Exception:
                self.log.failure("Could not handle a held {cmd} frame", cmd=frame["cmd"])
        self._flush()

    def _on_history(self, frame: Frame) -> None:
        if "with" in frame:
            peer = _str(frame, "with")
            conv_or_none = self.model.get(ConvKey.private(peer)) if peer else None
            if conv_or_none is None:
                return
            conv = conv_or_none
        else:
            conv = self._room_conv(frame)
        items = [i for i in frame.get("items") or [] if isinstance(i, dict)]
        if "more" in frame and self.catching and self.catching[0] == conv.key and conv.catching_up:
            self.catching.pop(0)
            self._catch_up_page(conv, items, frame.get("more") is True)
            return
        if not conv.is_room:
            return  # private pages are only asked for to catch up
        fresh = []
        for item in items:
            sender, msg = _str(item, "from"), _str(item, "msg")
            if sender is None or msg is None:
                continue
            pos, last = item.get("pos"), conv.last_pos
            if conv.catching_up and isinstance(pos, int) and last is not None and pos > last:
                continue  # the catch-up brings it, in order with what came before it
            conv.saw_pos(item)
            ident = _identity(item)
            if ident in conv.seen:
                self._catch_up_correction(conv, item, msg)
                continue
            conv.seen.add(ident)
            if self._is_me(sender) and self._confirm_room(conv.key, item, maybe_only=True):
                continue
            fresh.append((item, sender, msg))
        if fresh and not conv.had_history:
            self.model.add_line(conv, Line(LineKind.INFO, _("Earlier messages")))
        conv.had_history = True
        for item, sender, msg in fresh:
            self.model.add_line(conv, _message_line(LineKind.HISTORY, item, sender, msg, self._is_me(sender)))

    def _catch_up_correction(self, conv: Conversation, item: Frame, msg: str) -> None:
        """A replayed message we show already, corrected while we were away."""
        msg_id = item.get("id")
        line = conv.line_by_id(msg_id) if isinstance(msg_id, int) else None
        if line is None or line.deleted:
            return
        if item.get("deleted"):
            self.model.correct_line(conv, line, None)
        elif item.get("edited") and msg != line.text:
            self.model.correct_line(conv, line, msg)

    def _on_users(self, frame: Frame) -> None:
        key = self._room_key(frame)
        if key not in self.model.conversations:
            return  # a room we already left
        self.members.users(key, frame)
        if key == GENERAL_KEY and self.model.state is ConnState.LOGGING_IN:
            self._logged_in()
            return
        if key in self.joining:
            self.joining.remove(key)
            self.ready.add(key)
            conv = self.model.get(key)
            if conv is not None and conv.catching_up:
                self._ask_after(conv)
        self._flush()

    def _send_if_connected(self, frame: Frame) -> None:
        if self.conn is not None:
            self.conn.send_frame(frame)

    def _on_members(self, frame: Frame) -> None:
        self.members.page(self._room_key(frame), frame)

    def _on_presence(self, frame: Frame) -> None:
        # Only in large rooms: the client does not ask for `presence`.
        self.members.presence(self._room_key(frame), frame)

    def more_members(self, key: ConvKey) -> None:
        """The member list of *key* is scrolled to its end: load the next page."""
        self.members.want_more(key)

    def _on_broadcast(self, frame: Frame) -> None:
        sender, msg = _str(frame, "from"), _str(frame, "msg")
        if sender is None or msg is None:
            return
        conv = self._room_conv(frame)
        if conv.catching_up:
            conv.held.append(frame)
            return
        conv.saw_pos(frame)
        ident = _identity(frame)
        self.model.clear_typing(conv.key, sender)
        if self._is_me(sender) and self._confirm_room(conv.key, frame):
            conv.seen.add(ident)
            return
        if ident in conv.seen and ident[0] == "id":
            return  # shown already (a catch-up, or a resend the server recognised)
        conv.seen.add(ident)
        self.model.add_line(conv, _message_line(LineKind.MESSAGE, frame, sender, msg, self._is_me(sender)))

    def _on_private(self, frame: Frame) -> None:
        sender, msg = _str(frame, "from"), _str(frame, "msg")
        if sender is None or msg is None:
            return
        key = ConvKey.private(sender)
        conv = self.model.conversation(key, sender)
        if conv.catching_up:
            conv.held.append(frame)
            return
        conv.saw_pos(frame)
        ident = _identity(frame)
        if ident in conv.seen and ident[0] == "id":
            return
        conv.seen.add(ident)
        self.model.clear_typing(key, sender)
        self.model.add_line(conv, _message_line(LineKind.MESSAGE, frame, sender, msg))

    def _on_sent(self, frame: Frame) -> None:
        """Our private message was relayed: learn its id (confirmation itself
        stays with the ping barrier, which servers without ``sent`` share)."""
        to, msg, msg_id = _str(frame, "to"), _str(frame, "msg"), frame.get("id")
        conv = self.model.get(ConvKey.private(to)) if to else None
        if conv is None or not isinstance(msg_id, int):
            return
        if conv.catching_up:
            conv.held.append(frame)
            return
        conv.saw_pos(frame)
        conv.seen.add(_identity(frame))
        if self._confirm_cid(conv.key, frame) is not None:
            return
        for line in conv.lines:
            if line.own and line.msg_id is None and line.text == msg and line.kind is LineKind.MESSAGE:
                line.msg_id = msg_id
                line.time = _str(frame, "time") or line.time
                self.model.line_changed(conv, line)
                return

    def _correction_conv(self, frame: Frame) -> Conversation | None:
        if "room" in frame:
            return self.model.get(self._room_key(frame))
        sender, to = _str(frame, "from"), _str(frame, "to")
        peer = to if self._is_me(sender) else sender
        return self.model.get(ConvKey.private(peer)) if peer else None

    def _on_edited(self, frame: Frame) -> None:
        msg, msg_id = _str(frame, "msg"), frame.get("id")
        conv = self._correction_conv(frame)
        line = conv.line_by_id(msg_id) if conv is not None and isinstance(msg_id, int) else None
        if conv is not None and line is not None and msg is not None:
            self.model.correct_line(conv, line, msg)

    def _on_deleted(self, frame: Frame) -> None:
        msg_id = frame.get("id")
        conv = self._correction_conv(frame)
        line = conv.line_by_id(msg_id) if conv is not None and isinstance(msg_id, int) else None
        if conv is not None and line is not None:
            self.model.correct_line(conv, line, None)

    def _on_system(self, frame: Frame) -> None:
        conv = self._room_conv(frame)
        event = _str(frame, "event")
        users = _str_list(frame.get("users"))
        if event in ("join", "leave") and users:
            # Our own language instead of the server's Spanish sentence.
            if event == "join":
                text = ngettext("{names} joined the chat", "{names} joined the chat", len(users))
            else:
                text = ngettext("{names} left the chat", "{names} left the chat", len(users))
            text = text.format(names=join_names(users))
        else:
            text = _str(frame, "msg") or ""
        if not text:
            return
        self.model.add_line(conv, Line(LineKind.SYSTEM, text, time=_str(frame, "time") or ""))
        if conv.is_general and event in ("join", "leave"):
            # A private tab says when its peer comes and goes.
            for user in users:
                private = self.model.get(ConvKey.private(user))
                if private is not None:
                    self.model.clear_typing(private.key, user)
                    self.model.add_line(private, Line(LineKind.SYSTEM, text))

    def _on_typing(self, frame: Frame) -> None:
        user = _str(frame, "user")
        if user is None or self._is_me(user):
            return
        if frame.get("private") is True:
            key = ConvKey.private(user)
        else:
            key = self._room_key(frame)
        self.model.set_typing(key, user)

    def _on_rooms(self, frame: Frame) -> None:
        rooms: list[tuple[str, int]] = []
        for item in frame.get("list") or []:
            if isinstance(item, dict) and isinstance(item.get("name"), str):
                members = item.get("members")
                rooms.append((item["name"], members if isinstance(members, int) else 0))
        self.model.set_rooms(rooms)

    def _on_ping(self, frame: Frame) -> None:
        # The server pings a connection that has been quiet for a while and
        # closes it if nothing comes back (docs/PROTOCOL.md, "Bounds").
        if self.conn is not None:
            self.conn.send_frame({"cmd": "pong"})

    def _on_pong(self, frame: Frame) -> None:
        data = frame.get("data")
        if isinstance(data, str) and data.startswith("ack:"):
            try:
                self._acked(int(data[4:]))
            except ValueError:
                pass

    def _on_error(self, frame: Frame) -> None:
        code = _str(frame, "code") or ""
        msg = _str(frame, "msg") or ""
        ref = _str(frame, "ref")
        if self.model.state is ConnState.LOGGING_IN and (
            ref in ("login", "register")
            or (ref is None and code in ("name_taken", "bad_name", "auth_failed"))
        ):
            self._login_error(code, msg, ref)
            return
        if ref == "ping":
            # A server without ``ping`` still answers in order: same barrier.
            if self._acks:
                self._acked(self._acks[0])
            return
        if ref == "typing":
            return  # the peer left or the room is gone: nothing to tell
        if ref == "history" and self.catching:
            # A catch-up the server refused: show what comes from now on.
            conv = self.model.get(self.catching.pop(0))
            if conv is not None:
                self._caught_up(conv)
            return
        if ref == "rooms":
            if code == "unknown_cmd":
                self.model.set_rooms_unsupported()
            return
        if ref == "join":
            self._join_refused(code, msg)
            return
        if ref == "leave":
            return
        if code == "line_too_long":
            out = self._oldest_sending(None)
            if out is not None:
                self._fail(out, _("too long for the server"))
            return
        if ref in ("broadcast", "message"):
            out = self._oldest_sending("room" if ref == "broadcast" else "private")
            if out is not None:
                self._refused(out, code, msg)
                return
        self.model.notice(
            self.model.active,
            _("Server error: {text}").format(text=readable_error(code, msg)),
            LineKind.ERROR,
        )

    # -- rooms ------------------------------------------------------------------
    def _send_join(self, key: ConvKey) -> None:
        conv = self.model.get(key)
        if conv is None or self.conn is None:
            return
        self.joining.append(key)
        self.conn.send_frame({"cmd": "join", "room": conv.title})

    def _join_refused(self, code: str, msg: str) -> None:
        if not self.joining:
            return
        key = self.joining.pop(0)
        conv = self.model.get(key)
        name = conv.title if conv else key.name
        if code == "unknown_cmd":
            self.model.set_rooms_unsupported()
            text = _("This server has no rooms.")
        else:
            text = _("Could not join {room}: {reason}").format(
                room=name, reason=readable_error(code, msg)
            )
        self.model.remove(key)
        self.model.notice(GENERAL_KEY, text, LineKind.ERROR)
