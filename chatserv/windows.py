"""One memory bound for the history windows of every room.

Each room the hub holds keeps its newest ``--history`` messages in memory (the
``history`` answer to ``login`` and ``join``) and, once asked for, that window
encoded. Rooms are many and a session may be in a hundred, so the windows
share one budget of bytes (``--history-memory``) instead of each having its
own: when they hold more, the windows of the rooms least recently written or
read are evicted. With a database an evicted window is read again when the
room is next joined (the hub merges it with whatever arrived meanwhile);
without one it is gone.

What is counted: each message's text plus :data:`MESSAGE_OVERHEAD` for the
objects around it (its encodings for the fan-out are dropped once it has been
handed to every member), and every cached encoding of a window, byte for byte.
The cost is a few dictionary operations per message, never per recipient.
"""

from __future__ import annotations

import sys
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING

from .logs import Logger
from .names import name_key

if TYPE_CHECKING:
    from .events import ChatMessage
    from .hub import Room

log = Logger()

#: Default bound on the bytes all rooms' history windows may hold together.
HISTORY_MEMORY = 64 * 1024 * 1024
#: What a message in a window costs beyond its text: the ChatMessage, its
#: wire dict and message object, its time strings.
MESSAGE_OVERHEAD = 1024
#: The room whose window every login is sent; evicted last.
_GENERAL = "general"


def cost_of(message: ChatMessage) -> int:
    """What *message* is counted for while it is in a window: the same every
    time it is asked, since a message's text never changes (a correction puts
    a new message object in its place, see :meth:`Windows.replace`)."""
    return MESSAGE_OVERHEAD + sys.getsizeof(message.text)


class Windows:
    """The rooms' history windows under one byte budget, least recently used
    evicted first. The hub calls it whenever a window changes or is read."""

    def __init__(self, limit: int, reloadable: bool) -> None:
        self.limit = limit
        #: Whether an evicted window can be read again (there is a database).
        self.reloadable = reloadable
        #: Bytes counted now, over all windows.
        self.used = 0
        #: Rooms whose windows hold anything, least recently used first.
        self._lru: OrderedDict[str, Room] = OrderedDict()

    def keep(self, room: Room, message: ChatMessage) -> None:
        """Add *message* to the room's window and count it."""
        if room.wire:
            self._forget_encodings(room)
        if len(room.history) == room.history.maxlen:
            if not room.history:
                return  # a window of no messages (--history 0 in tests)
            self._uncharge(room, cost_of(room.history[0]))  # the append below drops it
        room.history.append(message)
        self._charge(room, cost_of(message))

    def replace(self, room: Room, old: ChatMessage, new: ChatMessage) -> bool:
        """Put *new* (an edit or deletion of *old*) in *old*'s place in the
        room's window, counting its new text; False if *old* is not there."""
        for i, message in enumerate(room.history):
            if message is old:
                if room.wire:
                    self._forget_encodings(room)
                self._uncharge(room, cost_of(old))
                room.history[i] = new
                self._charge(room, cost_of(new))
                return True
        return False

    def frame(self, room: Room, key: str, encode: Callable[[Room], bytes]) -> bytes:
        """The window of *room* encoded by *encode*, cached under *key* until
        the window changes, and counted."""
        data = room.wire.get(key)
        if data is None:
            data = room.wire[key] = encode(room)
            self._charge(room, len(data))
        elif room.cost:
            self._lru.move_to_end(name_key(room.name))
        return data

    def evict(self, room: Room) -> None:
        """Empty the room's window and stop counting it."""
        self._lru.pop(name_key(room.name), None)
        self.used -= room.cost
        room.cost = 0
        room.history.clear()
        room.wire.clear()
        room.partial = self.reloadable

    def _charge(self, room: Room, cost: int) -> None:
        room.cost += cost
        self.used += cost
        key = name_key(room.name)
        if room.cost == cost:
            self._lru[key] = room
        self._lru.move_to_end(key)
        if self.used > self.limit:
            self._shrink(room)

    def _uncharge(self, room: Room, cost: int) -> None:
        room.cost -= cost
        self.used -= cost

    def _forget_encodings(self, room: Room) -> None:
        for data in room.wire.values():
            self._uncharge(room, len(data))
        room.wire.clear()

    def _shrink(self, hot: Room) -> None:
        """Evict the least recently used windows until all fit the budget.

        ``general``, whose window every login is sent, and *hot*, the room
        being written or read now, go last: when they alone are over the
        budget, their oldest messages are let go instead, which leaves a
        shorter but whole window.
        """
        spared: list[Room] = []
        while self.used > self.limit and self._lru:
            _, room = self._lru.popitem(last=False)
            if room is hot or room.name == _GENERAL:
                spared.append(room)
                continue
            self.evict(room)
            log.debug("history window of {room} evicted", room=room.name)
        for room in spared:
            self._lru[name_key(room.name)] = room
            if room.wire and self.used > self.limit:
                self._forget_encodings(room)
            while self.used > self.limit and len(room.history) > 1:
                self._uncharge(room, cost_of(room.history.popleft()))
