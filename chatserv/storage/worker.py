"""One thread that runs a database connection's work in order.

Why not Twisted's ``ThreadPool`` and ``deferToThreadPool``: a store's
connections each need exactly one thread, in order, and the writer runs once
per committed batch, which at a few hundred messages a second is once per
message. On that path the pool's generality is the cost: a Deferred, the
legacy log context captured and restored, a team coordinator and a
``queue.Queue`` (a Python lock and condition) per call. Here a call is one
``SimpleQueue.put`` (C) on the reactor thread and one ``callFromThread``
back, with plain functions for the answer.

Bounds: the queue is unbounded by itself; its callers bound it (the group
commit sends one batch at a time, and every other call is a request some
client or timer is waiting on).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from functools import partial
from queue import SimpleQueue
from typing import Any, TypeVar

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

T = TypeVar("T")

class WorkerStopped(RuntimeError):
    """A job was given to a worker that has stopped."""


_Job = tuple[Callable[[], Any], Callable[[Any], object], Callable[[Failure], object]]


class Worker:
    """A thread that runs functions one at a time, in the order given, and
    hands each result (or Failure) back on the reactor thread."""

    def __init__(self, reactor: Any, name: str) -> None:
        self._reactor = reactor
        self.name = name
        self._jobs: SimpleQueue[_Job | None] = SimpleQueue()
        self._thread: threading.Thread | None = None
        self._stopped = False

    def start(self) -> None:
        """Start the thread (once the reactor runs: threads do not survive
        twistd's fork)."""
        # A thread object that is not alive was started before a fork: the
        # child has to start its own.
        if self._stopped or (self._thread is not None and self._thread.is_alive()):
            return
        # A daemon: a server that exits without closing its store (a crash
        # of the start-up code) must not hang on it. What is committed is
        # committed; a transaction cut short is rolled back by the database.
        self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
        self._thread.start()

    def run(
        self, fn: Callable[[], T], done: Callable[[T], object], failed: Callable[[Failure], object]
    ) -> None:
        """Call ``fn()`` in the thread, then ``done(result)`` or
        ``failed(failure)`` on the reactor thread. Once the worker has
        stopped, ``failed`` is called at once: nothing would run the job."""
        if self._stopped:
            failed(Failure(WorkerStopped(f"{self.name} has stopped")))
            return
        self._jobs.put((fn, done, failed))

    def defer(self, fn: Callable[..., T], *args: Any) -> Deferred[T]:
        """``fn(*args)`` in the thread, as a Deferred."""
        d: Deferred[T] = Deferred()
        self.run(partial(fn, *args), d.callback, d.errback)
        return d

    def stop(self) -> None:
        """Let the thread finish what is queued, then end; wait for it.

        Callers stop a worker once its last job has answered, so the wait
        is for a thread that is about to return.
        """
        self._stopped = True
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._jobs.put(None)
        thread.join()

    def _loop(self) -> None:
        get = self._jobs.get
        while (job := get()) is not None:
            self._one(*job)
            # Not held while waiting for the next job: it is the reactor's now.
            job = None

    def _one(
        self, fn: Callable[[], Any], done: Callable[[Any], object], failed: Callable[[Failure], object]
    ) -> None:
        try:
            result = fn()
        except BaseException:
            self._reactor.callFromThread(failed, Failure())
        else:
            self._reactor.callFromThread(done, result)
