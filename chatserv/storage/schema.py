"""Numbered schema migrations, one list per SQL dialect.

A migration is applied once, in order, inside a transaction, and recorded in
``schema_version``. Released migrations are never edited: a change to the
schema is a new entry at the end of :data:`MIGRATIONS`. A database whose
version is higher than the last entry was written by a newer chatserv and is
refused at start-up (:class:`SchemaTooNew`) rather than misread later.
"""

from __future__ import annotations

from dataclasses import dataclass


class StorageError(Exception):
    """The database cannot be used; the message says why, for the operator."""


class SchemaTooNew(StorageError):
    """The database was migrated by a newer chatserv than this one."""


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    sqlite: tuple[str, ...]
    postgresql: tuple[str, ...]
    #: A data step SQL cannot do: the name of an Engine method, run after the
    #: statements, in the same transaction.
    python: str | None = None


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "messages",
        # extra: JSON for optional message fields (reply_to, edit_of), NULL
        # for the common message that has none. PostgreSQL keeps the body as
        # UTF-8 BYTEA because its TEXT cannot hold NUL, which messages may.
        sqlite=(
            # INTEGER PRIMARY KEY makes the server id SQLite's rowid: the
            # table is stored in id order and needs no second index for it.
            """CREATE TABLE messages (
                id INTEGER PRIMARY KEY,
                ts REAL NOT NULL,
                sender TEXT NOT NULL,
                room TEXT,
                room_key TEXT,
                recipient TEXT,
                conversation TEXT,
                body TEXT NOT NULL,
                extra TEXT
            )""",
            "CREATE INDEX messages_by_room ON messages (room_key, id) WHERE room_key IS NOT NULL",
            "CREATE INDEX messages_by_conversation ON messages (conversation, id)"
            " WHERE conversation IS NOT NULL",
        ),
        postgresql=(
            """CREATE TABLE messages (
                id BIGINT PRIMARY KEY,
                ts DOUBLE PRECISION NOT NULL,
                sender TEXT NOT NULL,
                room TEXT,
                room_key TEXT,
                recipient TEXT,
                conversation TEXT,
                body BYTEA NOT NULL,
                extra TEXT
            )""",
            "CREATE INDEX messages_by_room ON messages (room_key, id) WHERE room_key IS NOT NULL",
            "CREATE INDEX messages_by_conversation ON messages (conversation, id)"
            " WHERE conversation IS NOT NULL",
        ),
    ),
    Migration(
        2,
        "accounts",
        sqlite=(
            """CREATE TABLE accounts (
                name_key TEXT PRIMARY KEY,
                name TEXT NOT NULL,
                password_hash TEXT NOT NULL,
                created REAL NOT NULL
            )""",
        ),
        postgresql=(
            """CREATE TABLE accounts (
                name_key TEXT PRIMARY KEY,
                name TEXT NOT NULL,
                password_hash TEXT NOT NULL,
                created DOUBLE PRECISION NOT NULL
            )""",
        ),
    ),
    Migration(
        3,
        "retention",
        # room_caps: the operator's per-room history caps (chatserv-admin
        # set-room-cap). messages_by_ts: --retain-days deletes by age.
        sqlite=(
            """CREATE TABLE room_caps (
                room_key TEXT PRIMARY KEY,
                room TEXT NOT NULL,
                max_messages INTEGER NOT NULL
            )""",
            "CREATE INDEX messages_by_ts ON messages (ts)",
        ),
        postgresql=(
            """CREATE TABLE room_caps (
                room_key TEXT PRIMARY KEY,
                room TEXT NOT NULL,
                max_messages BIGINT NOT NULL
            )""",
            "CREATE INDEX messages_by_ts ON messages (ts)",
        ),
    ),
    Migration(
        4,
        "look-alike name keys",
        # Name keys became UTS #39 skeletons (chatserv.names): every stored
        # key is recomputed from the old one by Engine._rekey_names.
        sqlite=(),
        postgresql=(),
        python="_rekey_names",
    ),
)

MIGRATIONS += (
    Migration(
        5,
        "message corrections",
        # body stays the text as first sent; edited_body is the text as its
        # author last corrected it, deleted_ts marks a deletion. Every
        # correction is also logged in message_edits, so nothing a user
        # once sent is lost to the operator. BYTEA in PostgreSQL as body is.
        sqlite=(
            "ALTER TABLE messages ADD COLUMN edited_body TEXT",
            "ALTER TABLE messages ADD COLUMN edited_ts REAL",
            "ALTER TABLE messages ADD COLUMN deleted_ts REAL",
            """CREATE TABLE message_edits (
                message_id INTEGER NOT NULL REFERENCES messages (id),
                ts REAL NOT NULL,
                body TEXT
            )""",
            "CREATE INDEX message_edits_by_message ON message_edits (message_id)",
        ),
        postgresql=(
            "ALTER TABLE messages ADD COLUMN edited_body BYTEA,"
            " ADD COLUMN edited_ts DOUBLE PRECISION, ADD COLUMN deleted_ts DOUBLE PRECISION",
            """CREATE TABLE message_edits (
                message_id BIGINT NOT NULL REFERENCES messages (id),
                ts DOUBLE PRECISION NOT NULL,
                body BYTEA
            )""",
            "CREATE INDEX message_edits_by_message ON message_edits (message_id)",
        ),
    ),
)

MIGRATIONS += (
    Migration(
        6,
        "stream positions and client message ids",
        # pos: the one stream of committed events (messages and corrections,
        # all rooms and conversations) in commit order; stream_position holds
        # the last position taken, and every transaction that takes positions
        # locks its row first, so commits of several servers on one
        # PostgreSQL database are serialised and positions follow commit
        # order. (cid, sender_key): a sender's own id for a message, unique,
        # so a resend is recognised across restarts and servers; partial, so
        # messages without one cost nothing. Existing rows are numbered by
        # Engine._number_positions. The columns stay NULL-able (ALTER TABLE
        # cannot add NOT NULL without a default); the server always sets pos.
        sqlite=(
            "CREATE TABLE stream_position (id INTEGER PRIMARY KEY CHECK (id = 1), pos INTEGER NOT NULL)",
            "ALTER TABLE messages ADD COLUMN pos INTEGER",
            "ALTER TABLE messages ADD COLUMN sender_key TEXT",
            "ALTER TABLE messages ADD COLUMN cid TEXT",
            "ALTER TABLE message_edits ADD COLUMN pos INTEGER",
        ),
        postgresql=(
            "CREATE TABLE stream_position (id INTEGER PRIMARY KEY CHECK (id = 1), pos BIGINT NOT NULL)",
            "ALTER TABLE messages ADD COLUMN pos BIGINT, ADD COLUMN sender_key TEXT, ADD COLUMN cid TEXT",
            "ALTER TABLE message_edits ADD COLUMN pos BIGINT",
        ),
        python="_number_positions",
    ),
    Migration(
        7,
        "drop the indexes by id that positions replaced",
        # Since 6 every read of a room or conversation goes by position
        # (messages_by_room_pos, messages_by_conversation_pos), so these two
        # only cost an index write per stored message: at 15 k private
        # messages/s they doubled the p99 (docs/PERFORMANCE.md).
        sqlite=("DROP INDEX messages_by_room", "DROP INDEX messages_by_conversation"),
        postgresql=("DROP INDEX messages_by_room", "DROP INDEX messages_by_conversation"),
    ),
)

#: Indexes of migration 6, made after the existing rows are numbered (both
#: dialects spell them alike).
POSITION_INDEXES = (
    "CREATE UNIQUE INDEX messages_by_pos ON messages (pos)",
    "CREATE INDEX messages_by_room_pos ON messages (room_key, pos) WHERE room_key IS NOT NULL",
    "CREATE INDEX messages_by_conversation_pos ON messages (conversation, pos)"
    " WHERE conversation IS NOT NULL",
    # cid first: a batch looks its cids up with one IN (...) query.
    "CREATE UNIQUE INDEX messages_by_cid ON messages (cid, sender_key) WHERE cid IS NOT NULL",
    "CREATE UNIQUE INDEX message_edits_by_pos ON message_edits (pos)",
)

LATEST = MIGRATIONS[-1].version

VERSION_TABLE = """CREATE TABLE IF NOT EXISTS schema_version (
    version INTEGER PRIMARY KEY,
    description TEXT NOT NULL,
    applied TEXT NOT NULL
)"""
