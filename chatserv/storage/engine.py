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
from .schema import LATEST, MIGRATIONS, VERSION_TABLE, SchemaTooNew, StorageError

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
        return (m.id, m.ts, m.sender, m.room, name_key(m.room), None, None, body, _extra(m))
    assert m.recipient is not None
    conversation = conversation_key(m.sender, m.recipient)
    return (m.id, m.ts, m.sender, None, None, m.recipient, conversation, body, _extra(m))


def _text(body: Any) -> str:
    return body if isinstance(body, str) else bytes(body).decode("utf-8")  # PostgreSQL's BYTEA


def _message(row: Sequence[Any]) -> ChatMessage:
    """A message as it reads now: corrected text, or empty when deleted."""
    id_, ts, sender, room, recipient, body, extra, edited_body, edited_ts, deleted_ts = row
    body = _text(body)
    message = ChatMessage(int(id_), float(ts), sender, body, room=room, recipient=recipient)
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


_SELECT = (
    "SELECT id, ts, sender, room, recipient, body, extra, edited_body, edited_ts, deleted_ts"
    " FROM messages"
)
_INSERT_HEAD = (
    "INSERT INTO messages (id, ts, sender, room, room_key, recipient, conversation, body, extra) VALUES "
)
_ROW_MARKS = "(?, ?, ?, ?, ?, ?, ?, ?, ?)"
#: Rows per INSERT statement at most: 64 x 9 parameters stays under the 999
#: that SQLite builds before 3.32 allow.
_MAX_ROWS = 64


@functools.lru_cache(maxsize=64)
def _insert_sql(rows: int, suffix: str) -> str:
    return _INSERT_HEAD + ", ".join([_ROW_MARKS] * rows) + suffix


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

    def insert_messages(self, messages: list[ChatMessage]) -> None:
        """Store *messages* in one transaction: the group commit."""
        rows = self._rows(messages)

        def insert() -> None:
            with self._transaction():
                self._insert_rows(rows)

        self._call(insert, idempotent=False)

    def _rows(self, messages: list[ChatMessage]) -> list[tuple[Any, ...]]:
        return [_row(m, m.text) for m in messages]

    def message(self, message_id: int) -> ChatMessage | None:
        """Message *message_id* as it reads now, or None."""
        row = self._call(lambda: self._execute(f"{_SELECT} WHERE id = ?", (message_id,)).fetchone())
        return None if row is None else _message(row)

    def correct(self, correction: Correction) -> None:
        """Record an edit (or, with ``text`` None, a deletion) of a stored
        message; its original text stays in ``body`` and every correction
        in ``message_edits``."""
        text = correction.text
        body = None if text is None else self._body(text)

        def update() -> None:
            with self._transaction():
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
                    "INSERT INTO message_edits (message_id, ts, body) VALUES (?, ?, ?)",
                    (correction.id, correction.ts, body),
                )

        self._call(update, idempotent=False)

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
        """The *limit* newest messages of *room* older than *before*, oldest first."""
        params = (name_key(room), NO_LIMIT_ID if before is None else before, limit)
        rows = self._call(
            lambda: self._execute(
                f"{_SELECT} WHERE room_key = ? AND id < ? ORDER BY id DESC LIMIT ?", params
            ).fetchall()
        )
        return [_message(row) for row in reversed(rows)]

    def private_page(
        self, a: str, b: str, before: int | None, limit: int, since: float = 0.0
    ) -> list[ChatMessage]:
        """The *limit* newest messages between *a* and *b* older than *before*
        and not older than *since*, oldest first."""
        params = (conversation_key(a, b), NO_LIMIT_ID if before is None else before, since, limit)
        rows = self._call(
            lambda: self._execute(
                f"{_SELECT} WHERE conversation = ? AND id < ? AND ts >= ? ORDER BY id DESC LIMIT ?",
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
                row = self._execute(
                    "SELECT id FROM messages WHERE room_key = ? ORDER BY id DESC LIMIT 1 OFFSET ?",
                    (room_key, keep),
                ).fetchone()
                if row is None:
                    return 0
                self._execute(
                    "DELETE FROM message_edits WHERE message_id IN (SELECT id FROM messages"
                    " WHERE room_key = ? AND id <= ? ORDER BY id LIMIT ?)",
                    (room_key, row[0], batch),
                )
                cursor = self._execute(
                    "DELETE FROM messages WHERE id IN (SELECT id FROM messages"
                    " WHERE room_key = ? AND id <= ? ORDER BY id LIMIT ?)",
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

    def _rows(self, messages: list[ChatMessage]) -> list[tuple[Any, ...]]:
        return [_row(m, m.text.encode("utf-8")) for m in messages]

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

    def insert_messages(self, messages: list[ChatMessage]) -> None:
        try:
            super().insert_messages(messages)
        except self._psycopg.OperationalError:
            # The connection died around the commit: the batch may or may
            # not be stored. Ids are primary keys, so replaying it with
            # ON CONFLICT DO NOTHING stores exactly what is missing.
            rows = self._rows(messages)

            def replay() -> None:
                with self._transaction():
                    self._insert_rows(rows, " ON CONFLICT (id) DO NOTHING")

            self._call(replay)

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
