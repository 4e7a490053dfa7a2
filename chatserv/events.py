"""The events the hub hands its participants, and that storage keeps.

Every event is a plain object made once and handed to every recipient;
``wire`` is a cache that transports fill with their encodings, so an event
that goes to ten thousand connections is encoded once. This module depends
on nothing else in chatserv: storage, wire, the bridge and the hub all
import it, and none of them needs the hub for it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .hub import Session


@dataclass(slots=True, eq=False)
class ChatMessage:
    """A message posted to a room (``room`` set) or to one user (``recipient`` set)."""

    id: int
    ts: float
    sender: str
    text: str
    room: str | None = None
    recipient: str | None = None
    #: The message this one answers: ``{"id", "from", "msg"}`` (``id`` absent when
    #: unknown); set by the Telegram bridge, see docs/PROTOCOL.md.
    reply_to: dict[str, Any] | None = None
    #: The id of the message this one corrects (a Telegram edit), when known.
    edit_of: int | None = None
    #: When the text was last corrected by its author (``text`` is the
    #: corrected one; storage keeps the original), or None.
    edited: float | None = None
    #: When its author deleted it (``text`` is then empty), or None.
    deleted: float | None = None
    #: Its place in the database's one stream of committed events (messages
    #: and corrections, every room and conversation), in commit order; 0
    #: until the message log commits it, and set before anyone is handed it.
    pos: int = 0
    #: The sender's own id for it (the ``cid`` of ``broadcast``/``message``),
    #: by which a resend is recognised; None when the sender gave none.
    cid: str | None = None
    #: Whose ``cid`` it is (see :func:`sender_key`); set only with ``cid``.
    sender_key: str | None = None
    #: Encoded forms, filled lazily by transports, keyed by their format name.
    wire: dict[str, Any] = field(default_factory=dict, repr=False)
    #: A private message's two ends, the sessions that held the names when it
    #: was accepted; it is delivered to them only, never to a later session
    #: under the same name. Cleared once delivered.
    to_session: Session | None = field(default=None, repr=False)
    from_session: Session | None = field(default=None, repr=False)

    @property
    def is_private(self) -> bool:
        return self.room is None


@dataclass(slots=True, eq=False)
class PresenceChange:
    """Who joined and left *room* during one presence window, and who is in it now."""

    room: str
    joined: tuple[str, ...]
    left: tuple[str, ...]
    members: tuple[str, ...]
    wire: dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass(slots=True, eq=False)
class Typing:
    """*user* is typing in *room*, or privately to the recipient when ``room`` is None."""

    user: str
    room: str | None
    wire: dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass(slots=True, eq=False)
class Correction:
    """The author of message ``id`` edited it (``text`` set) or deleted it
    (``text`` None) at ``ts``; ``room``/``recipient`` say where it was posted."""

    id: int
    ts: float
    sender: str
    text: str | None
    room: str | None = None
    recipient: str | None = None
    #: Its own place in the stream (see ChatMessage.pos), set before it is delivered.
    pos: int = 0
    wire: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def deleted(self) -> bool:
        return self.text is None


def sender_key(key: str, account: bool) -> str:
    """Whose client message ids (``cid``) a sender's are: an account's, or a
    guest name's, kept apart, so that a guest's ids never answer for the
    account that later registers the name (or the reverse)."""
    return ("a:" if account else "g:") + key


def copied(message: ChatMessage) -> ChatMessage:
    """*message* as a new object with no encodings and no sessions bound: for
    a confirmation to one session that must not touch the shared one."""
    return replace(message, wire={}, to_session=None, from_session=None)


def corrected(message: ChatMessage, correction: Correction) -> ChatMessage:
    """*message* as it reads after *correction* (a new object: encodings of
    the old one may still be queued)."""
    copy = ChatMessage(
        message.id, message.ts, message.sender, correction.text or "", room=message.room,
        recipient=message.recipient, reply_to=message.reply_to, edit_of=message.edit_of,
        edited=message.edited, deleted=message.deleted, pos=message.pos, cid=message.cid,
        sender_key=message.sender_key,
    )
    if correction.text is None:
        copy.deleted = correction.ts
    else:
        copy.edited = correction.ts
    return copy


class MessageIds:
    """The one owner of message ids: every message and nothing else takes
    one, ids only grow, and an id seen in storage is never given again.

    Storage, the hub and the Telegram bridge read it through this interface
    only; a cluster would hand out ids from a shared counter behind the same
    three methods.
    """

    __slots__ = ("_next",)

    def __init__(self, first: int = 1) -> None:
        self._next = first

    def take(self) -> int:
        """A new id, higher than every id given or seen so far."""
        message_id = self._next
        self._next = message_id + 1
        return message_id

    def seen(self, message_id: int) -> None:
        """*message_id* exists (read from storage): never give it again."""
        if message_id >= self._next:
            self._next = message_id + 1

    @property
    def upcoming(self) -> int:
        """The id the next message will get; every later one is higher."""
        return self._next
