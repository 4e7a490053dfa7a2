"""Names unique across the cluster: a Redis key per name, owned by a node.

``PREFIX:name:KEY`` holds the id of the node whose session has the name
whose look-alike key is KEY; ``PREFIX:names:NODE`` lists a node's keys, so a
survivor can free them when the node dies (chatserv.cluster_redis.members
reaps). A login first *reserves* the name (SET NX: of two nodes racing for
"Ana" and "ANA", exactly one gets it) and then *takes* it, synchronously, in
the hub's login; a reservation no login takes within :data:`RESERVED_FOR`
seconds (the client left meanwhile) is given back.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime

from ..bus import Bus
from ..logs import Logger

log = Logger()

#: Seconds a reserved name waits for its login.
RESERVED_FOR = 10.0


class NameClaims:
    def __init__(self, bus: Bus, prefix: str, node: str, clock: IReactorTime) -> None:
        self.bus = bus
        self.prefix = prefix
        self.node = node
        self.clock = clock
        self._reserved: dict[str, IDelayedCall] = {}
        #: Reservations found held by another node when re-asserting: the
        #: login waiting on one must fail (name_taken), not take the name.
        self._revoked: set[str] = set()
        #: This turn's changes of the node's list of names (key -> held),
        #: written together at its end.
        self._listed: dict[str, bool] = {}
        #: Keys held by sessions of this node.
        self.owned: set[str] = set()
        #: Called with a key this node's session held, found held by another
        #: node when this node re-asserted its names (it was taken for dead
        #: and the name given to someone else meanwhile).
        self.on_lost: Callable[[str], None] = lambda key: None

    def _key(self, key: str) -> str:
        return f"{self.prefix}:name:{key}"

    @property
    def _list(self) -> str:
        return f"{self.prefix}:names:{self.node}"

    def reserve(self, key: str) -> Deferred[bool]:
        """Fires True once *key* is this node's (for a login to take), False
        when another node holds it; fails with BusUnavailable without Redis."""
        if key in self._reserved:
            # Another login on this node asked first: the hub's login decides between them.
            return succeed(True)
        d: Deferred[bool] = self.bus.set(self._key(key), self.node, nx=True)

        def decided(won: bool) -> Any:
            if won:
                return self._hold_reserved(key)
            # Ours already (a name kept after a session's release failed)?
            def holder(node: str | None) -> bool:
                return node == self.node and key not in self.owned and self._hold_reserved(key)

            return self.bus.get(self._key(key)).addCallback(holder)

        return d.addCallback(decided)

    def _hold_reserved(self, key: str) -> bool:
        if key not in self._reserved and key not in self.owned:
            self._reserved[key] = self.clock.callLater(RESERVED_FOR, self._unclaimed, key)
        self._note(key, True)
        return True

    def _note(self, key: str, held: bool) -> None:
        if not self._listed:
            self.clock.callLater(0, self._write_list)
        self._listed[key] = held

    def _write_list(self) -> None:
        listed, self._listed = self._listed, {}
        added = [key for key, held in listed.items() if held]
        if added:
            self.bus.sadd(self._list, added).addErrback(lambda _: None)
        removed = [key for key, held in listed.items() if not held]
        if removed:
            self.bus.srem(self._list, removed).addErrback(lambda _: None)

    def _unclaimed(self, key: str) -> None:
        self._reserved.pop(key, None)
        if key not in self.owned:
            self._free(key)

    def take(self, key: str) -> bool:
        """A session of this node takes *key* now (the hub's login). Without
        a reservation (an in-process participant, which does not wait), the
        name is claimed in the background, and a clash only logged."""
        if key in self._revoked:
            self._revoked.discard(key)
            return False
        call = self._reserved.pop(key, None)
        if call is not None:
            if call.active():
                call.cancel()
        else:
            self._claim_late(key)
        self.owned.add(key)
        return True

    def _claim_late(self, key: str, reasserting: bool = False, attempts: int = 3) -> None:
        def holder(node: str | None) -> None:
            if node is None and reasserting and attempts > 1:
                self._claim_late(key, reasserting, attempts - 1)  # freed meanwhile: try again
            elif node is not None and node != self.node:
                log.warn("the name key {key} is held on node {node} too", key=key, node=node)
                if not reasserting:
                    return
                # The other holder logged in while this node was taken for
                # dead; it keeps the name, ours is the session (or the
                # login under way) to go.
                call = self._reserved.pop(key, None)
                if call is not None:
                    if call.active():
                        call.cancel()
                    self._revoked.add(key)
                    self.clock.callLater(RESERVED_FOR, self._revoked.discard, key)
                if key in self.owned:
                    self.owned.discard(key)
                    self.on_lost(key)
                self._note(key, False)

        def decided(won: bool) -> Any:
            self._note(key, True)
            return None if won else self.bus.get(self._key(key)).addCallback(holder)

        self.bus.set(self._key(key), self.node, nx=True).addCallback(decided).addErrback(lambda _: None)

    def release(self, key: str) -> None:
        self.owned.discard(key)
        if key not in self._reserved:
            self._free(key)

    def _free(self, key: str) -> None:
        self.bus.delete_if(self._key(key), self.node).addErrback(lambda _: None)
        self._note(key, False)

    def assert_own(self) -> None:
        """After a reconnect: (re)claim every name this node's sessions hold
        (Redis may have restarted empty, or a survivor reaped this node)."""
        keys = list(self.owned) + list(self._reserved)
        if not keys:
            return
        self.bus.sadd(self._list, keys).addErrback(lambda _: None)
        for key in keys:
            self._claim_late(key, reasserting=True)

    def forget_all(self) -> Deferred[Any]:
        """A clean stop: free every name now rather than when reaped."""
        self._listed = {}
        keys = list(self.owned) + list(self._reserved)
        ds = [self.bus.delete_if(self._key(key), self.node) for key in keys]
        ds.append(self.bus.delete(self._list))
        return DeferredList(ds, consumeErrors=True)

