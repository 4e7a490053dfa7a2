"""What the bridge must remember across restarts, in a SQLite file of its own.

* the last Telegram update handled, so nothing is relayed twice;
* which chat messages each Telegram message carries, so replies and edits
  find their original;
* the chat lines still waiting for Telegram, so a restart loses none.

The server's own storage may be PostgreSQL, somewhere else, or absent; the
bridge's bookkeeping is small and private, so it lives beside it in its own
file. All of it is also held in memory: lookups are synchronous, and disk
writes are gathered and done by one worker thread, never on the reactor
thread.
"""

from __future__ import annotations

import sqlite3
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

from ..logs import Logger
from .outbox import Entry

log = Logger()

SCHEMA_VERSION = 2
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS msgmap (
    n INTEGER NOT NULL,
    tg_chat INTEGER NOT NULL,
    tg_msg INTEGER NOT NULL,
    chat_id INTEGER,
    sender TEXT NOT NULL,
    excerpt TEXT NOT NULL,
    run TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS msgmap_n ON msgmap (n);
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY,
    chat_id INTEGER,
    sender TEXT,
    text TEXT NOT NULL
);
"""
#: Version 2: several groups share the queue table (tg_chat; NULL rows from
#: version 1 belong to the first configured group), and a queued reply
#: remembers the Telegram message it answers.
_UPGRADE_2 = (
    "ALTER TABLE outbox ADD COLUMN tg_chat INTEGER",
    "ALTER TABLE outbox ADD COLUMN reply_tg INTEGER",
)


class StateError(RuntimeError):
    """The state file cannot be used (unreadable, or written by a newer version)."""


@dataclass(frozen=True, slots=True)
class Ref:
    """A chat message carried by a Telegram message."""

    chat_id: int | None
    sender: str
    excerpt: str
    #: The bridge run that recorded it; chat ids from another run are only
    #: meaningful when the server keeps its ids across restarts (storage).
    run: str


@dataclass(slots=True)
class Loaded:
    offset: int
    max_chat_id: int
    refs: list[tuple[int, int, int, Ref]]  # (n, tg_chat, tg_msg, ref)
    #: (telegram chat or None for version-1 rows, entry), oldest first
    outbox: list[tuple[int | None, Entry]]


def _open(path: str, map_size: int) -> tuple[sqlite3.Connection, Loaded]:
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        conn.close()
        raise StateError(f"{path} was written by a newer chatserv (schema {version} > {SCHEMA_VERSION})")
    if path != ":memory:":
        conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.executescript(_SCHEMA)
    if version < 2:
        columns = {row[1] for row in conn.execute("PRAGMA table_info(outbox)")}
        for statement in _UPGRADE_2:
            if statement.split()[5] not in columns:
                conn.execute(statement)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    row = conn.execute("SELECT value FROM meta WHERE key = 'offset'").fetchone()
    offset = int(row[0]) if row else 0
    row = conn.execute("SELECT max(chat_id) FROM msgmap").fetchone()
    max_chat_id = int(row[0]) if row and row[0] is not None else 0
    refs = [
        (n, tg_chat, tg_msg, Ref(chat_id, sender, excerpt, run))
        for n, tg_chat, tg_msg, chat_id, sender, excerpt, run in conn.execute(
            "SELECT n, tg_chat, tg_msg, chat_id, sender, excerpt, run FROM msgmap "
            "WHERE n > (SELECT coalesce(max(n), 0) FROM msgmap) - ? ORDER BY n, rowid",
            (map_size,),
        )
    ]
    outbox = []
    for seq, chat_id, sender, text, tg_chat, reply_tg in conn.execute(
        "SELECT seq, chat_id, sender, text, tg_chat, reply_tg FROM outbox ORDER BY seq"
    ):
        outbox.append((tg_chat, Entry(seq, chat_id, sender, text, reply_tg)))
    return conn, Loaded(offset, max_chat_id, refs, outbox)


class BridgeState:
    """The bridge's memory: in RAM for lookups, written behind to SQLite."""

    def __init__(self, path: str, reactor: Any, map_size: int = 10_000, run: str = "") -> None:
        self.path = path
        self.reactor = reactor
        self.map_size = map_size
        self.run = run
        self.offset = 0
        #: the highest chat message id in the map: tells whether the server
        #: numbers its messages on from there after a restart
        self.max_chat_id = 0
        self._map: OrderedDict[tuple[int, int], list[Ref]] = OrderedDict()
        #: chat message id -> the Telegram messages that carry it, oldest first
        self._by_chat: dict[int, list[tuple[int, int]]] = {}
        self._n = 0
        self._conn: sqlite3.Connection | None = None
        self._pool = ThreadPool(minthreads=1, maxthreads=1, name="chatserv-telegram-state")
        self._ops: list[tuple[str, tuple[Any, ...]]] = []
        self._meta: dict[str, str] = {}
        self._flushing: Deferred[None] | None = None
        self._flush_call: Any = None
        self._closed = False

    def _in_thread(self, f: Callable[..., Any], *args: Any) -> Deferred[Any]:
        return deferToThreadPool(self.reactor, self._pool, f, *args)

    async def open(self) -> list[tuple[int | None, Entry]]:
        """Load the file (creating it); return the queued lines it held."""
        self._pool.start()
        try:
            self._conn, loaded = await self._in_thread(_open, self.path, self.map_size)
        except sqlite3.Error as e:
            self._pool.stop()
            raise StateError(f"cannot use the bridge state file {self.path}: {e}") from e
        except BaseException:
            self._pool.stop()
            raise
        self.offset = loaded.offset
        self.max_chat_id = loaded.max_chat_id
        for n, tg_chat, tg_msg, ref in loaded.refs:
            self._n = max(self._n, n)
            self._map.setdefault((tg_chat, tg_msg), []).append(ref)
            self._index(tg_chat, tg_msg, ref)
        return loaded.outbox

    # -- update offsets ---------------------------------------------------

    def set_offset(self, update_id: int, force: bool = False) -> None:
        if update_id > self.offset or force:
            self.offset = update_id
            self._meta["offset"] = str(update_id)
            self._schedule()

    # -- the Telegram <-> chat id map --------------------------------------

    def map_add(self, tg_chat: int, tg_msg: int, refs: list[Ref]) -> None:
        if not refs:
            return
        self._n += 1
        self.max_chat_id = max([self.max_chat_id] + [r.chat_id for r in refs if r.chat_id is not None])
        key = (tg_chat, tg_msg)
        self._map.setdefault(key, []).extend(refs)
        self._map.move_to_end(key)
        for ref in refs:
            self._index(tg_chat, tg_msg, ref)
        while len(self._map) > self.map_size:
            old, old_refs = self._map.popitem(last=False)
            for ref in old_refs:
                where = self._by_chat.get(ref.chat_id) if ref.chat_id is not None else None
                if where is not None and old in where:
                    where.remove(old)
                    if not where:
                        del self._by_chat[ref.chat_id]  # type: ignore[arg-type]
        for ref in refs:
            self._ops.append(
                (
                    "INSERT INTO msgmap (n, tg_chat, tg_msg, chat_id, sender, excerpt, run)"
                    " VALUES (?,?,?,?,?,?,?)",
                    (self._n, tg_chat, tg_msg, ref.chat_id, ref.sender, ref.excerpt, ref.run),
                )
            )
        if self._n % 1000 == 0:
            self._ops.append(("DELETE FROM msgmap WHERE n <= ?", (self._n - self.map_size,)))
        self._schedule()

    def map_get(self, tg_chat: int, tg_msg: int) -> list[Ref]:
        return self._map.get((tg_chat, tg_msg), [])

    def carriers(self, chat_id: int, tg_chat: int) -> list[tuple[int, list[Ref]]]:
        """The Telegram messages of *tg_chat* that carry chat message
        *chat_id*, oldest first, each with every chat message it carries."""
        return [
            (msg, self._map[(chat, msg)])
            for chat, msg in self._by_chat.get(chat_id, ())
            if chat == tg_chat and (chat, msg) in self._map
        ]

    def _index(self, tg_chat: int, tg_msg: int, ref: Ref) -> None:
        if ref.chat_id is None:
            return
        where = self._by_chat.setdefault(ref.chat_id, [])
        if (tg_chat, tg_msg) not in where:
            where.append((tg_chat, tg_msg))

    # -- the outbound queue -------------------------------------------------

    def queue_add(self, entries: list[Entry], tg_chat: int | None = None) -> None:
        for e in entries:
            self._ops.append(
                (
                    "INSERT OR REPLACE INTO outbox (seq, chat_id, sender, text, tg_chat, reply_tg)"
                    " VALUES (?,?,?,?,?,?)",
                    (e.seq, e.chat_id, e.sender, e.text, tg_chat, e.reply_tg),
                )
            )
        if entries:
            self._schedule()

    def queue_remove(self, entries: list[Entry]) -> None:
        if not entries:
            return
        # Groups share the table and its seq numbers, so a run from the head
        # of one group's queue is not a range of seqs: delete by seq.
        for e in entries:
            self._ops.append(("DELETE FROM outbox WHERE seq = ?", (e.seq,)))
        self._schedule()

    # -- writing ------------------------------------------------------------

    def _schedule(self) -> None:
        # Everything changed within one reactor turn goes to disk in one
        # transaction; while a write is running, the next one gathers.
        if self._flush_call is None and self._flushing is None and self._conn is not None:
            self._flush_call = self.reactor.callLater(0, self._flush)

    def _flush(self) -> None:
        self._flush_call = None
        if self._conn is None or (not self._ops and not self._meta):
            return
        ops, self._ops = self._ops, []
        meta, self._meta = self._meta, {}
        self._flushing = self._in_thread(_write, self._conn, ops, meta)
        self._flushing.addErrback(lambda f: log.failure("writing the Telegram bridge state failed", f))
        self._flushing.addBoth(self._flushed)

    def _flushed(self, _: object) -> None:
        self._flushing = None
        if self._ops or self._meta:
            self._schedule()

    async def close(self) -> None:
        """Write what is pending and release the file and the thread."""
        if self._closed or self._conn is None:
            return
        self._closed = True
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._flush_call = None
        while self._flushing is not None:
            await self._flushing
        if self._ops or self._meta:
            self._flush()
            while self._flushing is not None:
                await self._flushing
        conn, self._conn = self._conn, None
        await self._in_thread(conn.close)
        self._pool.stop()


def _write(conn: sqlite3.Connection, ops: list[tuple[str, tuple[Any, ...]]], meta: dict[str, str]) -> None:
    with conn:
        conn.execute("BEGIN")
        for sql, params in ops:
            conn.execute(sql, params)
        for key, value in meta.items():
            conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))
