"""Member lists of the rooms the client is in, whole or paged.

The client logs in with the ``lazy_members`` feature (docs/PROTOCOL.md,
Large rooms): in a room of more than 500 members the server sends the member
count and the first page of names, in case-folded alphabetical order, and the
rest on request. :class:`MemberLists` keeps each room's list in the model:
whole lists as they come, pages appended when the view asks for more
(:meth:`want_more`, when the user scrolls to the end of the list), and the
count and small changes of ``presence`` frames applied to what is loaded. A
room of 10,000 members thus costs the client a few hundred names until the
user scrolls, and never a 10,000-name list per membership change.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from typing import Any

from chatserv.client.model import GENERAL_KEY, ChatModel, Conversation, ConvKey, fold

Frame = dict[str, Any]

#: Names asked for per ``members`` request.
PAGE = 200


def _names(value: object) -> list[str]:
    return [n for n in value if isinstance(n, str)] if isinstance(value, list) else []


class MemberLists:
    """Member lists of the model's rooms; *send* sends a frame to the server
    (it is dropped while disconnected)."""

    def __init__(self, model: ChatModel, send: Callable[[Frame], None]) -> None:
        self.model = model
        self.send = send
        #: room -> the ``after`` of the one ``members`` request in flight for
        #: it ("" for a first page asked again).
        self._asked: dict[ConvKey, str] = {}

    def reset(self) -> None:
        """The connection is gone: answers to what was asked will not come."""
        self._asked.clear()

    def users(self, key: ConvKey, frame: Frame) -> None:
        """A ``users`` frame: the whole list, or (with ``count``) the first page."""
        self._asked.pop(key, None)
        count = frame.get("count")
        if isinstance(count, int):
            self.model.set_members(key, _names(frame.get("list")), count, frame.get("more") is True)
        else:
            self.model.set_members(key, _names(frame.get("list")))

    def page(self, key: ConvKey, frame: Frame) -> None:
        """The answer to a ``members`` request of ours."""
        after = self._asked.pop(key, None)
        conv = self.model.get(key)
        count = frame.get("count")
        if after is None or conv is None or not isinstance(count, int):
            return
        names = _names(frame.get("list"))
        if after:
            have = {fold(n) for n in conv.members}
            names = conv.members + [n for n in names if fold(n) not in have]
        self.model.set_members(key, names, count, frame.get("more") is True)

    def presence(self, key: ConvKey, frame: Frame) -> None:
        """Changes in a large room: the count, and who joined and left."""
        conv = self.model.get(key)
        count = frame.get("count")
        if conv is None or not isinstance(count, int):
            return
        if frame.get("reload") is True:
            # Too many changes to list: the first page again (the view asks
            # for more as the user scrolls).
            self.model.set_members(key, conv.members, count, True)
            self._ask(key, conv, "")
            return
        left = {fold(n) for n in _names(frame.get("left"))}
        names = [n for n in conv.members if fold(n) not in left]
        folded = [fold(n) for n in names]
        for name in _names(frame.get("joined")):
            f = fold(name)
            if f in folded:
                continue
            # A name past the last one loaded comes with a later page.
            if conv.members_more and folded and f > folded[-1]:
                continue
            i = bisect.bisect(folded, f)
            folded.insert(i, f)
            names.insert(i, name)
        self.model.set_members(key, names, count, conv.members_more)

    def want_more(self, key: ConvKey) -> None:
        """The view shows the end of what is loaded: ask for the next page."""
        conv = self.model.get(key)
        if conv is None or not conv.members_more or not conv.members or key in self._asked:
            return
        self._ask(key, conv, conv.members[-1])

    def _ask(self, key: ConvKey, conv: Conversation, after: str) -> None:
        if key in self._asked:
            return
        self._asked[key] = after
        frame: Frame = {"cmd": "members", "room": "general" if key == GENERAL_KEY else conv.title,
                        "limit": PAGE}
        if after:
            frame["after"] = after
        self.send(frame)
