"""Which names have an account, known in memory: a guest login asks no query.

A login without a password must be refused for a name that has an account
(docs/PROTOCOL.md, Accounts). Asking the database costs each login a trip
to the storage thread and back, and a pause of its connection's reading
while it waits; in a login storm that was a visible share of a login's CPU.
:class:`RegisteredNames` holds every account's name key instead:

* loaded from the database at the first guest login (and again whenever it
  may be out of date, see below); until then, and while it reloads, logins
  ask the database as before;
* kept current by this process: :meth:`added` when it creates an account;
* out of date when another process changes accounts: ``chatserv-admin``
  today (it works with the server running), other nodes of a future
  cluster. A cheap fingerprint of the table (how many accounts, the newest
  creation time) is read at most every :data:`FRESH` seconds, and only
  while guests log in; when it differs from the one the keys were loaded
  with, they are loaded again. An answer is never older than that: a guest
  can take a name at most :data:`FRESH` seconds after its account was
  created elsewhere, as if it had logged in a moment earlier (a guest
  already online keeps its name in any case). A cluster whose nodes tell
  each other of account changes calls :meth:`invalidate`, the one method
  through which another process's change reaches this cache.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

from .logs import Logger

if TYPE_CHECKING:
    from .storage import AccountStore

log = Logger()

#: Seconds an answer from memory may be behind another process's change.
FRESH = 1.0


class RegisteredNames:
    """The name keys that have an account, as far as this process knows."""

    def __init__(self, store: AccountStore, clock: IReactorTime, fresh: float = FRESH) -> None:
        self.store = store
        self.clock = clock
        self.fresh = fresh
        #: Every registered key, or None when not known (not loaded yet,
        #: invalidated, or a load failed).
        self._keys: set[str] | None = None
        #: (accounts, newest creation) when the keys were loaded.
        self._fingerprint: tuple[int, float] | None = None
        #: When the keys were last known to match the database.
        self._checked = 0.0
        self._refreshing = False
        #: Keys added by this process while a load is in flight (the load
        #: may have read the table before they were committed).
        self._added_meanwhile: set[str] = set()
        #: Bumped by invalidate(): a load that began before it is discarded.
        self._generation = 0

    def known(self, key: str) -> bool | None:
        """Whether *key* has an account; None when memory cannot say now
        (ask the database). Starts a refresh when the answer is stale."""
        if self._keys is not None and self.clock.seconds() - self._checked <= self.fresh:
            return key in self._keys
        self._refresh()
        return None

    def added(self, key: str, created: float) -> None:
        """This process created the account of *key* at *created* (it is
        committed). The fingerprint follows, so the next check finds the
        table as expected and reloads nothing."""
        if self._keys is not None:
            self._keys.add(key)
            if self._fingerprint is not None and not self._refreshing:
                count, newest = self._fingerprint
                self._fingerprint = (count + 1, max(newest, created))
        if self._refreshing:
            self._added_meanwhile.add(key)

    def invalidate(self) -> None:
        """Accounts changed elsewhere: answer from the database until reloaded."""
        self._keys = None
        self._fingerprint = None
        self._generation += 1

    def _refresh(self) -> None:
        if not self._refreshing:
            self._refreshing = True
            self._added_meanwhile = set()
            Deferred.fromCoroutine(self._reload()).addErrback(self._failed)

    async def _reload(self) -> None:
        started, generation = self.clock.seconds(), self._generation
        try:
            if self._keys is not None and self._fingerprint is not None:
                same = await self.store.accounts_fingerprint() == self._fingerprint
                if same and generation == self._generation:
                    self._checked = started
                    return
            keys, fingerprint = await self.store.account_keys()
            if generation != self._generation:
                return  # invalidated meanwhile: the next login starts afresh
            self._keys = keys | self._added_meanwhile
            self._fingerprint, self._checked = fingerprint, started
        finally:
            self._refreshing = False

    def _failed(self, failure: Any) -> None:
        from .storage.store import StorageClosed

        self.invalidate()
        if failure.check(StorageClosed):
            return  # shutting down
        log.failure("could not read the registered names; asking the database per login", failure)
