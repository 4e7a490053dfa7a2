"""The client's outbox: what the user wrote, until the server has confirmed it.

Delivery rules (PROTOCOL.md gives no acknowledgements, so we build them from
what it does promise):

* a room message is confirmed by its own ``broadcast`` echo, which the server
  sends to the sender too;
* private messages are confirmed by a ``ping`` sent after them: the server
  handles one connection's frames in order, so by the time its ``pong`` (or,
  on a server without ``ping``, its ``unknown_cmd`` error) arrives, every
  earlier ``message`` has been relayed or refused with an error;
* on a lost connection, unconfirmed messages go back to the queue. Room
  messages that may have reached the server are looked for in the history
  sent after the next login, so they are not posted twice; the rest is sent
  again once logged in. Nothing is dropped without the user seeing why.
* every message carries a client id (``cid``) that stays the same when it is
  sent again: a server that knows ``cid`` (PROTOCOL.md) stores it once and
  echoes the cid back, which confirms exactly that line; one that does not
  ignores the field. Messages of a conversation that is catching up after a
  reconnect (``history`` with ``after``) wait until it has: what the server
  already had is confirmed from the catch-up, not sent again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from twisted.internet.interfaces import IDelayedCall

from chatserv.client.errors import _str, readable_error
from chatserv.client.i18n import _
from chatserv.client.model import GENERAL_KEY, ChatModel, ConnState, ConvKey, Line, SendState
from chatserv.client.network import ChatLineProtocol, Frame

#: Wait before re-sending a message the server refused with rate_limited.
RATE_LIMIT_RETRY = 1.5


#: The server's default line limit; longer messages fail here, visibly, rather
#: than get the connection closed with ``line_too_long``.
MAX_MESSAGE_LINE = 65_536


#: Messages sent per flush: stays inside the server's default burst (20 lines)
#: so a long offline queue is not turned away by the rate limit.
FLUSH_BATCH = 8
FLUSH_PAUSE = 2.0


@dataclass(eq=False)
class Outgoing:
    key: ConvKey
    target: str  # room or peer name as written
    text: str
    line: Line
    ack: int | None = None
    #: the id of the message this one answers
    reply_to: int | None = None
    #: written before the connection was lost: may have reached the server
    maybe_delivered: bool = False
    #: the client's id for it, the same on every resend (``cid``)
    cid: str = ""


class Delivery:
    """The outbox half of :class:`~chatserv.client.session.ChatSession`:
    sending queued lines, paced, and matching the server's echoes, pongs and
    errors with them."""

    model: ChatModel
    conn: ChatLineProtocol | None
    outbox: list[Outgoing]
    #: conversations we may post to on the current connection
    ready: set[ConvKey]
    _ack_seq: int
    _acks: list[int]
    _timers: dict[str, IDelayedCall]

    def _later(self, name: str, delay: float, fn: Any) -> None:
        raise NotImplementedError  # in ChatSession

    def _frame_for(self, out: Outgoing) -> Frame:
        frame: Frame
        if out.key.kind == "private":
            frame = {"cmd": "message", "to": out.target, "msg": out.text}
        else:
            frame = {"cmd": "broadcast", "msg": out.text}
            if out.key != GENERAL_KEY:
                frame["room"] = out.target
        if out.reply_to is not None:
            frame["reply_to"] = out.reply_to
        if out.cid:
            frame["cid"] = out.cid
        return frame

    def _set_state(self, out: Outgoing, state: SendState, note: str = "") -> None:
        out.line.state = state
        out.line.note = note
        conv = self.model.get(out.key)
        if conv is not None:
            self.model.line_changed(conv, out.line)

    def _flush(self) -> None:
        if self.conn is None or self.model.state is not ConnState.ONLINE:
            return
        if "flush" in self._timers:
            return  # pacing: the timer will carry on
        sent: list[Outgoing] = []
        budget = FLUSH_BATCH
        for out in list(self.outbox):
            if out.line.state not in (SendState.QUEUED, SendState.HELD):
                continue
            if out.key.kind == "room" and out.key not in self.ready:
                continue
            conv = self.model.get(out.key)
            if conv is not None and conv.catching_up:
                continue  # the catch-up may show it arrived; then it is not resent
            if out.key.kind == "private" and not self.model.is_online(out.target):
                if out.line.state is not SendState.HELD:
                    self._set_state(
                        out,
                        SendState.HELD,
                        _("{user} is offline; it will be sent when they are back").format(
                            user=out.target
                        ),
                    )
                continue
            if budget == 0:
                self._later("flush", FLUSH_PAUSE, self._flush)
                break
            budget -= 1
            self.conn.send_frame(self._frame_for(out))
            out.maybe_delivered = False
            self._set_state(out, SendState.SENDING)
            if out.key.kind == "private":
                sent.append(out)
        if sent:
            self._ack_seq += 1
            for out in sent:
                out.ack = self._ack_seq
            self._acks.append(self._ack_seq)
            self.conn.send_frame({"cmd": "ping", "data": f"ack:{self._ack_seq}"})

    def _oldest_sending(self, kind: str | None) -> Outgoing | None:
        for out in self.outbox:
            if out.line.state is SendState.SENDING and kind in (None, out.key.kind):
                return out
        return None

    def _done(self, out: Outgoing) -> None:
        if out in self.outbox:
            self.outbox.remove(out)

    def _fail(self, out: Outgoing, note: str) -> None:
        self._done(out)
        self._set_state(out, SendState.FAILED, note)

    def _refused(self, out: Outgoing, code: str, msg: str) -> None:
        if code == "rate_limited":
            self._set_state(out, SendState.QUEUED, _("server busy, retrying"))
            self._later("flush", RATE_LIMIT_RETRY, self._flush)
        elif code == "no_such_user":
            self._set_state(
                out,
                SendState.HELD,
                _("{user} is offline; it will be sent when they are back").format(
                    user=out.target
                ),
            )
        else:
            self._fail(out, readable_error(code, msg, user=out.target))

    def _confirm_room(self, key: ConvKey, item: Frame, maybe_only: bool = False) -> bool:
        """Match a message of ours the server relayed (or replayed) with the
        line we showed when it was typed."""
        msg = item.get("msg")
        cid = item.get("cid")
        for out in self.outbox:
            if out.key != key:
                continue
            if isinstance(cid, str) and out.cid:
                if out.cid != cid:
                    continue
            elif out.text != msg:
                continue
            if maybe_only:
                if not (out.maybe_delivered and out.line.state is SendState.QUEUED):
                    continue
            elif out.line.state is not SendState.SENDING:
                continue
            self._mark_sent(out, item)
            return True
        return False

    def _confirm_cid(self, key: ConvKey, item: Frame) -> Outgoing | None:
        """The message of ours in *key* that *item* (an echo carrying our
        ``cid``) confirms: marked sent, with its id and time."""
        cid = item.get("cid")
        if not isinstance(cid, str):
            return None
        for out in self.outbox:
            if out.key == key and out.cid == cid:
                self._mark_sent(out, item)
                return out
        return None

    def _mark_sent(self, out: Outgoing, item: Frame) -> None:
        """*out* is confirmed by *item* (its echo or its stored copy): sent,
        with the server's id and time."""
        self._done(out)
        out.line.time = _str(item, "time") or out.line.time
        if isinstance(item.get("id"), int):
            out.line.msg_id = item["id"]
        self._set_state(out, SendState.SENT)

    def _confirm_private(self, key: ConvKey, item: Frame) -> bool:
        """A private message of ours that the catch-up after a reconnect
        shows stored: confirmed, not sent again."""
        if self._confirm_cid(key, item) is not None:
            return True
        for out in self.outbox:
            if out.key == key and out.maybe_delivered and out.text == item.get("msg"):
                if out.line.state is SendState.QUEUED:
                    self._done(out)
                    if isinstance(item.get("id"), int):
                        out.line.msg_id = item["id"]
                    self._set_state(out, SendState.SENT)
                    return True
        return False

    def _acked(self, seq: int) -> None:
        self._acks = [a for a in self._acks if a > seq]
        for out in list(self.outbox):
            if out.ack is not None and out.ack <= seq and out.line.state is SendState.SENDING:
                self._done(out)
                self._set_state(out, SendState.SENT)

    def _requeue_unconfirmed(self) -> None:
        self._acks.clear()
        for out in self.outbox:
            if out.line.state is SendState.SENDING:
                out.maybe_delivered = True
                out.ack = None
                self._set_state(out, SendState.QUEUED, _("not sent yet"))
            elif out.line.state is SendState.QUEUED and not out.line.note:
                self._set_state(out, SendState.QUEUED, _("not sent yet"))
