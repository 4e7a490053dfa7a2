"""Finding the message a ``reply_to``, ``edit`` or ``delete`` names.

A message id may name a message in a room's in-memory history window, or
one only storage still holds (older, or private: the hub keeps no private
messages). This module answers "which message is N?" without blocking; the
hub then decides whether the session may use it (:meth:`Hub.reply_quote`,
:meth:`Hub.correct`). Like :mod:`chatserv.dialects.paging`, it knows the hub
and the store's interface, and no SQL.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from twisted.internet.defer import Deferred, succeed

from .errors import ChatError
from .events import ChatMessage
from .hub import Hub


def message_id(frame: dict[str, Any], field: str) -> int | None:
    """The message id in *field* of a client frame, or None when absent."""
    value = frame.get(field)
    if value is None:
        return None
    # bool is an int in Python, never in the protocol.
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ChatError(f"el campo {field!r} debe ser un id de mensaje (entero positivo)")
    return value


def find(hub: Hub, store: Any, wanted: int, rooms: Iterable[str] = ()) -> Deferred[ChatMessage | None]:
    """Message *wanted* as it reads now (edits applied), or None if unknown.

    The history windows of *rooms* (where a reply or an edit most likely
    points) are looked at first, so the common case costs no query; then
    storage. Without storage only the windows are known.
    """
    for room_name in rooms:
        found = hub.window_message(wanted, room_name)
        if found is not None:
            return succeed(found)
    if store is None:
        return succeed(None)
    d: Deferred[ChatMessage | None] = store.message(wanted)
    return d
