"""Cluster-unique message ids: blocks reserved from a PostgreSQL sequence.

Every node takes ids from a block of :data:`BLOCK` ids of its own; the block
numbers come from the sequence ``chatserv_id_blocks`` in the chat's
database, so two nodes never get the same block, across restarts too. Why
the database and not Redis: ids must keep coming while Redis is away (a
node goes on serving its clients then), and the database is needed for every
commit anyway. The next block is reserved in a thread when half of the
current one is used; only a node that burns through half a block within one
query's time reserves on the reactor thread (a sub-millisecond query).

Ids are unique, and grow on each node, but across nodes their order is not
commit order: the stream position is (``ChatMessage.pos``).
"""

from __future__ import annotations

import os
import threading
from typing import Any

from twisted.internet.threads import deferToThreadPool

from ..events import MessageIds
from ..logs import Logger
from ..storage.engine import redact
from ..storage.schema import StorageError

log = Logger()

BLOCK = 1000
SEQUENCE = "chatserv_id_blocks"
#: Serialises the sequence's creation and its first move above the stored ids.
_INIT_LOCK = 0x63686964


class BlockIds(MessageIds):
    """:class:`chatserv.events.MessageIds` over reserved blocks."""

    def __init__(self, dsn: str, reactor: Any, block: int = BLOCK) -> None:
        import psycopg

        self._psycopg = psycopg
        self._dsn = dsn
        self._reactor = reactor
        self._block = block
        self._lock = threading.Lock()
        self._pid = os.getpid()
        try:
            self._conn = psycopg.connect(dsn, autocommit=True)
            self._prepare()
            start = self._reserve()
        except psycopg.Error as e:
            raise StorageError(f"cannot reserve message ids in {redact(dsn)}: {e}") from e
        self._next, self._end = start, start + block
        self._spare: int | None = None
        self._reserving = False

    def _prepare(self) -> None:
        """Create the sequence, and move it above every stored id (a
        database written by a single node, or by an older chatserv)."""
        with self._conn.transaction():
            self._conn.execute("SELECT pg_advisory_xact_lock(%s)", (_INIT_LOCK,))
            self._conn.execute(f"CREATE SEQUENCE IF NOT EXISTS {SEQUENCE}")
            top = self._one("SELECT COALESCE(MAX(id), 0) FROM messages")
            last = self._one(f"SELECT last_value FROM {SEQUENCE}")
            floor = top // self._block + 1
            if last < floor:
                self._conn.execute("SELECT setval(%s, %s, false)", (SEQUENCE, floor))

    def _reserve(self) -> int:
        """The first id of a new block (blocking)."""
        with self._lock:
            if os.getpid() != self._pid:  # twistd forked: the socket is the parent's
                self._pid = os.getpid()
                self._conn = self._psycopg.connect(self._dsn, autocommit=True)
            elif self._conn.closed or self._conn.broken:
                self._conn = self._psycopg.connect(self._dsn, autocommit=True)
            number = self._one("SELECT nextval(%s)", (SEQUENCE,))
        return number * self._block

    def _one(self, sql: str, params: tuple[Any, ...] = ()) -> int:
        row = self._conn.execute(sql, params).fetchone()
        assert row is not None
        return int(row[0])

    def take(self) -> int:
        message_id = self._next
        if message_id >= self._end:
            message_id = self._switch()
        self._next = message_id + 1
        if not self._reserving and self._spare is None and self._end - self._next < self._block // 2:
            self._reserve_spare()
        return message_id

    def _switch(self) -> int:
        if self._spare is None:
            log.warn("message id block used up before the next one arrived; reserving in place")
            self._spare = self._reserve()
        start, self._spare = self._spare, None
        self._end = start + self._block
        return start

    def _reserve_spare(self) -> None:
        self._reserving = True

        def got(start: int) -> None:
            self._reserving = False
            if self._spare is None:
                self._spare = start

        def failed(failure: Any) -> None:
            self._reserving = False
            log.failure("could not reserve the next message id block", failure)

        pool = self._reactor.getThreadPool()
        deferToThreadPool(self._reactor, pool, self._reserve).addCallbacks(got, failed)

    def seen(self, message_id: int) -> None:
        pass  # the sequence hands out every block once: nothing read can repeat

    @property
    def upcoming(self) -> int:
        return self._next if self._next < self._end else (self._spare or self._end)

    def close(self) -> None:
        with self._lock:
            self._conn.close()
