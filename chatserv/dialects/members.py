"""Member lists of large rooms for clients that asked for ``lazy_members``.

Every session entering a room is sent its member list, so a storm of N logins
into one room moves O(N²) bytes of names. A client with the ``lazy_members``
login feature gets, for a room of more than :data:`LAZY_THRESHOLD` members,
the member count and the first :data:`FIRST_PAGE` names (case-folded name
order), and asks for the rest with ``members`` when it wants them (as Matrix
lazy-loads members and Discord sends member-list chunks). Its membership
pushes in such rooms are one ``presence`` frame per window carrying the count,
the same bytes for every such member, never a full list. Rooms at or under
the threshold, and clients without the feature (seed 000), get full lists
exactly as before. docs/PROTOCOL.md, "Large rooms", is the contract.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .. import wire
from ..events import PresenceChange

if TYPE_CHECKING:
    from ..hub import Hub, Room

#: Rooms with more members than this are "large" for lazy_members clients.
LAZY_THRESHOLD = 500
#: Names in the first page (the ``users`` answer) of a large room.
FIRST_PAGE = 200
#: The most names one ``members`` answer carries (and its default).
MAX_PAGE = 1000
#: A window's ``presence`` frame names who joined and left up to this many
#: names; beyond it only the count is sent (``reload``).
MAX_PRESENCE_NAMES = 100


def is_large(members: int) -> bool:
    return members > LAZY_THRESHOLD


def first_page(hub: Hub, room: Room) -> bytes:
    """The ``users`` frame of a large room for a lazy_members client."""
    names, more = hub.member_page(room, None, FIRST_PAGE)
    return wire.members_page_frame("users", room.name, names, room.size(), more)


def entered_frame(hub: Hub, room: Room, change: PresenceChange) -> bytes:
    """The first page for every lazy_members newcomer of one window: encoded
    once per window, like the full list others get."""
    data = change.wire.get("json-first-page")
    if data is None:
        data = change.wire["json-first-page"] = first_page(hub, room)
    return data  # type: ignore[no-any-return]


def presence_frame(change: PresenceChange) -> bytes:
    return wire.lazy_presence_frame(change, MAX_PRESENCE_NAMES)


def page(hub: Hub, room: Room, after: str | None, limit: int) -> bytes:
    """The answer to ``members``: up to *limit* names after *after*."""
    names, more = hub.member_page(room, after, min(limit, MAX_PAGE))
    return wire.members_page_frame("members", room.name, names, room.size(), more)
