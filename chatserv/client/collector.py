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

So the automatic collector is switched off while the window is up, and this
runs the same generational policy (collect a generation once its count
passes its threshold) from a reactor timer, on the Tk thread.
"""

from __future__ import annotations

import gc
from typing import Any

from twisted.internet.task import LoopingCall

#: Seconds between looks at the collector's counts. Garbage waits at most
#: this long; a look that finds nothing to do costs a few microseconds.
INTERVAL = 0.5


class MainThreadCollector:
    """While running, cyclic garbage is collected on the reactor's thread only."""

    def __init__(self, reactor: Any, interval: float = INTERVAL) -> None:
        self._interval = interval
        self._loop = LoopingCall(self.collect)
        self._loop.clock = reactor
        self._was_enabled = False

    def start(self) -> None:
        self._was_enabled = gc.isenabled()
        gc.disable()
        self._loop.start(self._interval, now=False)

    def stop(self) -> None:
        """Collect what is left, here, and give the automatic collector back."""
        if self._loop.running:
            self._loop.stop()
        gc.collect()
        if self._was_enabled:
            gc.enable()

    @staticmethod
    def collect() -> int:
        """Collect the oldest generation whose count passed its threshold, as
        the automatic collector would have; the number of objects freed."""
        counts = gc.get_count()
        thresholds = gc.get_threshold()
        for generation in (2, 1, 0):
            if thresholds[generation] and counts[generation] > thresholds[generation]:
                return gc.collect(generation)
        return 0
