"""The password-hashing queue: a bounded, prioritised front to a small thread pool.

An Argon2 hash takes tens of milliseconds of CPU and 64 MiB, so a flood of
``register`` (or ``login``) requests is a CPU attack. Every hash goes through
one :class:`HashQueue`:

* at most ``threads`` hashes run at once, in a pool of their own (the
  reactor's shared pool also serves DNS look-ups);
* at most ``max_waiting`` wait behind them, of which at most ``max_low`` may
  be low priority (registrations, rehashes) and at most ``max_per_key`` may
  come from one client address; beyond that :meth:`HashQueue.submit` fails at
  once with :class:`ServerBusy` (``server_busy``), costing nothing;
* logins of existing accounts (high priority) always run before waiting
  registrations, so a registration flood cannot starve an owner's login;
* a waiting job whose Deferred is cancelled (its connection closed) is
  dropped without running, so hashing stops when the flood's clients leave.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from .errors import ServerBusy

#: Argon2 hashes running at once, server-wide (each takes 64 MiB).
HASH_THREADS = 2
#: Hashes that may wait for a thread; see docs/PROTOCOL.md, "Bounds".
MAX_WAITING = 64
#: Of those, registrations and rehashes.
MAX_WAITING_LOW = 16
#: Hashes waiting or running for one client address.
MAX_PER_ADDRESS = 8

HIGH = 0
LOW = 1


#: The reason of the refusal (rendered by chatserv.wire).
BUSY = "hashing_busy"


class _Job:
    __slots__ = ("priority", "key", "fn", "args", "result", "queued")

    def __init__(self, priority: int, key: str, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.priority = priority
        self.key = key
        self.fn = fn
        self.args = args
        self.result: Deferred[Any] = Deferred(self._cancel)
        self.queued: HashQueue | None = None

    def _cancel(self, _: Deferred[Any]) -> None:
        # Still waiting: it never runs. Already running: the thread finishes,
        # its result is dropped (the Deferred has failed with CancelledError).
        if self.queued is not None:
            self.queued._drop(self)


class HashQueue:
    """Runs hashing functions in a thread pool, bounded and by priority.

    *run* is how a job reaches a thread; tests pass one that returns
    Deferreds they fire themselves.
    """

    def __init__(
        self,
        run: Callable[..., Deferred[Any]],
        *,
        threads: int = HASH_THREADS,
        max_waiting: int = MAX_WAITING,
        max_low: int = MAX_WAITING_LOW,
        max_per_key: int = MAX_PER_ADDRESS,
    ) -> None:
        self._run = run
        self.threads = threads
        self.max_waiting = max_waiting
        self.max_low = max_low
        self.max_per_key = max_per_key
        self._waiting: tuple[deque[_Job], deque[_Job]] = (deque(), deque())
        self._running = 0
        #: jobs waiting or running, per key
        self._per_key: dict[str, int] = {}

    @property
    def waiting(self) -> int:
        return len(self._waiting[HIGH]) + len(self._waiting[LOW])

    @property
    def running(self) -> int:
        """Jobs in the hashing threads now (chatserv.metrics)."""
        return self._running

    def waiting_at(self, priority: int) -> int:
        return len(self._waiting[priority])

    def full(self, priority: int, key: str) -> bool:
        """Whether :meth:`submit` would refuse this job now."""
        return (
            self.waiting >= self.max_waiting
            or (priority == LOW and len(self._waiting[LOW]) >= self.max_low)
            or self._per_key.get(key, 0) >= self.max_per_key
        )

    def submit(self, priority: int, key: str, fn: Callable[..., Any], *args: Any) -> Deferred[Any]:
        """Fire with ``fn(*args)`` as run in a hashing thread, or fail with
        :class:`ServerBusy` at once when the queue is full (see :meth:`full`).
        *key* is the client address the job is for."""
        if self.full(priority, key):
            return fail(ServerBusy(BUSY))
        job = _Job(priority, key, fn, args)
        self._per_key[key] = self._per_key.get(key, 0) + 1
        job.queued = self
        self._waiting[priority].append(job)
        self._pump()
        return job.result

    def _drop(self, job: _Job) -> None:
        job.queued = None
        self._waiting[job.priority].remove(job)
        self._release(job.key)

    def _release(self, key: str) -> None:
        left = self._per_key[key] - 1
        if left:
            self._per_key[key] = left
        else:
            del self._per_key[key]

    def _pump(self) -> None:
        while self._running < self.threads:
            queue = self._waiting[HIGH] or self._waiting[LOW]
            if not queue:
                return
            job = queue.popleft()
            job.queued = None
            self._running += 1
            self._run(job.fn, *job.args).addBoth(self._finished, job)

    def _finished(self, result: Any, job: _Job) -> None:
        self._running -= 1
        self._release(job.key)
        if not job.result.called:  # else cancelled meanwhile: nobody waits for it
            if isinstance(result, Failure):
                job.result.errback(result)
            else:
                job.result.callback(result)
        self._pump()


class HashPool(Service):
    """The hashing threads, as a service: a pool of their own (the reactor's
    shared pool also serves DNS look-ups), and the :class:`HashQueue` in
    front of it. Threads start at the first hash; the pool stops, waiting
    for a hash in progress, when the service (the application) stops.
    """

    name = "hash-pool"  # type: ignore[assignment]

    def __init__(self, reactor: Any, threads: int = HASH_THREADS) -> None:
        self.reactor = reactor
        self.pool = ThreadPool(0, threads, name="chatserv-argon2")
        self.queue = HashQueue(self.run, threads=threads)

    def run(self, fn: Callable[..., Any], *args: Any) -> Deferred[Any]:
        """Fire with ``fn(*args)`` as run in one of the pool's threads."""
        return deferToThreadPool(self.reactor, self.pool, fn, *args)

    def startService(self) -> None:
        super().startService()
        # Not earlier: twistd builds services before it daemonizes, and
        # threads do not survive the fork.
        self.pool.start()

    def stopService(self) -> None:
        super().stopService()
        self.pool.stop()
