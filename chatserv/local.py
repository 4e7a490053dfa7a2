"""One node on its own: the local cluster and the in-memory message log.

:class:`LocalCluster` is the single-node implementation of
:class:`chatserv.cluster.Cluster`: ids come from a counter in this process,
names and rooms are the hub's own dictionaries, and every publication goes
straight to the hub's delivery entry points.

:class:`MemoryLog` is the :class:`chatserv.hub.MessageLog` of a server with
no database. It keeps nothing beyond the hub's history windows, but commits
the way :class:`chatserv.storage.store.ThreadedStore` does: what is appended
in one reactor turn is "committed" together at the end of that turn, and
delivered in append order. So a server (or a test) without a database sees
the same path and the same timing as one with a database: a message reaches
its recipients in a later reactor turn than the one that sent it, never
within the sender's call. Its positions (``pos``) come from a counter in
this process with the same meaning as the database's stream: every message
and correction takes the next one when it is committed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import IReactorTime

from .events import ChatMessage, Correction, MessageIds, Typing

if TYPE_CHECKING:
    from .hub import Hub


class LocalCluster:
    """Everything on this one node; exactly the behaviour of a lone server."""

    def __init__(self, first_id: int = 1) -> None:
        self.ids = MessageIds(first_id)
        self._hub: Hub | None = None

    def attach(self, hub: Hub) -> None:
        self._hub = hub
        # The hub's own entry points: nothing between a commit and the fan-out.
        self.publish_room: Callable[[ChatMessage], None] = hub.deliver_to_room
        self.publish_private: Callable[[ChatMessage], None] = hub.deliver_private
        self.publish_correction: Callable[[Correction], None] = hub.deliver_correction

    def reserve_name(self, key: str) -> None:
        return None  # the hub's session table decides, at login

    def claim_name(self, key: str) -> bool:
        assert self._hub is not None
        return key not in self._hub.sessions

    def release_name(self, key: str) -> None:
        pass  # the hub's session table is the only record

    def membership(self, room: str, joined: str | None = None, left: str | None = None) -> None:
        assert self._hub is not None
        self._hub.note_presence(room, joined, left)

    def elsewhere(self, room_key: str) -> dict[str, str]:
        return {}  # no other node

    def where(self, key: str) -> str | None:
        return None

    def rooms_elsewhere(self) -> dict[str, tuple[str, int]]:
        return {}

    def publish_typing(self, typing: Typing, key: str) -> None:
        assert self._hub is not None
        self._hub.deliver_typing(typing, key)

    def health_problems(self) -> list[str]:
        return []  # a lone node is all the chat there is


class MemoryLog:
    """A message log that keeps nothing but commits like the threaded store:
    batched to the end of the reactor turn, delivered in append order."""

    #: Evicted history windows cannot be read back: there is no database.
    keeps_history = False

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        #: The last position taken (see ChatMessage.pos).
        self.position = 0
        self._items: list[Any] = []
        self._then: list[Callable[[Any], None]] = []
        self._due = False
        #: Messages with a cid queued: only then does a commit look for repeats.
        self._cids = 0

    def append_then(self, message: ChatMessage, deliver: Callable[[ChatMessage], None]) -> None:
        if message.cid is not None:
            self._cids += 1
        self._queue(message, deliver)

    def correct_then(self, correction: Correction, deliver: Callable[[Correction], None]) -> None:
        self._queue(correction, deliver)

    def congested(self) -> bool:
        return False  # nothing waits on a disk

    def _queue(self, item: Any, then: Callable[[Any], None]) -> None:
        self._items.append(item)
        self._then.append(then)
        if not self._due:
            self._due = True
            # As _Group.submit_then: the rest of this turn joins the batch.
            self._clock.callLater(0, self._commit)

    def _commit(self) -> None:
        items, then = self._items, self._then
        self._items, self._then = [], []
        self._due = False
        if self._cids:
            self._cids = 0
            self._commit_unique(items, then)
            return
        position = self.position
        for item in items:
            position += 1
            item.pos = position  # committed: its place is known before it is shared
        self.position = position
        for item, deliver in zip(items, then, strict=True):
            deliver(item)

    def _commit_unique(self, items: list[Any], then: list[Callable[[Any], None]]) -> None:
        """A commit with cids: a repeat within the batch is not committed and
        is answered with the first (across batches the hub remembers them)."""
        held: dict[tuple[str | None, str], ChatMessage] = {}
        originals: list[Any] = []
        for item in items:
            original = None
            cid = getattr(item, "cid", None)
            if cid is not None:
                original = held.setdefault((item.sender_key, cid), item)
                if original is item:
                    original = None
            if original is None:
                self.position += 1
                item.pos = self.position
            originals.append(original)
        for item, original, deliver in zip(items, originals, then, strict=True):
            deliver(item if original is None else original)
