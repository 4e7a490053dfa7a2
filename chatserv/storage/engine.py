"""Blocking database engines: one connection each, SQLite or PostgreSQL.

An engine is plain synchronous DB-API code. The server never calls it on the
reactor thread (:mod:`chatserv.storage.store` runs it in dedicated threads);
``chatserv-admin`` and start-up code call it directly. Every public method
takes the engine's lock, so one connection is never used by two threads at
once even when a single SQLite ``:memory:`` connection serves both the writer
and the reader thread.
"""

from __future__ import annotations

import functools
import json
import re
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any, ClassVar, TypeVar
from urllib.parse import urlsplit, urlunsplit

from ..events import ChatMessage, Correction
from ..logs import Logger
from ..names import BadName, check_name, name_key, rekey
from .schema import LATEST, MIGRATIONS, POSITION_INDEXES, VERSION_TABLE, SchemaTooNew, StorageError

log = Logger()

T = TypeVar("T")

#: Larger than any id the server will hand out: "before" when none is given.
NO_LIMIT_ID = 1 << 62
#: Parameters per ``IN (...)`` query; SQLite's default limit is 32,766.
_IN_CHUNK = 500
#: Arbitrary constant: the advisory lock that serialises PostgreSQL migrations.
_PG_MIGRATION_LOCK = 0x63686174


@dataclass(frozen=True, slots=True)
class Account:
    name: str
    key: str
    password_hash: str
    created: float


@dataclass(frozen=True, slots=True)
class RoomInfo:
    name: str
    messages: int
    last_ts: float


def conversation_key(a: str, b: str) -> str:
    """The key both directions of a private conversation are filed under.

    Names never contain white space, so a newline cannot be forged into one.
    """
    ka, kb = name_key(a), name_key(b)
    return f"{ka}\n{kb}" if ka <= kb else f"{kb}\n{ka}"


#: Optional message fields kept in the ``extra`` JSON column, when the hub's
#: ChatMessage has them.
_EXTRA_FIELDS = tuple(f for f in ("reply_to", "edit_of") if f in ChatMessage.__dataclass_fields__)


def _extra(m: ChatMessage) -> str | None:
    extra = {f: v for f in _EXTRA_FIELDS if (v := getattr(m, f)) is not None}
    return json.dumps(extra, ensure_ascii=False, separators=(",", ":")) if extra else None


def _row(m: ChatMessage, body: Any) -> tuple[Any, ...]:
    if m.room is not None:
        return (
            m.id, m.ts, m.sender, m.room, name_key(m.room), None, None, body, _extra(m),
            m.pos, m.sender_key, m.cid,
        )
    assert m.recipient is not None
    conversation = conversation_key(m.sender, m.recipient)
    return (
        m.id, m.ts, m.sender, None, None, m.recipient, conversation, body, _extra(m),
        m.pos, m.sender_key, m.cid,
    )


def _text(body: Any) -> str:
    return body if isinstance(body, str) else bytes(body).decode("utf-8")  # PostgreSQL's BYTEA


def _message(row: Sequence[Any]) -> ChatMessage:
    """A message as it reads now: corrected text, or empty when deleted."""
    (
        id_, ts, sender, room, recipient, body, extra, edited_body, edited_ts, deleted_ts,
        pos, cid, key,
    ) = row
    body = _text(body)
    message = ChatMessage(
        int(id_), float(ts), sender, body, room=room, recipient=recipient, pos=int(pos or 0),
        cid=cid, sender_key=key,
    )
    if extra:
        for f, v in json.loads(extra).items():
            if f in _EXTRA_FIELDS:
                setattr(message, f, v)
    if deleted_ts is not None:
        message.deleted = float(deleted_ts)
        message.text = ""
    elif edited_ts is not None:
        message.edited = float(edited_ts)
        message.text = _text(edited_body)
    return message


def _correction(row: Sequence[Any]) -> Correction:
    id_, ts, sender, body, room, recipient, pos = row
    return Correction(
        int(id_), float(ts), sender, None if body is None else _text(body), room=room,
        recipient=recipient, pos=int(pos),
    )


#: Corrections with what they need of their messages (see _correction);
#: the caller adds ``AND`` terms that bound ``e.pos``. CROSS JOIN makes
#: SQLite walk the corrections by position (few) and look their messages up
#: by id, rather than walk a whole room's messages looking for corrections;
#: PostgreSQL plans it as any join.
_SELECT_EDITS = (
    "SELECT e.message_id, e.ts, m.sender, e.body, m.room, m.recipient, e.pos"
    " FROM message_edits e CROSS JOIN messages m WHERE m.id = e.message_id"
)

_SELECT = (
    "SELECT id, ts, sender, room, recipient, body, extra, edited_body, edited_ts, deleted_ts,"
    " pos, cid, sender_key FROM messages"
)
_INSERT_HEAD = (
    "INSERT INTO messages (id, ts, sender, room, room_key, recipient, conversation, body, extra,"
    " pos, sender_key, cid) VALUES "
)
_ROW_MARKS = "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
#: Rows per INSERT statement at most: 64 x 12 parameters stays under the 999
#: that SQLite builds before 3.32 allow.
_MAX_ROWS = 64


@functools.lru_cache(maxsize=64)
def _insert_sql(rows: int, suffix: str) -> str:
    return _INSERT_HEAD + ", ".join([_ROW_MARKS] * rows) + suffix


#: "Older than message *before*": earlier in the stream than it. By position,
#: not id: on several nodes (docs/CLUSTER.md) ids come from per-node blocks
#: and their order is not commit order. An id that names no stored message
#: (deleted, or made up) pages from the first stored message with a higher
#: id, which on one server, where ids follow commit order, is "id < before"
#: exactly.
_BEFORE = (
    "COALESCE((SELECT pos FROM messages WHERE id = ?),"
    " (SELECT min(pos) FROM messages WHERE id >= ?), ?)"
)


def _before(before: int | None) -> tuple[int, int, int]:
    """The parameters of _BEFORE."""
    value = NO_LIMIT_ID if before is None else before
    return (value, value, NO_LIMIT_ID)


def redact(url: str) -> str:
    """*url* without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


class Engine:
    """The SQL both dialects share; subclasses supply the connection."""

    dialect: ClassVar[str]

    def __init__(self, url: str) -> None:
        self.url = url
        self.lock = threading.Lock()

    # -- dialect hooks ------------------------------------------------------

    def _execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        raise NotImplementedError

    def _insert_rows(self, rows: list[tuple[Any, ...]], suffix: str = "") -> None:
        """INSERT *rows* with multi-row statements of power-of-two sizes.

        One statement per up to 64 rows instead of one per row: each
        statement execution releases and retakes the GIL, which the reactor
        thread wants too, so fewer of them make the writer cheaper for the
        whole server; power-of-two sizes keep the statement cache small.
        """
        done, total = 0, len(rows)
        while done < total:
            size = min(_MAX_ROWS, 1 << ((total - done).bit_length() - 1))
            params = [value for row in rows[done : done + size] for value in row]
            self._execute(_insert_sql(size, suffix), params)
            done += size

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        raise NotImplementedError
        yield

    def _fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        return list(self._execute(sql, params).fetchall())

    def _call(self, fn: Callable[[], T], idempotent: bool = True) -> T:
        """Run *fn* under the lock (PostgreSQL retries it once on a lost connection)."""
        with self.lock:
            return fn()

    def close(self) -> None:
        raise NotImplementedError

    def reconnect(self) -> None:
        """Open a fresh connection (after a fork: connections must not cross one)."""
        raise NotImplementedError

    # -- schema -------------------------------------------------------------

    def migrate(self, target: int = LATEST) -> int:
        """Apply every migration up to *target*; return the schema version."""
        return self._call(lambda: self._migrate(target))

    def _migrate(self, target: int) -> int:
        with self._transaction():
            self._lock_schema()
            self._execute(VERSION_TABLE)
            current = self._version()
            if current > LATEST:
                raise SchemaTooNew(
                    f"the database {redact(self.url)} has schema version {current}, but this"
                    f" chatserv only knows versions up to {LATEST}: it was written by a newer"
                    " chatserv. Run that version, or upgrade this one."
                )
            for migration in MIGRATIONS:
                if current < migration.version <= target:
                    for statement in getattr(migration, self.dialect):
                        self._execute(statement)
                    if migration.python is not None:
                        getattr(self, migration.python)()
                    self._execute(
                        "INSERT INTO schema_version (version, description, applied) VALUES (?, ?, ?)",
                        (
                            migration.version,
                            migration.description,
                            datetime.now(UTC).isoformat(timespec="seconds"),
                        ),
                    )
                    log.info(
                        "database schema migrated to version {version} ({description})",
                        version=migration.version,
                        description=migration.description,
                    )
                    current = migration.version
            return current

    def _lock_schema(self) -> None:
        """Keep two servers starting at once from migrating the same database."""

    def _rekey_names(self) -> None:
        """Migration 4: turn every stored name key into its look-alike key.

        Runs inside the migration's transaction. Accounts whose names the new
        rules refuse (emoji, compatibility characters) are kept but can no
        longer log in; each is named in a warning. Two accounts whose names now
        have one key cannot both keep it: the older account keeps the name,
        and the newer one is set aside under a key no name has (it can no
        longer log in; ``chatserv-admin list-accounts`` still shows it), with
        a warning in the log.
        """
        rows = self._execute("SELECT name_key, name, password_hash, created FROM accounts").fetchall()
        if rows:
            self._execute("DELETE FROM accounts")
            taken: set[str] = set()
            for old, name, password_hash, created in sorted(rows, key=lambda r: (float(r[3]), r[0])):
                key = rekey(old)
                try:
                    check_name(name)
                except BadName as e:
                    log.warn("account {name!r} can no longer log in: {why}", name=name, why=str(e))
                if key in taken:
                    log.warn(
                        "account {name!r} looks like an older account's name: set aside, it can no"
                        " longer log in",
                        name=name,
                    )
                    key = f"{key}\n{old}"  # no name key holds a newline
                taken.add(key)
                self._execute(
                    "INSERT INTO accounts (name_key, name, password_hash, created) VALUES (?, ?, ?, ?)",
                    (key, name, password_hash, created),
                )
        for (old,) in self._execute(
            "SELECT DISTINCT room_key FROM messages WHERE room_key IS NOT NULL"
        ).fetchall():
            if rekey(old) != old:
                self._execute("UPDATE messages SET room_key = ? WHERE room_key = ?", (rekey(old), old))
        for (old,) in self._execute(
            "SELECT DISTINCT conversation FROM messages WHERE conversation IS NOT NULL"
        ).fetchall():
            a, _, b = old.partition("\n")
            ka, kb = sorted((rekey(a), rekey(b)))
            if f"{ka}\n{kb}" != old:
                self._execute(
                    "UPDATE messages SET conversation = ? WHERE conversation = ?", (f"{ka}\n{kb}", old)
                )
        caps = self._execute("SELECT room_key, room, max_messages FROM room_caps").fetchall()
        if caps:
            self._execute("DELETE FROM room_caps")
            kept: dict[str, tuple[str, int]] = {}
            for old, room, cap in caps:
                kept.setdefault(rekey(old), (room, int(cap)))
            for key, (room, cap) in kept.items():
                self._execute(
                    "INSERT INTO room_caps (room_key, room, max_messages) VALUES (?, ?, ?)", (key, room, cap)
                )

    def _version(self) -> int:
        (version,) = self._execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()
        return int(version)

    def version(self) -> int:
        return self._call(self._version)

    # -- messages -----------------------------------------------------------

    def insert_messages(self, messages: list[ChatMessage]) -> list[ChatMessage | None] | None:
        """Store *messages* in one transaction (the group commit), each at
        the next stream position, which is set on it (``pos``).

        A message whose sender's ``cid`` is stored already (or comes earlier
        in the batch) is not stored and takes no position. Returns None when
        every message was stored, else one entry per message: None (stored)
        or the original message that holds its ``cid``.
        """

        def insert() -> list[ChatMessage | None] | None:
            with self._transaction():
                return self._insert_batch(messages, self._take_positions())

        return self._call(insert, idempotent=False)

    def _take_positions(self) -> int:
        """Lock the stream counter for this transaction; the last position taken.

        Every transaction that takes positions calls this first: on
        PostgreSQL the row lock (FOR UPDATE) makes the transactions of all
        servers on the database take positions one at a time, each seeing
        what the previous one committed (its cids included), so positions
        follow commit order; SQLite has one writer at a time anyway.
        """
        row = self._execute(f"SELECT pos FROM stream_position WHERE id = 1{self._FOR_UPDATE}").fetchone()
        return int(row[0])

    #: How the dialect locks the row it reads for the rest of the transaction.
    _FOR_UPDATE = ""

    def _insert_batch(self, messages: list[ChatMessage], last: int) -> list[ChatMessage | None] | None:
        """Inside a transaction holding the counter (*last* taken so far):
        store what is new in *messages* at the positions after *last*."""
        originals = self._originals(messages)
        fresh = messages
        if originals is not None:
            fresh = [m for m, o in zip(messages, originals, strict=True) if o is None]
        for message in fresh:
            last += 1
            message.pos = last
        self._insert_rows(self._rows(fresh))
        self._execute("UPDATE stream_position SET pos = ? WHERE id = 1", (last,))
        return originals

    def _originals(self, messages: list[ChatMessage]) -> list[ChatMessage | None] | None:
        """For each of *messages*, the message that already holds its
        ``(sender_key, cid)``, stored or earlier in the batch; None when no
        message is a repeat (the common case costs no query at all)."""
        cids = sorted({m.cid for m in messages if m.cid is not None})
        if not cids:
            return None
        held: dict[tuple[str | None, str], ChatMessage] = {}
        for start in range(0, len(cids), _IN_CHUNK):
            chunk = cids[start : start + _IN_CHUNK]
            sql = f"{_SELECT} WHERE cid IN ({', '.join('?' * len(chunk))})"
            for row in self._fetchall(sql, chunk):
                stored = _message(row)
                assert stored.cid is not None
                held[(stored.sender_key, stored.cid)] = stored
        originals: list[ChatMessage | None] = []
        repeats = False
        for message in messages:
            if message.cid is None:
                originals.append(None)
                continue
            key = (message.sender_key, message.cid)
            original = held.get(key)
            if original is None:
                held[key] = message
            repeats = repeats or original is not None
            originals.append(original)
        return originals if repeats else None

    def _rows(self, messages: list[ChatMessage]) -> list[tuple[Any, ...]]:
        body = self._body
        return [_row(m, body(m.text)) for m in messages]

    def message_by_cid(self, sender_key: str, cid: str) -> ChatMessage | None:
        """The stored message its sender (*sender_key*) sent as *cid*, or None."""
        row = self._call(
            lambda: self._execute(f"{_SELECT} WHERE cid = ? AND sender_key = ?", (cid, sender_key)).fetchone()
        )
        return None if row is None else _message(row)

    # -- the stream -----------------------------------------------------------

    def position(self) -> int:
        """The last position committed (0 when nothing has been)."""
        return self._call(self._position)

    def _position(self) -> int:
        return int(self._execute("SELECT pos FROM stream_position WHERE id = 1").fetchone()[0])

    def events_after(self, pos: int, limit: int) -> list[ChatMessage | Correction]:
        """Up to *limit* committed events (messages as they read now, and
        corrections) with positions above *pos*, in position order.

        Two queries, so both are bounded by the counter read first: every
        position up to it is committed, and a commit landing between the
        queries cannot leave a hole in what is returned.
        """

        def read() -> tuple[list[Any], list[Any]]:
            last = self._position()
            messages = self._fetchall(
                f"{_SELECT} WHERE pos > ? AND pos <= ? ORDER BY pos LIMIT ?", (pos, last, limit)
            )
            edits = self._fetchall(
                f"{_SELECT_EDITS} AND e.pos > ? AND e.pos <= ? ORDER BY e.pos LIMIT ?",
                (pos, last, limit),
            )
            return messages, edits

        message_rows, edit_rows = self._call(read)
        events: list[ChatMessage | Correction] = [_message(row) for row in message_rows]
        events += [_correction(row) for row in edit_rows]
        events.sort(key=lambda event: event.pos)
        return events[:limit]

    def room_after(self, room: str, after: int, limit: int) -> list[ChatMessage]:
        """Up to *limit* messages of *room* with positions above *after*, oldest first."""
        params = (name_key(room), after, limit)
        rows = self._call(
            partial(self._fetchall, f"{_SELECT} WHERE room_key = ? AND pos > ? ORDER BY pos LIMIT ?", params)
        )
        return [_message(row) for row in rows]

    def private_after(
        self, a: str, b: str, after: int, limit: int, since: float = 0.0
    ) -> list[ChatMessage]:
        """The same for the private conversation between *a* and *b*, from *since* on."""
        params = (conversation_key(a, b), after, since, limit)
        rows = self._call(
            partial(
                self._fetchall,
                f"{_SELECT} WHERE conversation = ? AND pos > ? AND ts >= ? ORDER BY pos LIMIT ?",
                params,
            )
        )
        return [_message(row) for row in rows]

    def room_events_after(self, room: str, after: int, limit: int) -> list[ChatMessage | Correction]:
        """A client's catch-up of *room* from position *after*: up to *limit*
        events in position order, the room's messages above *after* (as they
        read now) and the corrections above it of its messages at or below
        it (the ones the client has and has not seen corrected)."""
        return self._conversation_after("m.room_key = ?", (name_key(room),), after, limit)

    def private_events_after(
        self, a: str, b: str, after: int, limit: int, since: float = 0.0
    ) -> list[ChatMessage | Correction]:
        """The same for the private conversation between *a* and *b*, from *since* on."""
        where = "m.conversation = ? AND m.ts >= ?"
        return self._conversation_after(where, (conversation_key(a, b), since), after, limit)

    def _conversation_after(
        self, where: str, params: tuple[Any, ...], after: int, limit: int
    ) -> list[ChatMessage | Correction]:
        # Bounded by the counter read first, as events_after is: a message
        # committed between the two queries must not be skipped by a client
        # that pages on from a later correction.
        message_sql = f"{_SELECT} m WHERE {where} AND m.pos > ? AND m.pos <= ? ORDER BY m.pos LIMIT ?"
        edit_sql = (
            f"{_SELECT_EDITS} AND {where} AND e.pos > ? AND e.pos <= ? AND m.pos <= ?"
            " ORDER BY e.pos LIMIT ?"
        )

        def read() -> tuple[list[Any], list[Any]]:
            last = self._position()
            messages = self._fetchall(message_sql, (*params, after, last, limit))
            edits = self._fetchall(edit_sql, (*params, after, last, after, limit))
            return messages, edits

        message_rows, edit_rows = self._call(read)
        events: list[ChatMessage | Correction] = [_message(row) for row in message_rows]
        events += [_correction(row) for row in edit_rows]
        events.sort(key=lambda event: event.pos)
        return events[:limit]

    def _number_positions(self) -> None:
        """Migration 6: give every stored message and correction its place
        in the stream: messages in id order, then corrections in time order
        (each after its message), and set the counter to the last."""
        self._execute(
            "UPDATE messages SET pos = r.n FROM"
            " (SELECT id, row_number() OVER (ORDER BY id) AS n FROM messages) AS r"
            " WHERE messages.id = r.id"
        )
        (last,) = self._execute("SELECT count(*) FROM messages").fetchone()
        rowid = self._ROWID
        self._execute(
            f"UPDATE message_edits SET pos = r.n + ? FROM (SELECT {rowid} AS row_id,"
            " row_number() OVER (ORDER BY ts, message_id) AS n FROM message_edits) AS r"
            f" WHERE message_edits.{rowid} = r.row_id",
            (int(last),),
        )
        (edits,) = self._execute("SELECT count(*) FROM message_edits").fetchone()
        for statement in POSITION_INDEXES:
            self._execute(statement)
        self._execute("INSERT INTO stream_position (id, pos) VALUES (1, ?)", (int(last) + int(edits),))

    #: The dialect's name for a row's physical id (message_edits has no key).
    _ROWID = "rowid"

    def message(self, message_id: int) -> ChatMessage | None:
        """Message *message_id* as it reads now, or None."""
        row = self._call(lambda: self._execute(f"{_SELECT} WHERE id = ?", (message_id,)).fetchone())
        return None if row is None else _message(row)

    def correct(self, correction: Correction) -> int:
        """Record an edit (or, with ``text`` None, a deletion) of a stored
        message at the next stream position, and return it; the original
        text stays in ``body`` and every correction in ``message_edits``."""
        text = correction.text
        body = None if text is None else self._body(text)

        def update() -> int:
            with self._transaction():
                pos = self._take_positions() + 1
                if text is None:
                    self._execute(
                        "UPDATE messages SET deleted_ts = ? WHERE id = ?", (correction.ts, correction.id)
                    )
                else:
                    self._execute(
                        "UPDATE messages SET edited_body = ?, edited_ts = ? WHERE id = ?",
                        (body, correction.ts, correction.id),
                    )
                self._execute(
                    "INSERT INTO message_edits (message_id, ts, body, pos) VALUES (?, ?, ?, ?)",
                    (correction.id, correction.ts, body, pos),
                )
                self._execute("UPDATE stream_position SET pos = ? WHERE id = 1", (pos,))
                return pos

        return self._call(update, idempotent=False)

    def versions(self, message_id: int) -> list[tuple[float, str | None]]:
        """Every text message *message_id* had, oldest first, as ``(ts, text)``;
        a deletion is ``(ts, None)``. For operators and tests."""

        def read() -> list[Any]:
            first = self._execute("SELECT ts, body FROM messages WHERE id = ?", (message_id,)).fetchall()
            return first + self._fetchall(
                "SELECT ts, body FROM message_edits WHERE message_id = ? ORDER BY ts", (message_id,)
            )

        return [(float(ts), None if body is None else _text(body)) for ts, body in self._call(read)]

    def _body(self, text: str) -> Any:
        return text

    def ping(self) -> None:
        """A cheap query that needs the connection and our schema (health checks)."""
        self._call(lambda: self._execute("SELECT 1 FROM messages LIMIT 1").fetchall())

    def max_id(self) -> int:
        return self._call(
            lambda: int(self._execute("SELECT coalesce(max(id), 0) FROM messages").fetchone()[0])
        )

    def room_page(self, room: str, before: int | None, limit: int) -> list[ChatMessage]:
        """The *limit* newest messages of *room* older than message *before*
        (in stream order, see _BEFORE), oldest first."""
        params = (name_key(room), *_before(before), limit)
        rows = self._call(
            lambda: self._execute(
                f"{_SELECT} WHERE room_key = ? AND pos < {_BEFORE} ORDER BY pos DESC LIMIT ?", params
            ).fetchall()
        )
        return [_message(row) for row in reversed(rows)]

    def private_page(
        self, a: str, b: str, before: int | None, limit: int, since: float = 0.0
    ) -> list[ChatMessage]:
        """The *limit* newest messages between *a* and *b* older than *before*
        and not older than *since*, oldest first."""
        params = (conversation_key(a, b), *_before(before), since, limit)
        rows = self._call(
            lambda: self._execute(
                f"{_SELECT} WHERE conversation = ? AND pos < {_BEFORE} AND ts >= ?"
                " ORDER BY pos DESC LIMIT ?",
                params,
            ).fetchall()
        )
        return [_message(row) for row in reversed(rows)]

    def rooms(self) -> list[RoomInfo]:
        rows = self._call(
            lambda: self._execute(
                "SELECT max(room), count(*), max(ts) FROM messages WHERE room_key IS NOT NULL"
                " GROUP BY room_key ORDER BY max(ts) DESC"
            ).fetchall()
        )
        return [RoomInfo(name, int(count), float(ts)) for name, count, ts in rows]

    # -- retention ----------------------------------------------------------

    def delete_older(self, cutoff: float, batch: int) -> int:
        """Delete up to *batch* of the oldest messages with ``ts`` before
        *cutoff*, in one transaction; return how many went."""

        def delete() -> int:
            with self._transaction():
                # Their earlier versions (message_edits) go with them.
                self._execute(
                    "DELETE FROM message_edits WHERE message_id IN"
                    " (SELECT id FROM messages WHERE ts < ? ORDER BY ts LIMIT ?)",
                    (cutoff, batch),
                )
                cursor = self._execute(
                    "DELETE FROM messages WHERE id IN"
                    " (SELECT id FROM messages WHERE ts < ? ORDER BY ts LIMIT ?)",
                    (cutoff, batch),
                )
                return max(0, cursor.rowcount)

        return self._call(delete)

    def delete_over_cap(self, room_key: str, keep: int, batch: int) -> int:
        """Delete up to *batch* of the oldest messages of the room with key
        *room_key* beyond its newest *keep*; return how many went."""

        def delete() -> int:
            with self._transaction():
                # By position, the commit order: on several nodes ids are not.
                row = self._execute(
                    "SELECT pos FROM messages WHERE room_key = ? ORDER BY pos DESC LIMIT 1 OFFSET ?",
                    (room_key, keep),
                ).fetchone()
                if row is None:
                    return 0
                self._execute(
                    "DELETE FROM message_edits WHERE message_id IN (SELECT id FROM messages"
                    " WHERE room_key = ? AND pos <= ? ORDER BY pos LIMIT ?)",
                    (room_key, row[0], batch),
                )
                cursor = self._execute(
                    "DELETE FROM messages WHERE id IN (SELECT id FROM messages"
                    " WHERE room_key = ? AND pos <= ? ORDER BY pos LIMIT ?)",
                    (room_key, row[0], batch),
                )
                return max(0, cursor.rowcount)

        return self._call(delete)

    def room_caps(self) -> list[tuple[str, str, int]]:
        """``(room_key, room, max_messages)`` for every room with a cap."""
        rows = self._call(
            lambda: self._execute(
                "SELECT room_key, room, max_messages FROM room_caps ORDER BY room_key"
            ).fetchall()
        )
        return [(key, room, int(cap)) for key, room, cap in rows]

    def set_room_cap(self, room: str, max_messages: int) -> None:
        """Keep at most *max_messages* of *room*; 0 removes the cap."""

        def update() -> None:
            with self._transaction():
                key = name_key(room)
                if max_messages <= 0:
                    self._execute("DELETE FROM room_caps WHERE room_key = ?", (key,))
                    return
                self._execute(
                    "INSERT INTO room_caps (room_key, room, max_messages) VALUES (?, ?, ?)"
                    " ON CONFLICT (room_key) DO UPDATE SET room = excluded.room,"
                    " max_messages = excluded.max_messages",
                    (key, room, max_messages),
                )

        self._call(update)

    # -- accounts -----------------------------------------------------------

    def account(self, name: str) -> Account | None:
        key = name_key(name)
        row = self._call(
            lambda: self._execute(
                "SELECT name, name_key, password_hash, created FROM accounts WHERE name_key = ?", (key,)
            ).fetchone()
        )
        return None if row is None else Account(row[0], row[1], row[2], float(row[3]))

    def registered(self, keys: Sequence[str]) -> set[str]:
        """Which of the name *keys* belong to an account."""
        found: set[str] = set()
        for start in range(0, len(keys), _IN_CHUNK):
            chunk = list(keys[start : start + _IN_CHUNK])
            sql = f"SELECT name_key FROM accounts WHERE name_key IN ({', '.join('?' * len(chunk))})"
            rows = self._call(partial(self._fetchall, sql, chunk))
            found.update(row[0] for row in rows)
        return found

    def account_keys(self) -> tuple[set[str], tuple[int, float]]:
        """Every account's name key, and the fingerprint of what was read
        (one query, so the two agree)."""
        rows = self._call(partial(self._fetchall, "SELECT name_key, created FROM accounts"))
        newest = max((float(row[1]) for row in rows), default=0.0)
        return {row[0] for row in rows}, (len(rows), newest)

    def accounts_fingerprint(self) -> tuple[int, float]:
        """(accounts, newest creation time); see chatserv.registered."""
        count, newest = self._call(
            partial(self._fetchall, "SELECT count(*), coalesce(max(created), 0) FROM accounts")
        )[0]
        return int(count), float(newest)

    def create_account(self, name: str, password_hash: str, created: float) -> bool:
        """Create the account; False if the name already has one."""

        def create() -> bool:
            with self._transaction():
                key = name_key(name)
                if self._execute("SELECT 1 FROM accounts WHERE name_key = ?", (key,)).fetchone():
                    return False
                self._execute(
                    "INSERT INTO accounts (name_key, name, password_hash, created) VALUES (?, ?, ?, ?)",
                    (key, name, password_hash, created),
                )
                return True

        return self._call(create, idempotent=False)

    def set_password(self, name: str, password_hash: str) -> bool:
        def update() -> bool:
            with self._transaction():
                cursor = self._execute(
                    "UPDATE accounts SET password_hash = ? WHERE name_key = ?",
                    (password_hash, name_key(name)),
                )
                return bool(cursor.rowcount)

        return self._call(update)

    def delete_account(self, name: str) -> bool:
        def delete() -> bool:
            with self._transaction():
                cursor = self._execute("DELETE FROM accounts WHERE name_key = ?", (name_key(name),))
                return bool(cursor.rowcount)

        return self._call(delete)

    def accounts(self) -> list[Account]:
        rows = self._call(
            lambda: self._execute(
                "SELECT name, name_key, password_hash, created FROM accounts ORDER BY name_key"
            ).fetchall()
        )
        return [Account(r[0], r[1], r[2], float(r[3])) for r in rows]


class SQLiteEngine(Engine):
    dialect = "sqlite"

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.memory = path == ":memory:"
        self.conn = self._connect()

    def _connect(self) -> sqlite3.Connection:
        try:
            # The connection moves between the start-up thread and one pool
            # thread; the engine lock, not sqlite3's thread check, keeps it
            # single-user. isolation_level=None: transactions are explicit.
            conn = sqlite3.connect(self.url, check_same_thread=False, isolation_level=None, timeout=10.0)
            if not self.memory:
                # WAL: the reader connection never waits for the writer's
                # commits, and a commit is one sequential append plus fsync.
                conn.execute("PRAGMA journal_mode=WAL")
            # FULL: a commit is on disk before it returns, so a message the
            # server acknowledged survives a power cut, not only a crash.
            # Group commit pays the fsync once per batch.
            conn.execute("PRAGMA synchronous=FULL")
            return conn
        except sqlite3.Error as e:
            raise StorageError(f"cannot open the SQLite database {self.url}: {e}") from e

    def reconnect(self) -> None:
        # A :memory: database exists only in its connection (the forked
        # child has its own copy of it, which is the one to keep).
        if self.memory:
            return
        with self.lock:
            old, self.conn = self.conn, self._connect()
            old.close()

    def _execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self.conn.execute(sql, params)

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        # IMMEDIATE takes the write lock up front, so a transaction that
        # starts by reading cannot fail later on upgrading its lock.
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    def close(self) -> None:
        with self.lock:
            self.conn.close()


_PLACEHOLDER = re.compile(r"\?")


class PostgresEngine(Engine):
    dialect = "postgresql"

    def __init__(self, dsn: str) -> None:
        super().__init__(dsn)
        try:
            import psycopg
        except ImportError as e:
            raise StorageError("PostgreSQL needs psycopg 3: pip install 'chatserv[postgres]'") from e
        self._psycopg = psycopg
        self._sql: dict[str, str] = {}
        self.conn = self._connect()

    def _connect(self) -> Any:
        try:
            # autocommit: reads do not leave a transaction open between
            # calls; writes open one explicitly with conn.transaction().
            return self._psycopg.connect(self.url, autocommit=True)
        except self._psycopg.Error as e:
            raise StorageError(f"cannot connect to {redact(self.url)}: {e}") from e

    def reconnect(self) -> None:
        with self.lock:
            # The old connection's socket belonged to the parent process;
            # it is dropped, not closed, so nothing is sent on it.
            self.conn = self._connect()

    def _execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self.conn.execute(self._translate(sql), params)

    def _translate(self, sql: str) -> str:
        translated = self._sql.get(sql)
        if translated is None:
            translated = self._sql[sql] = _PLACEHOLDER.sub("%s", sql)
        return translated

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        with self.conn.transaction():
            yield

    def _lock_schema(self) -> None:
        self._execute("SELECT pg_advisory_xact_lock(?)", (_PG_MIGRATION_LOCK,))

    _FOR_UPDATE = " FOR UPDATE"
    _ROWID = "ctid"

    def _body(self, text: str) -> Any:
        return text.encode("utf-8")

    def _call(self, fn: Callable[[], T], idempotent: bool = True) -> T:
        with self.lock:
            try:
                return fn()
            except self._psycopg.OperationalError:
                if not self.conn.broken and not self.conn.closed:
                    raise
                # The server restarted or the network dropped: reconnect
                # once. Only idempotent work is replayed blindly; a batch of
                # messages is replayed by insert_messages itself.
                log.warn("lost the PostgreSQL connection; reconnecting")
                self.conn = self._connect()
                if not idempotent:
                    raise
                return fn()

    def insert_messages(self, messages: list[ChatMessage]) -> list[ChatMessage | None] | None:
        try:
            return super().insert_messages(messages)
        except self._psycopg.OperationalError:
            # The connection died around the commit: the batch may or may
            # not be stored. Ids are primary keys: what is stored under its
            # id keeps the position it got, and only the rest is stored now.
            def replay() -> list[ChatMessage | None] | None:
                with self._transaction():
                    return self._replay(messages)

            return self._call(replay)

    def _replay(self, messages: list[ChatMessage]) -> list[ChatMessage | None] | None:
        last = self._take_positions()
        ids = [m.id for m in messages]
        stored: dict[int, int] = {}
        for start in range(0, len(ids), _IN_CHUNK):
            chunk = ids[start : start + _IN_CHUNK]
            sql = f"SELECT id, pos FROM messages WHERE id IN ({', '.join('?' * len(chunk))})"
            stored.update((int(i), int(p)) for i, p in self._fetchall(sql, chunk))
        missing = [m for m in messages if m.id not in stored]
        for message in messages:
            if message.id in stored:
                message.pos = stored[message.id]
        found = self._insert_batch(missing, last)
        if found is None:
            return None
        originals = dict(zip((m.id for m in missing), found, strict=True))
        return [originals.get(m.id) for m in messages]

    def close(self) -> None:
        with self.lock:
            self.conn.close()


def is_postgres(url: str) -> bool:
    return url.startswith(("postgresql://", "postgres://"))


def open_engine(url: str) -> Engine:
    """Connect to the database *url* names: a ``postgresql://`` DSN, else a
    SQLite file (``:memory:`` for a private in-memory database)."""
    if is_postgres(url):
        return PostgresEngine(url)
    return SQLiteEngine(url)
