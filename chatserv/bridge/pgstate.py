"""The bridge's state in the cluster's shared PostgreSQL database, fenced by
the leader's term.

Same contents as the SQLite file of one node (:mod:`.state`): the update
offset and other marks, the Telegram <-> chat id map, the outbound queue;
every row keyed by *bridge* (``{cluster name}:{bot id}``), so several chats
or bots may share one database. The tables belong to the bridge and are
created (or upgraded) when a leader opens them.

Fencing. ``telegram_bridge`` holds, per bridge, the newest leader term (see
:mod:`.lease`). Opening claims the term: it succeeds only for a term above
the stored one. Every write transaction first touches that row with
``UPDATE … WHERE term = mine``, which takes its row lock: if a newer leader
has claimed meanwhile, no row matches and the whole transaction is refused
(:class:`~.state.Fenced`), so a deposed leader can move neither the offset
nor the queue. A claim waits for the lock of a write in progress, so a write
either commits before the new leader loads, or is refused.

psycopg 3, like :mod:`chatserv.storage.engine`; every call runs in the
state's one worker thread, never on the reactor thread.
"""

from __future__ import annotations

from typing import Any

from .outbox import Entry
from .state import Fenced, Loaded, Op, Ref, StateError

SCHEMA_VERSION = 1
#: Arbitrary constant: the advisory lock that serialises creating the tables.
_PG_LOCK = 0x7467627264
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS telegram_schema (version INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS telegram_bridge (bridge TEXT PRIMARY KEY, term BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS telegram_meta ("
    " bridge TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL, PRIMARY KEY (bridge, key))",
    "CREATE TABLE IF NOT EXISTS telegram_msgmap ("
    " id BIGSERIAL PRIMARY KEY, bridge TEXT NOT NULL, n BIGINT NOT NULL, tg_chat BIGINT NOT NULL,"
    " tg_msg BIGINT NOT NULL, chat_id BIGINT, sender TEXT NOT NULL, excerpt TEXT NOT NULL,"
    " run TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS telegram_msgmap_n ON telegram_msgmap (bridge, n)",
    "CREATE TABLE IF NOT EXISTS telegram_outbox ("
    " bridge TEXT NOT NULL, seq BIGINT NOT NULL, tg_chat BIGINT, chat_id BIGINT, sender TEXT,"
    " text TEXT NOT NULL, reply_tg BIGINT, PRIMARY KEY (bridge, seq))",
)

_SQL = {
    "map": "INSERT INTO telegram_msgmap (bridge, n, tg_chat, tg_msg, chat_id, sender, excerpt, run)"
    " VALUES (%s,%s,%s,%s,%s,%s,%s,%s)",
    "map_trim": "DELETE FROM telegram_msgmap WHERE bridge = %s AND n <= %s",
    "queue_put": "INSERT INTO telegram_outbox (bridge, seq, chat_id, sender, text, tg_chat, reply_tg)"
    " VALUES (%s,%s,%s,%s,%s,%s,%s) ON CONFLICT (bridge, seq) DO UPDATE SET chat_id = EXCLUDED.chat_id,"
    " sender = EXCLUDED.sender, text = EXCLUDED.text, tg_chat = EXCLUDED.tg_chat,"
    " reply_tg = EXCLUDED.reply_tg",
    "queue_del": "DELETE FROM telegram_outbox WHERE bridge = %s AND seq = %s",
}


class PostgresBackend:
    """:class:`~.state.StateBackend` for leader *term* of *bridge* in the
    database *url*."""

    fenced = True

    def __init__(self, url: str, bridge: str, term: int) -> None:
        self.url = url
        self.bridge = bridge
        self.term = term
        self.conn: Any = None

    def _connect(self) -> Any:
        try:
            import psycopg
        except ImportError as e:
            raise StateError(
                "the clustered Telegram bridge needs psycopg 3: pip install 'chatserv[postgres]'"
            ) from e
        try:
            return psycopg.connect(self.url, autocommit=True, connect_timeout=10)
        except psycopg.Error as e:
            from ..storage.engine import redact

            raise StateError(f"cannot connect to {redact(self.url)} for the bridge state: {e}") from e

    def open(self, map_size: int) -> Loaded:
        self.conn = self._connect()
        try:
            return self._open(map_size)
        except BaseException:
            self.close()
            raise

    def _open(self, map_size: int) -> Loaded:
        conn = self.conn
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_PG_LOCK,))
            for statement in _SCHEMA:
                conn.execute(statement)
            row = conn.execute("SELECT max(version) FROM telegram_schema").fetchone()
            version = row[0] if row and row[0] is not None else 0
            if version > SCHEMA_VERSION:
                raise StateError(
                    "the bridge tables were written by a newer chatserv"
                    f" (schema {version} > {SCHEMA_VERSION})"
                )
            if version < SCHEMA_VERSION:
                conn.execute("DELETE FROM telegram_schema")
                conn.execute("INSERT INTO telegram_schema (version) VALUES (%s)", (SCHEMA_VERSION,))
        with conn.transaction():
            claimed = conn.execute(
                "INSERT INTO telegram_bridge (bridge, term) VALUES (%s, %s) ON CONFLICT (bridge)"
                " DO UPDATE SET term = EXCLUDED.term WHERE telegram_bridge.term < EXCLUDED.term"
                " RETURNING term",
                (self.bridge, self.term),
            ).fetchone()
            if claimed is None:
                raise Fenced(self._stored_term())
            meta = dict(
                conn.execute(
                    "SELECT key, value FROM telegram_meta WHERE bridge = %s", (self.bridge,)
                ).fetchall()
            )
            row = conn.execute(
                "SELECT max(chat_id), max(n) FROM telegram_msgmap WHERE bridge = %s", (self.bridge,)
            ).fetchone()
            max_chat_id = int(row[0]) if row[0] is not None else 0
            top = int(row[1]) if row[1] is not None else 0
            refs = [
                (n, tg_chat, tg_msg, Ref(chat_id, sender, excerpt, run))
                for n, tg_chat, tg_msg, chat_id, sender, excerpt, run in conn.execute(
                    "SELECT n, tg_chat, tg_msg, chat_id, sender, excerpt, run FROM telegram_msgmap"
                    " WHERE bridge = %s AND n > %s ORDER BY n, id",
                    (self.bridge, top - map_size),
                )
            ]
            outbox = [
                (tg_chat, Entry(seq, chat_id, sender, text, reply_tg))
                for seq, chat_id, sender, text, tg_chat, reply_tg in conn.execute(
                    "SELECT seq, chat_id, sender, text, tg_chat, reply_tg FROM telegram_outbox"
                    " WHERE bridge = %s ORDER BY seq",
                    (self.bridge,),
                )
            ]
        return Loaded(int(meta.get("offset", 0)), max_chat_id, refs, outbox, meta)

    def _stored_term(self) -> int:
        row = self.conn.execute(
            "SELECT term FROM telegram_bridge WHERE bridge = %s", (self.bridge,)
        ).fetchone()
        return int(row[0]) if row else 0

    def _hold_term(self) -> None:
        """Inside a transaction: lock the bridge row if it still holds our term."""
        held = self.conn.execute(
            "UPDATE telegram_bridge SET term = term WHERE bridge = %s AND term = %s", (self.bridge, self.term)
        )
        if held.rowcount != 1:
            raise Fenced(self._stored_term())

    def write(self, ops: list[Op], meta: dict[str, str]) -> None:
        if self.conn is None or self.conn.closed or self.conn.broken:
            # The database restarted or the network dropped: the state
            # keeps its changes and calls again (state.WRITE_RETRY).
            self.conn = self._connect()
        with self.conn.transaction():
            self._hold_term()
            for kind, params in ops:
                self.conn.execute(_SQL[kind], (self.bridge, *params))
            for key, value in meta.items():
                self.conn.execute(
                    "INSERT INTO telegram_meta (bridge, key, value) VALUES (%s, %s, %s)"
                    " ON CONFLICT (bridge, key) DO UPDATE SET value = EXCLUDED.value",
                    (self.bridge, key, value),
                )

    def check(self) -> None:
        if self.conn is None or self.conn.closed or self.conn.broken:
            self.conn = self._connect()
        term = self._stored_term()
        if term != self.term:
            raise Fenced(term)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None
