"""The client's garbage collection, kept on the Tk thread.

Tk widgets and their variables form reference cycles, so the cyclic garbage
collector is what frees them, on whichever thread happens to trigger a
collection. The client has one thread of its own, but Twisted resolves host
names in its thread pool (``HostnameEndpoint``, on every connect and
reconnect). When a collection starts there with a Tk variable pending, the
variable's ``__del__`` calls into Tcl from that thread; tkinter then waits a
second for a Tk main loop (which ``tksupport`` never runs), gives up with
"main thread is not in main loop" and leaves the Tcl variable behind. Each
such variable costs the reconnect a second.

So the automatic collector is switched off while the window is up, and a
reactor timer on the Tk thread applies the interpreter's own policy in its
place (see :meth:`MainThreadCollector.collect`).
"""

from __future__ import annotations

import gc
from typing import Any

from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure

from chatserv.logs import Logger

log = Logger()

#: Seconds between looks at the collector's counts: how late a collection
#: that is due may start. A look that finds nothing due costs microseconds.
INTERVAL = 0.5


class MainThreadCollector:
    """While running, cyclic garbage is collected on the reactor's thread only."""

    def __init__(self, reactor: Any, interval: float = INTERVAL) -> None:
        self._interval = interval
        self._loop = LoopingCall(self.collect)
        self._loop.clock = reactor
        self._was_enabled = False

    def start(self) -> None:
        if self._loop.running:
            return
        self._was_enabled = gc.isenabled()
        gc.disable()
        self._loop.start(self._interval, now=False).addErrback(self._broke)

    def stop(self) -> None:
        """Collect what is left, here, and give the automatic collector back.
        Harmless when not running."""
        if not self._loop.running:
            return
        self._loop.stop()
        gc.collect()
        if self._was_enabled:
            gc.enable()

    def _broke(self, failure: Failure) -> None:
        # The timer is gone: the automatic collector is better than none.
        log.failure("the Tk thread's garbage collection failed; automatic collection is back on", failure)
        if self._was_enabled:
            gc.enable()

    @staticmethod
    def collect() -> int:
        """Collect what the automatic collector would have by now; the number
        of objects freed.

        CPython 3.11–3.13 and 3.15 collect generations: the oldest one whose
        count passed its threshold (without the interpreter's extra rule that
        delays full collections on large heaps; one look per interval bounds
        them here). 3.14's incremental collector has a third threshold of 0 and,
        when the young count passes its threshold, collects the young
        generation and an increment of the old one, which ``collect(1)`` asks
        for.
        """
        counts = gc.get_count()
        thresholds = gc.get_threshold()
        if thresholds[2] == 0:
            return gc.collect(1) if thresholds[0] and counts[0] > thresholds[0] else 0
        for generation in (2, 1, 0):
            if thresholds[generation] and counts[generation] > thresholds[generation]:
                return gc.collect(generation)
        return 0
