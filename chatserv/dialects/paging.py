"""The ``history`` command and lazy loading of room windows, for the JSON dialect.

``{"cmd": "history", "room": R, "before": ID, "limit": N}`` pages back through
a room the session is in; ``{"cmd": "history", "with": U, ...}`` through the
session's private conversation with U. Both answer one ``history`` frame,
oldest item first, with ``more`` telling whether older messages exist.
With ``after: POS`` instead of ``before`` a page goes forward in the stream
(the messages committed after position POS, oldest first, and the
corrections since of the messages before it; ``more``: newer ones remain):
how a client that reconnects catches up.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, succeed

from .. import wire
from ..errors import ChatError, InvalidName
from ..events import ChatMessage, Correction
from ..hub import Hub, Session
from ..names import MAX_NAME_LENGTH, BadName, check_name
from ..storage import MAX_PAGE

DEFAULT_PAGE = 50
#: The largest ``before`` or ``limit`` a request may carry: 2**63 - 1.
MAX_ID = (1 << 63) - 1


def _int_field(frame: dict[str, Any], field: str) -> int | None:
    value = frame.get(field)
    if value is None:
        return None
    # bool is an int in Python, never in the protocol. Ids are 64-bit signed
    # integers in both engines; a larger number would reach SQLite as an
    # overflow, so it is refused here alike for both.
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_ID:
        raise ChatError(f"el campo {field!r} debe ser un entero entre 1 y {MAX_ID}")
    return value


def _after_field(frame: dict[str, Any]) -> int | None:
    value = frame.get("after")
    if value is None:
        return None
    # 0 is a position too: "from the start of the stream".
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_ID:
        raise ChatError(f"el campo 'after' debe ser un entero entre 0 y {MAX_ID}")
    return value


def history(
    hub: Hub, store: Any, session: Session, frame: dict[str, Any], since: float
) -> Deferred[bytes]:
    """Validate a ``history`` request and fire with the encoded answer.

    Raises :class:`ChatError` (``bad_request``, ``bad_name``, ``not_in_room``)
    at once for a request that cannot be answered.
    """
    before = _int_field(frame, "before")
    after = _after_field(frame)
    if before is not None and after is not None:
        raise ChatError("pide 'before' o 'after', no ambos")
    limit = _int_field(frame, "limit")
    # Larger requests are served up to the bound rather than refused, so a
    # client need not know the server's figure.
    limit = DEFAULT_PAGE if limit is None else min(limit, MAX_PAGE)
    room_name, peer = frame.get("room"), frame.get("with")
    if room_name is not None and peer is not None:
        raise ChatError("pide la historia de una sala o de una conversación, no de ambas")
    if peer is not None:
        peer = _peer_name(peer)
        answer: dict[str, Any] = {"cmd": "history", "with": peer}
        if store is None:
            return succeed(wire.frame({**answer, "items": [], "more": False}))
        if after is not None:
            d = store.private_events_after(session.name, peer, after, limit + 1, since)
            return d.addCallback(lambda found: _encode_after(answer, found, limit, wire.private_object))
        # Fetch one more than asked to learn whether there is an older page.
        d = store.private_page(session.name, peer, before, limit + 1, since)
        return d.addCallback(lambda found: _encode(answer, found, limit, wire.private_object))
    if room_name is not None and not isinstance(room_name, str):
        raise ChatError("el campo 'room' debe ser un texto")
    # Only members page through a room, as only members read it live.
    room = hub.member_room(session, room_name)
    answer = {"cmd": "history", "room": room.name}
    if after is not None:
        if store is None:
            # Without a database only the window is known (and no corrections).
            forward: list[ChatMessage | Correction] = [m for m in room.history if m.pos > after]
            return succeed(_encode_after(answer, forward[: limit + 1], limit, wire.message_object))
        d = store.room_events_after(room.name, after, limit + 1)
        return d.addCallback(lambda found: _encode_after(answer, found, limit, wire.message_object))
    if store is None:
        window = [m for m in room.history if before is None or m.id < before]
        return succeed(_encode(answer, window[-(limit + 1) :], limit, wire.message_object))
    d = store.room_page(room.name, before, limit + 1)
    return d.addCallback(lambda found: _encode(answer, found, limit, wire.message_object))


def _peer_name(peer: object) -> str:
    """A name a private conversation can be with: a client's name, or one of
    the names in-process participants hold ("Luis (TG)" from the bridge),
    which may contain spaces. Any name is safe to ask for: only the
    session's own conversation with it is ever read."""
    if isinstance(peer, str):
        try:
            return check_name(peer)
        except BadName as e:
            if peer.strip() and peer.isprintable() and len(peer) <= 2 * MAX_NAME_LENGTH:
                return peer
            raise InvalidName(str(e)) from None
    raise ChatError("el campo 'with' debe ser un texto")


def _encode(answer: dict[str, Any], found: list[ChatMessage], limit: int, item: Any) -> bytes:
    more = len(found) > limit
    page = found[1:] if more else found
    # Bounded in bytes as well (wire.MAX_PAGE_BYTES): `more` then says so.
    return wire.history_page(answer, [item(m) for m in page], more)


def _encode_after(
    answer: dict[str, Any], found: list[ChatMessage | Correction], limit: int, item: Any
) -> bytes:
    """A page forward: the oldest *limit* events of *found* (messages as
    *item* renders them, corrections as their frames); ``more`` when newer remain."""
    more = len(found) > limit
    events = [
        (True, item(e)) if isinstance(e, ChatMessage) else (False, wire.correction_object(e))
        for e in found[:limit]
    ]
    return wire.forward_page(answer, events, more)


def needs_loading(hub: Hub, store: Any, room_name: object) -> bool:
    """Whether joining *room_name* must first read its history window from
    storage: the room is not in memory (never used since start-up, or
    dropped when its last member left) but may have stored messages, or its
    window was evicted to keep history windows within their memory bound."""
    if store is None or not isinstance(room_name, str):
        return False
    room = hub.room(room_name)
    return room is None or room.partial


def load_room(hub: Hub, store: Any, room_name: str) -> Deferred[list[ChatMessage]]:
    """The newest window of *room_name* from storage, for :meth:`Hub.remember`."""
    try:
        check_name(room_name)
    except BadName as e:
        raise InvalidName(str(e)) from None
    return store.room_page(room_name, None, hub.history_size)
