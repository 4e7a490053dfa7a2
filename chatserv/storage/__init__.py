"""Durable storage: messages, accounts and schema, on SQLite or PostgreSQL.

``--db`` names the database: a ``postgresql://`` DSN selects PostgreSQL
(psycopg 3), anything else is a SQLite file (``:memory:`` for a throwaway
in-memory one). :func:`open_store` migrates the schema and returns the
:class:`Storage` the server runs on; :func:`open_engine` gives the blocking
engine ``chatserv-admin`` uses. What messages need (:class:`MessageStore`)
and what accounts need (:class:`AccountStore`) are separate interfaces: the
hub, history and the bridge are given the one, :class:`chatserv.accounts.Accounts`
the other.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

from twisted.internet.defer import Deferred

from ..events import ChatMessage, Correction
from .engine import Account, Engine, RoomInfo, conversation_key, is_postgres, open_engine, redact
from .schema import LATEST, MIGRATIONS, SchemaTooNew, StorageError
from .store import StorageClosed, StorageService, ThreadedStore, open_store

DEFAULT_DB = "chatserv.sqlite3"
#: Most messages one ``history`` request returns.
MAX_PAGE = 200


class MessageStore(Protocol):
    """What messages need from storage: the hub's message log, history pages
    and look-ups. Every method that touches the database returns a Deferred
    (or calls back) and never blocks the reactor, except the two start-up
    reads, which run before the server listens."""

    #: History outlives the hub's windows (see chatserv.hub.MessageLog).
    keeps_history: bool

    def append(self, message: ChatMessage) -> Deferred[ChatMessage | None]:
        """Commit *message* (group commit) at the next stream position (set
        on it as ``pos``); fire in append order once durable, with None, or
        with the stored original when *message* repeats its sender's ``cid``
        (nothing is stored then)."""

    def append_then(self, message: ChatMessage, deliver: Callable[[ChatMessage], None]) -> None:
        """The same without a Deferred: call ``deliver(message)`` once durable
        (the hub's hot path), or ``deliver(original)`` for a repeated ``cid``;
        what cannot be stored is logged, not delivered."""

    def correct_then(self, correction: Correction, deliver: Callable[[Correction], None]) -> None:
        """Record an edit or deletion (the original text is kept) at the
        next stream position (set as ``correction.pos``), then call
        ``deliver(correction)``; what cannot be stored is logged, not delivered."""

    def message(self, message_id: int) -> Deferred[ChatMessage | None]:
        """Message *message_id* as it reads now (edits applied), or None."""

    def message_by_cid(self, sender_key: str, cid: str) -> Deferred[ChatMessage | None]:
        """The stored message its sender (``Session.sender_key``) sent as *cid*, or None."""

    def congested(self) -> bool:
        """True while the text of messages waiting to be committed passes
        :data:`chatserv.storage.store.MAX_BACKLOG` (see the hub's MessageLog)."""

    def next_id(self) -> int:
        """Start-up: one more than the highest stored message id."""

    def recent_now(self, room: str, limit: int) -> list[ChatMessage]:
        """Start-up: the newest *limit* messages of *room*, oldest first."""

    def room_page(self, room: str, before: int | None, limit: int) -> Deferred[list[ChatMessage]]:
        """Up to *limit* messages of *room* with ids below *before*, oldest first."""

    def private_page(
        self, a: str, b: str, before: int | None, limit: int, since: float = 0.0
    ) -> Deferred[list[ChatMessage]]:
        """The same for the private conversation between *a* and *b*, from *since* on."""

    def rooms(self) -> Deferred[list[RoomInfo]]:
        """Every room that has stored messages."""

    def room_after(self, room: str, after: int, limit: int) -> Deferred[list[ChatMessage]]:
        """Up to *limit* messages of *room* with positions above *after*, oldest first."""

    def private_after(
        self, a: str, b: str, after: int, limit: int, since: float = 0.0
    ) -> Deferred[list[ChatMessage]]:
        """The same for the private conversation between *a* and *b*, from *since* on."""

    def room_events_after(
        self, room: str, after: int, limit: int
    ) -> Deferred[list[ChatMessage | Correction]]:
        """A client's catch-up of *room* from position *after*: up to *limit*
        events in position order, its messages above *after* and the
        corrections above it of its messages at or below it."""

    def private_events_after(
        self, a: str, b: str, after: int, limit: int, since: float = 0.0
    ) -> Deferred[list[ChatMessage | Correction]]:
        """The same for the private conversation between *a* and *b*, from *since* on."""

    def events_after(self, pos: int, limit: int) -> Deferred[list[ChatMessage | Correction]]:
        """Catch-up: up to *limit* committed events (messages as they read
        now, and corrections) with positions above *pos*, in position order,
        across every room and conversation."""

    def current_position(self) -> Deferred[int]:
        """The last position committed (0 when none has been)."""

    def position_now(self) -> int:
        """Start-up: the same, read synchronously."""


class AccountStore(Protocol):
    """What accounts need from storage (chatserv.accounts); every method
    returns a Deferred and never blocks the reactor."""

    def account(self, name: str) -> Deferred[Account | None]: ...

    def is_registered(self, name: str) -> Deferred[bool]: ...

    def create_account(self, name: str, password_hash: str, created: float) -> Deferred[bool]:
        """False when the name already has an account."""

    def set_password(self, name: str, password_hash: str) -> Deferred[bool]: ...

    def delete_account(self, name: str) -> Deferred[bool]: ...


@runtime_checkable
class Storage(MessageStore, AccountStore, Protocol):
    """A whole database: both interfaces, and the end of its life."""

    async def close(self) -> None:
        """Commit what is queued and release the database."""


__all__ = [
    "Account",
    "AccountStore",
    "MessageStore",
    "DEFAULT_DB",
    "Engine",
    "LATEST",
    "MAX_PAGE",
    "MIGRATIONS",
    "RoomInfo",
    "SchemaTooNew",
    "Storage",
    "StorageClosed",
    "StorageError",
    "StorageService",
    "ThreadedStore",
    "conversation_key",
    "is_postgres",
    "open_engine",
    "open_store",
    "redact",
]
