"""Deliver the committed stream in position order, exactly once, whatever
the doorbell does.

Every committed message and correction has a position in one stream per
database (assigned in the commit transaction, contiguous in commit order:
see docs/CLUSTER.md). Notices of them arrive from the bus late, twice, out of
order or never; the node's own commits are offered directly. The
:class:`Sequencer` hands each position to ``deliver`` once, in order:

* an event at ``delivered + 1`` goes out at once, with whatever waited behind it;
* an event further ahead waits, and if the gap is not filled within
  ``gap_wait`` seconds the missing ones are read from the database
  (``fetch(after, limit)``, the truth), page by page;
* an event at or below ``delivered`` is a duplicate and is dropped;
* :meth:`heard_of` (a heartbeat naming a position) and :meth:`catch_up`
  (a reconnect) start the same reading, so a lost notice at the tail of the
  stream, with nothing after it, is found too.

A position the database no longer has (retention deleted it) is skipped when
a read shows the stream going on after it. Pure: time is the injected clock,
and the database one function.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

from ..logs import Logger

log = Logger()

#: Seconds a gap may stay open before the database is asked: long enough
#: for a notice that is merely late, short enough to be unnoticeable.
GAP_WAIT = 0.1
#: Events per database read.
PAGE = 500
#: Seconds before a failed read is tried again.
RETRY = 1.0


class Sequencer:
    """See the module docstring. ``deliver`` gets objects with a ``pos``."""

    def __init__(
        self,
        clock: IReactorTime,
        deliver: Callable[[Any], None],
        fetch: Callable[[int, int], Deferred[list[Any]]],
        delivered: int,
        gap_wait: float = GAP_WAIT,
        page: int = PAGE,
    ) -> None:
        self.clock = clock
        self._deliver = deliver
        self._fetch = fetch
        #: The highest position handed to ``deliver`` (or known to be gone).
        self.delivered = delivered
        self.gap_wait = gap_wait
        self.page = page
        self._pending: dict[int, Any] = {}
        self._timer: IDelayedCall | None = None
        self._fetching = False
        self._again = False
        #: Events delivered, duplicates dropped, database reads: for metrics and tests.
        self.count = 0
        self.duplicates = 0
        self.reads = 0

    @property
    def waiting(self) -> int:
        """Events held behind a gap."""
        return len(self._pending)

    def offer(self, event: Any) -> None:
        """A committed event, from the bus or from this node's own commit."""
        pos = event.pos
        if pos <= self.delivered or pos in self._pending:
            self.duplicates += 1
            return
        if pos == self.delivered + 1:
            self._hand(event)
            self._drain()
            return
        self._pending[pos] = event
        self._arm()

    def heard_of(self, pos: int) -> None:
        """Position *pos* is committed (a node's heartbeat says so)."""
        if pos > self.delivered and pos not in self._pending:
            self._arm()

    def catch_up(self) -> None:
        """Read from the database now whatever follows ``delivered``."""
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None
        if self._fetching:
            self._again = True
            return
        self._fetching = True
        self.reads += 1
        try:
            d = self._fetch(self.delivered, self.page)
        except Exception:
            d = Deferred()
            d.errback(Failure())
        d.addCallbacks(self._fetched, self._failed)

    def stop(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    # -- inside -------------------------------------------------------------------

    def _hand(self, event: Any) -> None:
        self.delivered = event.pos
        self.count += 1
        try:
            self._deliver(event)
        except Exception:
            log.failure("delivering stream position {pos} failed", pos=event.pos)

    def _drain(self) -> None:
        pending = self._pending
        while pending:
            event = pending.pop(self.delivered + 1, None)
            if event is None:
                break
            self._hand(event)
        if pending:
            for pos in [p for p in pending if p <= self.delivered]:
                del pending[pos]
                self.duplicates += 1
            if pending:
                self._arm()

    def _arm(self) -> None:
        if self._timer is None and not self._fetching:
            self._timer = self.clock.callLater(self.gap_wait, self._expired)

    def _expired(self) -> None:
        self._timer = None
        self.catch_up()

    def _fetched(self, events: list[Any]) -> None:
        self._fetching = False
        for event in events:
            if event.pos <= self.delivered:
                continue
            # The notice's object if there is one: a node's own message keeps
            # the sessions it was sent between.
            self._hand(self._pending.pop(event.pos, event))
        self._drain()
        if len(events) >= self.page or self._again:
            self._again = False
            self.catch_up()

    def _failed(self, failure: Failure) -> None:
        self._fetching = False
        log.failure("catching up from the database after position {pos} failed", failure, pos=self.delivered)
        if self._timer is None:
            self._timer = self.clock.callLater(RETRY, self._expired)
