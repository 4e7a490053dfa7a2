"""The asynchronous store the server uses: engines in threads, group commit.

Threading model. Each store owns two threads (:class:`.worker.Worker`): a
*writer* that runs every write (message batches, account changes) on one
connection, and a *reader* that runs queries (history pages, account
look-ups) on another. Why not ``twisted.enterprise.adbapi``: its pool hands each
interaction to any of several threads with a connection each, so writes race
for SQLite's single write lock (SQLITE_BUSY) and nothing keeps one batch
committing at a time, which group commit needs. Why not psycopg's asyncio API:
it would tie the server to the asyncio reactor and give the two engines two
code paths; the same thread code serves both. One writer is also all the
write concurrency SQLite has, and for PostgreSQL one connection committing
batches back to back is not the limit (see the throughput figure in the
storage README section). Reads get their own thread and connection (WAL lets
SQLite readers run beside the writer) so that paging history never waits
behind a commit; a SQLite ``:memory:`` database is one connection, so there
both threads share it under the engine lock.

Group commit. :meth:`ThreadedStore.append` queues the message and, if no
commit is in flight, schedules one for the end of the reactor turn; every
message queued while a commit runs goes into the next transaction. Callers
are told in append order once their transaction commits (the hub uses
:meth:`ThreadedStore.append_then`, a plain callback, rather than a Deferred
per message). A burst of N messages therefore costs about two transactions,
not N, and the latency a message pays is at most one commit plus the one in
flight. If a batch fails, its messages are retried one by one, so that one
message the database refuses does not take the others down with it.

Threads start at first use, not when the store is opened: twistd opens it
before daemonizing, and threads do not survive the fork.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail
from twisted.python.failure import Failure

from ..events import ChatMessage, Correction
from ..logs import Logger
from ..names import name_key
from ..stats import Histogram
from .engine import Account, Engine, RoomInfo, SQLiteEngine, is_postgres, open_engine, redact
from .schema import StorageError
from .worker import Worker

log = Logger()

T = TypeVar("T")

#: Text of messages accepted but not yet committed, at most. Past it clients'
#: new messages are refused with ``server_busy`` until the writer catches up,
#: instead of holding memory without end while the database is slower than
#: the senders (docs/PROTOCOL.md, Bounds).
MAX_BACKLOG = 32 * 1024 * 1024


class StorageClosed(StorageError):
    """The store was closed; nothing more can be written."""


LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)


class _Group:
    """Runs ``work(items)`` in *worker* for everything submitted while the
    previous run was in flight, and tells each submitter, in order.

    ``work`` returns one result per item, or None for "None for each". A
    submitter waits with a Deferred (:meth:`submit`), fired with its result,
    or, on the hot path of message commits, with a plain function
    (:meth:`submit_then`) called with its item, or with its result when
    that is not None; this saves a Deferred and two callbacks per message.
    Failures of those are logged once per batch.
    """

    def __init__(
        self,
        reactor: Any,
        worker: Worker,
        work: Callable[[list[Any]], Sequence[Any] | None],
        prepare: Callable[[], None],
        weigh: Callable[[Any], int] | None = None,
    ) -> None:
        self._reactor = reactor
        #: What an item costs while it waits or is in flight (``weight``).
        self._weigh = weigh
        self.weight = 0
        self._worker = worker
        self._work = work
        self._prepare = prepare
        self._items: list[Any] = []
        self._waiters: list[Any] = []  # a Deferred, or a function of the item
        self._busy = False
        self._idle: list[Deferred[None]] = []
        self.runs = 0
        self.done = 0
        #: Seconds from a batch leaving for its thread to its result, and
        #: items per batch: one observation per batch (chatserv.metrics).
        self.latency = Histogram(LATENCY_BUCKETS)
        self.sizes = Histogram(BATCH_BUCKETS)
        self.in_flight = 0
        self._sent_at = 0.0

    def submit(self, item: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.submit_then(item, d)
        return d

    def submit_then(self, item: Any, then: Any) -> None:
        if self._weigh is not None:
            self.weight += self._weigh(item)
        self._items.append(item)
        self._waiters.append(then)
        if not self._busy:
            self._busy = True
            # Not at once: whatever else arrives in this reactor turn (the
            # rest of a read full of lines, other connections' reads) joins
            # the same transaction.
            self._reactor.callLater(0, self._run)

    def _run(self) -> None:
        items, waiters = self._items, self._waiters
        self._items, self._waiters = [], []
        self.in_flight = len(items)
        self._sent_at = self._reactor.seconds()
        self._prepare()
        self._worker.run(
            lambda: self._work(items),
            lambda results: self._finished(results, items, waiters),
            lambda failure: self._failed(failure, items, waiters),
        )

    def _unweigh(self, items: list[Any]) -> None:
        if self._weigh is not None:
            self.weight -= sum(map(self._weigh, items))

    def _finished(self, results: Sequence[Any] | None, items: list[Any], waiters: list[Any]) -> None:
        self._unweigh(items)
        self.runs += 1
        self.done += len(waiters)
        if results is None:
            for item, waiter in zip(items, waiters, strict=True):
                if waiter.__class__ is Deferred:
                    waiter.callback(None)
                else:
                    _tell(waiter, item)
            self._next()
            return
        for item, waiter, result in zip(items, waiters, results, strict=True):
            if isinstance(result, Failure):
                self.done -= 1
                if waiter.__class__ is Deferred:
                    waiter.errback(result)  # the submitter handles it
                else:
                    log.failure("could not store {item!r}; it is not relayed", result, item=item)
            elif waiter.__class__ is Deferred:
                waiter.callback(result)
            else:
                _tell(waiter, item if result is None else result)
        self._next()

    def _failed(self, failure: Failure, items: list[Any], waiters: list[Any]) -> None:
        self._unweigh(items)
        silent = 0
        for waiter in waiters:
            if waiter.__class__ is Deferred:
                waiter.errback(failure)
            else:
                silent += 1
        if silent:
            log.failure("could not store {n} messages; they are not relayed", failure, n=silent)
        self._next()

    def _next(self) -> None:
        self.latency.observe(self._reactor.seconds() - self._sent_at)
        self.sizes.observe(self.in_flight)
        self.in_flight = 0
        if self._items:
            # They accumulated while the last run was in flight: go now.
            self._run()
            return
        self._busy = False
        idle, self._idle = self._idle, []
        for d in idle:
            d.callback(None)

    def idle(self) -> Deferred[None]:
        """Fires once everything submitted so far has finished."""
        d: Deferred[None] = Deferred()
        if self._busy:
            self._idle.append(d)
        else:
            d.callback(None)
        return d


def _tell(waiter: Callable[[Any], object], item: Any) -> None:
    """Call a plain waiter with what was committed.

    A waiter that raises (a bug in some recipient's delivery) is logged, and
    the rest of its batch is still told and the next batch still committed:
    otherwise one bad delivery would leave the group busy for ever, every
    later message queued behind it and the store unable to close.
    """
    try:
        waiter(item)
    except Exception:
        log.failure("delivering a committed {item!r} failed", item=item)


class ThreadedStore:
    """The server's storage: implements :class:`chatserv.hub.MessageLog` and
    the history and account queries, without ever blocking the reactor."""

    #: History outlives the hub's windows: an evicted window is read back.
    keeps_history = True

    def __init__(self, reactor: Any, writer: Engine, reader: Engine | None = None) -> None:
        self.reactor = reactor
        self.writer = writer
        self.reader = reader if reader is not None else writer
        self.url = writer.url
        self._writer_thread = Worker(reactor, "chatserv-db-writer")
        self._reader_thread = Worker(reactor, "chatserv-db-reader")
        self._commits = _Group(reactor, self._writer_thread, self._insert, self._start, _text_size)
        self.max_backlog = MAX_BACKLOG
        self._lookups = _Group(reactor, self._reader_thread, self._registered, self._start)
        self._closed = False
        self._started = False
        self._pid = os.getpid()

    def _start(self) -> None:
        """Start the threads, at first use: by then the reactor runs.

        twistd opens the store before it daemonizes, and neither threads nor
        database connections survive that fork: threads started earlier
        would not exist in the server process, and the connections are
        opened again there.
        """
        if self._started and os.getpid() == self._pid:
            return
        self._started = True
        if os.getpid() != self._pid:
            self._pid = os.getpid()
            for engine in {id(self.writer): self.writer, id(self.reader): self.reader}.values():
                engine.reconnect()
        self._writer_thread.start()
        self._reader_thread.start()

    # -- start-up (blocking; before the server serves) -------------------------

    def next_id(self) -> int:
        """The first message id this server may hand out."""
        return self.reader.max_id() + 1

    def recent_now(self, room: str, limit: int) -> list[ChatMessage]:
        """The *limit* newest messages of *room*, read synchronously at start-up."""
        return self.reader.room_page(room, None, limit)

    # -- messages ---------------------------------------------------------------

    def append(self, message: ChatMessage) -> Deferred[ChatMessage | None]:
        """Commit *message* with whatever else is queued; fire once it is
        durable (``message.pos`` set) with None, or with the original message
        when *message* repeats a stored ``cid`` of its sender (then nothing
        was stored)."""
        if self._closed:
            return fail(StorageClosed("the message store is closed"))
        return self._commits.submit(message)

    def append_then(self, message: ChatMessage, deliver: Callable[[ChatMessage], None]) -> None:
        """Like :meth:`append`, but call ``deliver(message)`` once it is
        durable, without a Deferred: the hub's hot path. A repeated ``cid``
        calls ``deliver(original)`` instead (another object: the caller
        tells them apart). A message that cannot be stored is logged and
        never delivered."""
        if self._closed:
            log.error("store closed: message {id} not stored, not relayed", id=message.id)
            return
        self._commits.submit_then(message, deliver)

    def correct_then(self, correction: Correction, deliver: Callable[[Correction], None]) -> None:
        """Record *correction* on the writer thread, then call
        ``deliver(correction)``; a correction that cannot be stored is logged
        and never delivered."""
        if self._closed:
            log.error("store closed: correction of {id} not stored, not relayed", id=correction.id)
            return

        def failed(failure: Failure) -> None:
            log.failure("could not store a correction of {id}; it is not relayed", failure, id=correction.id)

        # The message corrected is stored already (it was read back, or
        # delivered, which follows its commit), so no ordering with the
        # batches queued in _commits is needed; the one writer thread keeps
        # corrections in the order they were made.
        def recorded(pos: int) -> None:
            correction.pos = pos  # before anyone is handed it
            deliver(correction)

        self._write(self.writer.correct, correction).addCallbacks(recorded, failed)

    def message(self, message_id: int) -> Deferred[ChatMessage | None]:
        """Message *message_id* as it reads now (edits applied), or None."""
        return self._read(self.reader.message, message_id)

    def message_by_cid(self, sender_key: str, cid: str) -> Deferred[ChatMessage | None]:
        """The stored message its sender sent as *cid*, or None."""
        return self._read(self.reader.message_by_cid, sender_key, cid)

    def congested(self) -> bool:
        return self._commits.weight > self.max_backlog

    def _insert(self, messages: list[ChatMessage]) -> Sequence[ChatMessage | Failure | None] | None:
        """Writer thread: one transaction for the batch (None for each
        message stored, the original for a repeated ``cid``). If it fails,
        store the messages one by one, so that one message the database
        refuses does not take the rest of its batch down with it."""
        try:
            return self.writer.insert_messages(messages)
        except Exception:
            if len(messages) == 1:
                raise
        results: list[ChatMessage | Failure | None] = []
        for message in messages:
            try:
                found = self.writer.insert_messages([message])
                results.append(None if found is None else found[0])
            except Exception:
                results.append(Failure())
        return results

    @property
    def stored(self) -> int:
        """Messages committed since the store opened."""
        return self._commits.done

    @property
    def backlog(self) -> int:
        """Messages accepted and not yet committed (queued, or in the transaction in flight)."""
        return len(self._commits._items) + self._commits.in_flight

    @property
    def backlog_bytes(self) -> int:
        """What those messages weigh against ``max_backlog`` (see ``congested``)."""
        return self._commits.weight

    @property
    def commit_stats(self) -> tuple[Histogram, Histogram]:
        """Commit latency (seconds) and batch size (messages), per transaction."""
        return self._commits.latency, self._commits.sizes

    @property
    def commits(self) -> int:
        """Transactions (batches) committed since the store opened."""
        return self._commits.runs

    def room_page(self, room: str, before: int | None, limit: int) -> Deferred[list[ChatMessage]]:
        return self._read(self.reader.room_page, room, before, limit)

    def private_page(
        self, a: str, b: str, before: int | None, limit: int, since: float = 0.0
    ) -> Deferred[list[ChatMessage]]:
        return self._read(self.reader.private_page, a, b, before, limit, since)

    def rooms(self) -> Deferred[list[RoomInfo]]:
        return self._read(self.reader.rooms)

    def ping(self) -> Deferred[None]:
        """Fires once the database has answered a cheap query in the reader
        thread (``--health``); fails with the database's error."""
        return self._read(self.reader.ping)

    # -- the stream (catch-up) ----------------------------------------------------

    def room_after(self, room: str, after: int, limit: int) -> Deferred[list[ChatMessage]]:
        """Up to *limit* messages of *room* with positions above *after*, oldest first."""
        return self._read(self.reader.room_after, room, after, limit)

    def private_after(
        self, a: str, b: str, after: int, limit: int, since: float = 0.0
    ) -> Deferred[list[ChatMessage]]:
        """The same for the private conversation between *a* and *b*, from *since* on."""
        return self._read(self.reader.private_after, a, b, after, limit, since)

    def room_events_after(
        self, room: str, after: int, limit: int
    ) -> Deferred[list[ChatMessage | Correction]]:
        """A client's catch-up of *room* (see :meth:`Engine.room_events_after`)."""
        return self._read(self.reader.room_events_after, room, after, limit)

    def private_events_after(
        self, a: str, b: str, after: int, limit: int, since: float = 0.0
    ) -> Deferred[list[ChatMessage | Correction]]:
        """The same for the private conversation between *a* and *b*, from *since* on."""
        return self._read(self.reader.private_events_after, a, b, after, limit, since)

    def events_after(self, pos: int, limit: int) -> Deferred[list[ChatMessage | Correction]]:
        """Up to *limit* committed events with positions above *pos*, in
        position order, across every room and conversation: messages as they
        read now, and corrections (see :meth:`Engine.events_after`)."""
        return self._read(self.reader.events_after, pos, limit)

    def current_position(self) -> Deferred[int]:
        """The last position committed (0 when none has been)."""
        return self._read(self.reader.position)

    def position_now(self) -> int:
        """The same, read synchronously: start-up only, before the server listens."""
        return self.reader.position()

    # -- accounts ---------------------------------------------------------------

    def account(self, name: str) -> Deferred[Account | None]:
        return self._read(self.reader.account, name)

    def is_registered(self, name: str) -> Deferred[bool]:
        """Whether *name* has an account. Look-ups made while one is in flight
        are answered by one query, so a login storm costs a few queries."""
        if self._closed:
            return fail(StorageClosed("the store is closed"))
        return self._lookups.submit(name_key(name))

    def _registered(self, keys: list[str]) -> list[bool]:
        found = self.reader.registered(sorted(set(keys)))
        return [key in found for key in keys]

    def account_keys(self) -> Deferred[tuple[set[str], tuple[int, float]]]:
        return self._read(self.reader.account_keys)

    def accounts_fingerprint(self) -> Deferred[tuple[int, float]]:
        return self._read(self.reader.accounts_fingerprint)

    def create_account(self, name: str, password_hash: str, created: float) -> Deferred[bool]:
        return self._write(self.writer.create_account, name, password_hash, created)

    def set_password(self, name: str, password_hash: str) -> Deferred[bool]:
        return self._write(self.writer.set_password, name, password_hash)

    def delete_account(self, name: str) -> Deferred[bool]:
        return self._write(self.writer.delete_account, name)

    # -- plumbing -----------------------------------------------------------------

    def _read(self, fn: Callable[..., T], *args: Any) -> Deferred[T]:
        if self._closed:
            return fail(StorageClosed("the store is closed"))
        self._start()
        return self._reader_thread.defer(fn, *args)

    def write(self, fn: Callable[..., T], *args: Any) -> Deferred[T]:
        """Run ``fn(*args)`` (a writer engine method) in the writer thread,
        between commits (retention uses it)."""
        return self._write(fn, *args)

    def _write(self, fn: Callable[..., T], *args: Any) -> Deferred[T]:
        if self._closed:
            return fail(StorageClosed("the store is closed"))
        self._start()
        return self._writer_thread.defer(fn, *args)

    async def close(self) -> None:
        """Commit what is queued, then close the connections and stop the threads.

        The threads are daemons: a process that exits without this loses
        only the batch being committed, which the database rolls back and
        whose senders were not told it was stored.
        """
        if self._closed:
            return
        self._closed = True
        await self._commits.idle()
        await self._lookups.idle()
        self._start()  # a store never used still has connections to close
        # Each connection is closed by its own thread, after the work already
        # queued there; the threads are then idle and stop without waiting.
        if self.reader is not self.writer:
            await self._reader_thread.defer(self.reader.close)
        await self._writer_thread.defer(self.writer.close)
        self._writer_thread.stop()
        self._reader_thread.stop()
        log.info(
            "storage {url} closed after {stored} messages in {commits} commits",
            url=redact(self.url),
            stored=self.stored,
            commits=self.commits,
        )


def _text_size(message: ChatMessage) -> int:
    return len(message.text)


def open_store(url: str, reactor: Any) -> ThreadedStore:
    """Connect to *url*, migrate its schema, and return the server's store.

    Blocking: called once at start-up, before the server listens. Raises
    :class:`StorageError` with a message for the operator when the database
    cannot be used (unreachable, not ours, or written by a newer chatserv).
    """
    writer = _open_migrated(url)
    if isinstance(writer, SQLiteEngine) and writer.memory:
        reader: Engine = writer  # a second :memory: connection would be another database
    else:
        try:
            reader = open_engine(url)
        except BaseException:
            writer.close()
            raise
    log.info("storage: {url}, schema version {version}", url=redact(url), version=writer.version())
    return ThreadedStore(reactor, writer, reader)


def _open_migrated(url: str) -> Engine:
    engine = open_engine(url)
    try:
        engine.migrate()
    except StorageError:
        engine.close()
        raise
    except Exception as e:
        engine.close()
        kind = "PostgreSQL" if is_postgres(url) else "SQLite"
        raise StorageError(f"cannot use the {kind} database {redact(url)}: {e}") from e
    return engine


class StorageService(Service):
    """Closes the store when the application stops, after queued commits land."""

    name = "storage"  # type: ignore[assignment]

    def __init__(self, store: ThreadedStore) -> None:
        self.store = store

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return Deferred.fromCoroutine(self.store.close())
