"""Deleting old messages: ``--retain-days`` and the operators' per-room caps.

A :class:`RetentionService` runs :func:`prune` when the server starts and
every :data:`PRUNE_INTERVAL` seconds after. Deletion happens in the store's
writer thread, :data:`PRUNE_BATCH` rows per transaction: message commits
queue behind one batch at most, never behind the whole clean-up, and the
reactor never waits for any of it. A cap set with ``chatserv-admin
set-room-cap`` (read at every run) is therefore enforced within one interval:
a room may hold up to an interval's worth of messages above its cap.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

log = Logger()

#: Seconds between two runs.
PRUNE_INTERVAL = 600.0
#: Rows one delete transaction removes at most.
PRUNE_BATCH = 2000
DAY = 86_400.0


async def prune(store: Any, cutoff: float | None, batch: int = PRUNE_BATCH) -> int:
    """Delete the messages older than *cutoff* (none when None), and those
    of capped rooms beyond their caps; return how many went.

    *store* is a :class:`chatserv.storage.ThreadedStore`: each batch is one
    job of its writer thread, so commits of new messages interleave.
    """
    deleted = 0
    for key, _room, cap in await store.write(store.writer.room_caps):
        while True:
            n = await store.write(store.writer.delete_over_cap, key, cap, batch)
            deleted += n
            if n < batch:
                break
    if cutoff is not None:
        while True:
            n = await store.write(store.writer.delete_older, cutoff, batch)
            deleted += n
            if n < batch:
                break
    return deleted


class RetentionService(Service):
    """Prunes the store at start-up and then every *interval* seconds."""

    name = "retention"  # type: ignore[assignment]

    def __init__(
        self,
        store: Any,
        clock: IReactorTime,
        retain_days: float | None = None,
        interval: float = PRUNE_INTERVAL,
    ) -> None:
        self.store = store
        self.clock = clock
        self.retain_days = retain_days
        self.interval = interval
        self._loop: LoopingCall | None = None
        #: The run in progress (or the last one): stopService waits for it.
        self.running_prune: Deferred[Any] = succeed(None)

    def startService(self) -> None:
        super().startService()
        self._loop = LoopingCall(self._run)
        self._loop.clock = self.clock
        self._loop.start(self.interval, now=True)

    def _run(self) -> Deferred[Any]:
        cutoff = None
        if self.retain_days is not None:
            cutoff = self.clock.seconds() - self.retain_days * DAY
        d = Deferred.fromCoroutine(prune(self.store, cutoff))

        def done(n: int) -> None:
            if n:
                log.info("retention: deleted {n} old messages", n=n)

        def failed(failure: Any) -> None:
            # The next run tries again; a failing database is reported by
            # the message path too.
            log.failure("retention: pruning failed", failure)

        d.addCallbacks(done, failed)
        self.running_prune = d
        return d

    def stopService(self) -> Deferred[Any]:
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        # The store closes after this service stops: let the batch in
        # flight finish first.
        d: Deferred[Any] = Deferred()
        self.running_prune.addBoth(lambda _: d.callback(None))
        return d
