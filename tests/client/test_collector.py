"""The client collects cyclic garbage on the Tk thread only (collector.py).

The second test is the failure it prevents: Tk variables that became garbage
while another thread (Twisted's resolver pool) allocates. With the automatic
collector on, that thread frees them, tkinter calls into Tcl from it, and
every variable costs a second and a "main thread is not in main loop".
"""

from __future__ import annotations

import gc
import sys
import threading
import weakref
from collections.abc import Iterator
from typing import Any

import pytest
from twisted.internet.task import Clock

from chatserv.client.collector import INTERVAL, MainThreadCollector


class _Cycle:
    """Garbage only the cyclic collector frees."""

    def __init__(self, payload: Any = None) -> None:
        self.me = self
        self.payload = payload


@pytest.fixture
def collector() -> Iterator[tuple[MainThreadCollector, Clock]]:
    gc.collect()
    thresholds = gc.get_threshold()
    clock = Clock()
    running = MainThreadCollector(clock)
    running.start()
    try:
        yield running, clock
    finally:
        gc.set_threshold(*thresholds)
        running.stop()


def test_the_automatic_collector_is_off_while_it_runs_and_back_after() -> None:
    assert gc.isenabled()
    running = MainThreadCollector(Clock())
    try:
        running.start()
        running.start()  # a second start changes nothing
        assert not gc.isenabled()
    finally:
        running.stop()
    assert gc.isenabled()
    running.stop()  # nor does a second stop
    assert gc.isenabled()


def test_garbage_is_collected_on_the_timer_once_a_threshold_is_passed(collector) -> None:
    _running, clock = collector
    gc.set_threshold(100, 10, 10)
    gc.collect()  # counts from zero: nothing is due at the next tick
    garbage = _Cycle()
    alive = weakref.ref(garbage)
    del garbage
    clock.advance(INTERVAL)
    # Nothing allocated since: no generation is due, as with the automatic collector.
    assert alive() is not None
    allocated = [[] for _ in range(500)]
    clock.advance(INTERVAL)
    assert alive() is None
    del allocated


@pytest.mark.gui
def test_tk_variables_are_not_freed_by_another_thread(tk_root, collector) -> None:
    import tkinter as tk

    _running, clock = collector
    unraisable: list[Any] = []
    previous_hook = sys.unraisablehook
    sys.unraisablehook = unraisable.append
    try:
        holders = [_Cycle(tk.StringVar(master=tk_root, value=str(i))) for i in range(3)]
        alive = [weakref.ref(h) for h in holders]
        del holders
        # Every allocation would start a collection, were the collector on.
        gc.set_threshold(1, 1, 1)

        def resolver_like_work() -> None:
            for _ in range(5_000):
                [[] for _ in range(3)]

        worker = threading.Thread(target=resolver_like_work)
        worker.start()
        worker.join(30)
        assert not worker.is_alive()
        assert all(ref() is not None for ref in alive), "the other thread freed Tk variables"
        clock.advance(INTERVAL)
        assert all(ref() is None for ref in alive)
    finally:
        sys.unraisablehook = previous_hook
    assert unraisable == []
