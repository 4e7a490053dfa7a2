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

import json
import sqlite3
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

from ..logs import Logger
from .outbox import Entry

log = Logger()

SCHEMA_VERSION = 2
#: The meta key prefix of a group's mark (see :attr:`BridgeState.marks`).
MARK = "posmark:"
#: Seconds between attempts to write the state after a failure.
WRITE_RETRY = 1.0
#: Seconds a stop waits for the last write.
CLOSE_TIMEOUT = 5.0
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
    #: every saved key (``offset``; ``posmark:{tg_chat}``, the stream
    #: position of the last chat line queued for that group)
    meta: dict[str, str] = field(default_factory=dict)


#: One change for a backend to write: ``(kind, params)`` with kind one of
#: ``map`` (n, tg_chat, tg_msg, chat_id, sender, excerpt, run), ``map_trim``
#: (n,), ``queue_put`` (seq, chat_id, sender, text, tg_chat, reply_tg) and
#: ``queue_del`` (seq,).
Op = tuple[str, tuple[Any, ...]]


class Fenced(StateError):
    """The shared database holds a newer leader's term: this node's writes
    are refused (see :mod:`.lease`). *term* is the one it holds."""

    def __init__(self, term: int) -> None:
        super().__init__(f"a newer Telegram bridge leader (term {term}) owns the shared state")
        self.term = term


class StateBackend(Protocol):
    """Where the state is kept. Blocking calls, made from the state's one
    worker thread only."""

    #: Whether writes are fenced by a leader term (a shared database).
    fenced: bool

    def open(self, map_size: int) -> Loaded:
        """Create or upgrade the tables and load what they hold."""

    def write(self, ops: list[Op], meta: dict[str, str]) -> None:
        """Apply *ops* and *meta* in one transaction (or raise :class:`Fenced`)."""

    def check(self) -> None:
        """Raise :class:`Fenced` unless this writer's term is still the newest."""

    def close(self) -> None: ...


class SQLiteBackend:
    """The state in a SQLite file of its own (one node)."""

    fenced = False

    def __init__(self, path: str) -> None:
        self.path = path
        self.conn: sqlite3.Connection | None = None

    def open(self, map_size: int) -> Loaded:
        path = self.path
        try:
            conn = self.conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                conn.close()
                raise StateError(
                    f"{path} was written by a newer chatserv (schema {version} > {SCHEMA_VERSION})"
                )
            return self._load(conn, version, map_size)
        except sqlite3.Error as e:
            raise StateError(f"cannot use the bridge state file {path}: {e}") from e

    def _load(self, conn: sqlite3.Connection, version: int, map_size: int) -> Loaded:
        if self.path != ":memory:":
            conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.executescript(_SCHEMA)
        if version < 2:
            columns = {row[1] for row in conn.execute("PRAGMA table_info(outbox)")}
            for statement in _UPGRADE_2:
                if statement.split()[5] not in columns:
                    conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
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
        return Loaded(int(meta.get("offset", 0)), max_chat_id, refs, outbox, meta)

    _SQL = {
        "map": "INSERT INTO msgmap (n, tg_chat, tg_msg, chat_id, sender, excerpt, run)"
        " VALUES (?,?,?,?,?,?,?)",
        "map_trim": "DELETE FROM msgmap WHERE n <= ?",
        "queue_put": "INSERT OR REPLACE INTO outbox (seq, chat_id, sender, text, tg_chat, reply_tg)"
        " VALUES (?,?,?,?,?,?)",
        "queue_del": "DELETE FROM outbox WHERE seq = ?",
    }

    def write(self, ops: list[Op], meta: dict[str, str]) -> None:
        conn = self.conn
        assert conn is not None
        with conn:
            conn.execute("BEGIN")
            for kind, params in ops:
                conn.execute(self._SQL[kind], params)
            for key, value in meta.items():
                conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def check(self) -> None:
        pass

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


class BridgeState:
    """The bridge's memory: in RAM for lookups, written behind to a
    :class:`StateBackend` (its own SQLite file, or the shared PostgreSQL
    database of a cluster, :mod:`.pgstate`)."""

    def __init__(
        self,
        path: str,
        reactor: Any,
        map_size: int = 10_000,
        run: str = "",
        backend: StateBackend | None = None,
        on_fenced: Callable[[Fenced], None] | None = None,
    ) -> None:
        self.path = path
        self.reactor = reactor
        self.map_size = map_size
        self.run = run
        self.backend: StateBackend = backend if backend is not None else SQLiteBackend(path)
        #: Called once when the shared database refuses a write (a newer leader).
        self.on_fenced = on_fenced
        self.fenced: Fenced | None = None
        self.offset = 0
        #: the highest chat message id in the map: tells whether the server
        #: numbers its messages on from there after a restart
        self.max_chat_id = 0
        #: Telegram chat -> the stream position (ChatMessage.pos, the commit
        #: order across every node) of the last chat line queued for it.
        #: Clustered, a new leader's catch-up from the chat history starts
        #: there: message ids are handed out in blocks per node, so only
        #: positions follow the order in which the chat said things.
        self.marks: dict[int, int] = {}
        self._map: OrderedDict[tuple[int, int], list[Ref]] = OrderedDict()
        #: chat message id -> the Telegram messages that carry it, oldest first
        self._by_chat: dict[int, list[tuple[int, int]]] = {}
        self._n = 0
        self._open = False
        self._pool = ThreadPool(minthreads=1, maxthreads=1, name="chatserv-telegram-state")
        self._ops: list[Op] = []
        self._meta: dict[str, str] = {}
        self._flushing: Deferred[None] | None = None
        self._flush_call: Any = None
        self._idle: list[Deferred[None]] = []
        self._closed = False
        #: After a failed write the changes are kept and tried again from then on.
        self._retry_at = 0.0
        self._failing = False

    def _in_thread(self, f: Callable[..., Any], *args: Any) -> Deferred[Any]:
        return deferToThreadPool(self.reactor, self._pool, f, *args)

    async def open(self) -> list[tuple[int | None, Entry]]:
        """Load the state (creating its tables); return the queued lines it held."""
        self._pool.start()
        try:
            loaded = await self._in_thread(self.backend.open, self.map_size)
        except BaseException:
            self._pool.stop()
            raise
        self._open = True
        self.offset = loaded.offset
        self.max_chat_id = loaded.max_chat_id
        for key, value in loaded.meta.items():
            # (``mark:`` keys of earlier versions held message ids: ignored.)
            if key.startswith(MARK):
                self.marks[int(key[len(MARK):])] = int(value)
        if loaded.meta.get("pending"):
            pending = json.loads(loaded.meta["pending"])
            unfinished = [u for u in pending.get("updates", ()) if u > self.offset]
            if unfinished:
                # Telegram offers them again; each is relayed with its cid,
                # so those the chat holds already are not stored twice.
                log.info(
                    "the last run stopped relaying updates {first}..{last}; the chat keeps each once",
                    first=unfinished[0],
                    last=unfinished[-1],
                )
        for n, tg_chat, tg_msg, ref in loaded.refs:
            self._n = max(self._n, n)
            self._map.setdefault((tg_chat, tg_msg), []).append(ref)
            self._index(tg_chat, tg_msg, ref)
        return loaded.outbox

    # -- update offsets ---------------------------------------------------

    def set_offset(self, update_id: int, force: bool = False, write: bool = True) -> None:
        """Update *update_id* is handled; with *write* false it is written
        only with :meth:`end_batch`."""
        if update_id > self.offset or force:
            self.offset = update_id
            if write:
                self._meta["offset"] = str(update_id)
                self._schedule()

    def set_mark(self, tg_chat: int, pos: int) -> None:
        """The chat line at stream position *pos* is queued for *tg_chat*
        (or the bridge starts there): the mark only moves forward."""
        if pos > self.marks.get(tg_chat, 0):
            self.marks[tg_chat] = pos
            self._meta[f"{MARK}{tg_chat}"] = str(pos)
            self._schedule()

    def begin_batch(self, update_ids: list[int]) -> None:
        """Updates *update_ids* are about to be relayed. Written (by the next
        flush, a fenced write: a deposed leader relays nothing) before they
        are, and cleared with their offset, so a leader that finds it set
        knows the last one stopped between the chat's commit and the
        offset's: nothing to do but say so, since every relayed message
        carries a ``cid`` of its Telegram message and the chat stores a
        repeated one only once."""
        self._meta["pending"] = json.dumps({"updates": update_ids})
        self._schedule()

    def end_batch(self) -> None:
        """The batch is relayed and committed: write the offset it reached
        and clear the mark of :meth:`begin_batch`, in one transaction."""
        self._meta["offset"] = str(self.offset)
        self._meta["pending"] = ""
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
            row = (self._n, tg_chat, tg_msg, ref.chat_id, ref.sender, ref.excerpt, ref.run)
            self._ops.append(("map", row))
        if self._n % 1000 == 0:
            self._ops.append(("map_trim", (self._n - self.map_size,)))
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

    def sent_ids(self) -> list[int]:
        """The chat message ids the map holds (relayed either way)."""
        return list(self._by_chat)

    def _index(self, tg_chat: int, tg_msg: int, ref: Ref) -> None:
        if ref.chat_id is None:
            return
        where = self._by_chat.setdefault(ref.chat_id, [])
        if (tg_chat, tg_msg) not in where:
            where.append((tg_chat, tg_msg))

    # -- the outbound queue -------------------------------------------------

    def queue_add(self, entries: list[Entry], tg_chat: int | None = None) -> None:
        for e in entries:
            self._ops.append(("queue_put", (e.seq, e.chat_id, e.sender, e.text, tg_chat, e.reply_tg)))
        if entries:
            self._schedule()

    def queue_remove(self, entries: list[Entry]) -> None:
        if not entries:
            return
        # Groups share the table and its seq numbers, so a run from the head
        # of one group's queue is not a range of seqs: delete by seq.
        for e in entries:
            self._ops.append(("queue_del", (e.seq,)))
        self._schedule()

    # -- fencing (a shared database) ------------------------------------------

    async def check_term(self) -> None:
        """Raise :class:`Fenced` unless this node's term still owns the
        state: asked before relaying a batch of updates and before each
        send, so a deposed leader does neither. Free without fencing."""
        if self.fenced is not None:
            raise self.fenced
        if not self.backend.fenced or not self._open:
            return
        try:
            await self._in_thread(self.backend.check)
        except Fenced as e:
            self._fence(e)
            raise

    def _fence(self, error: Fenced) -> None:
        if self.fenced is None:
            self.fenced = error
            self._ops.clear()
            self._meta.clear()
            log.warn("{error}: this node's bridge state writes stop", error=str(error))
            if self.on_fenced is not None:
                self.on_fenced(error)

    # -- writing ------------------------------------------------------------

    def _schedule(self) -> None:
        # Everything changed within one reactor turn goes to disk in one
        # transaction; while a write is running, the next one gathers.
        if self._flush_call is None and self._flushing is None and self._open and self.fenced is None:
            delay = max(0.0, self._retry_at - self.reactor.seconds())
            self._flush_call = self.reactor.callLater(delay, self._flush)

    def _flush(self) -> None:
        self._flush_call = None
        if not self._open or (not self._ops and not self._meta) or self.fenced is not None:
            self._wake_idle()
            return
        ops, self._ops = self._ops, []
        meta, self._meta = self._meta, {}
        d = self._flushing = self._in_thread(self.backend.write, ops, meta)
        d.addCallbacks(self._written, self._write_failed, errbackArgs=(ops, meta))
        d.addBoth(self._flushed)

    def _written(self, _: object) -> None:
        if self._failing:
            self._failing = False
            log.info("writing the Telegram bridge state works again")

    def _write_failed(self, failure: Any, ops: list[Op], meta: dict[str, str]) -> None:
        if failure.check(Fenced):
            self._fence(failure.value)
            return
        if not self._failing:
            self._failing = True
            log.failure("writing the Telegram bridge state failed; retrying every second", failure)
        # The transaction was rolled back: keep its changes, before any made
        # since, and try again shortly (a database restarting, a full disk).
        self._ops[:0] = ops
        merged = dict(meta)
        merged.update(self._meta)
        self._meta = merged
        self._retry_at = self.reactor.seconds() + WRITE_RETRY

    def _flushed(self, _: object) -> None:
        self._flushing = None
        if (self._ops or self._meta) and self.fenced is None:
            self._schedule()
        else:
            self._wake_idle()

    def _wake_idle(self) -> None:
        idle, self._idle = self._idle, []
        for d in idle:
            d.callback(None)

    async def flush(self) -> None:
        """Wait until everything changed so far is written; raise
        :class:`Fenced` if the database refused it."""
        if self._open and (self._ops or self._meta or self._flushing is not None):
            d: Deferred[None] = Deferred()
            self._idle.append(d)
            if self._flush_call is not None and self._flush_call.active():
                self._flush_call.cancel()
                self._flush_call = None
                self._flush()
            elif self._flush_call is None and self._flushing is None:
                self._flush()
            await d
        if self.fenced is not None:
            raise self.fenced

    async def close(self) -> None:
        """Write what is pending and release the backend and the thread."""
        if self._closed or not self._open:
            return
        self._closed = True
        flushed = Deferred.fromCoroutine(self.flush())
        # A database that is down does not hold the stop up for long.
        flushed.addTimeout(CLOSE_TIMEOUT, self.reactor)
        try:
            await flushed
        except (Fenced, TimeoutError, CancelledError):
            pass
        self._open = False
        await self._in_thread(self.backend.close)
        self._pool.stop()
