"""The chat server as a Twisted service: a hub, a factory, and its listeners."""

from __future__ import annotations

import resource
from dataclasses import dataclass, field, replace
from typing import Any

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger

from .accounts import Accounts
from .hub import GENERAL, ROOM_CREATE_BURST, ROOM_CREATE_RATE, Hub, MessageLog
from .protocol import ChatFactory, Limits
from .storage import Storage, StorageService, open_store
from .storage.retention import RetentionService
from .windows import HISTORY_MEMORY

log = Logger()

DEFAULT_LISTEN = "tcp:2000"
#: Listen backlog for tcp and ssl listeners that do not set one. Twisted's
#: default of 50 drops SYNs when thousands of clients connect at once (they
#: retry after a second or more); the kernel caps it at net.core.somaxconn.
DEFAULT_BACKLOG = 4096


def with_backlog(description: str) -> str:
    """*description* with ``backlog=`` added for tcp and ssl listeners lacking it."""
    kind = description.split(":", 1)[0]
    if kind in ("tcp", "ssl", "tcp6") and "backlog=" not in description:
        return f"{description}:backlog={DEFAULT_BACKLOG}"
    return description


#: File descriptors the server needs besides its connections: listeners, the
#: database, log files, the Telegram bridge's sockets, thread wake-up pipes.
FD_RESERVE = 64


def fit_file_limit(max_connections: int) -> int:
    """How many connections the process's file limit allows, up to *max_connections*.

    Raises the soft RLIMIT_NOFILE toward what *max_connections* needs (at
    most to the hard limit). If even that is too low, warns and returns the
    lower number, so that clients past it get ``server_full`` instead of
    being cut off without a word when ``accept`` fails.
    """
    infinity = resource.RLIM_INFINITY
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = max_connections + FD_RESERVE
    if soft != infinity and soft < need:
        target = need if hard == infinity else min(need, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as e:
            log.warn("could not raise the file limit to {target}: {e}", target=target, e=e)
    if soft == infinity or soft >= need:
        return max_connections
    fitted = max(1, soft - FD_RESERVE)
    log.warn(
        "the file limit (RLIMIT_NOFILE {soft}, hard {hard}) leaves room for {fitted} connections:"
        " serving at most {fitted}, not --max-connections {wanted}",
        soft=soft,
        hard=hard,
        fitted=fitted,
        wanted=max_connections,
    )
    return fitted


@dataclass
class ServerConfig:
    """Everything ``twistd chatserv`` can be told; defaults are the documented ones."""

    listen: list[str] = field(default_factory=lambda: [DEFAULT_LISTEN])
    history: int = 50
    #: Bytes all rooms' history windows may hold together (Hub.history_memory).
    history_memory: int = HISTORY_MEMORY
    limits: Limits = field(default_factory=Limits)
    #: The Telegram bridge (chatserv.bridge.BridgeConfig); None runs without one.
    telegram: Any = None
    #: Database URL (chatserv.storage); None keeps everything in memory.
    db: str | None = None
    #: Refuse guest logins: every user needs an account (needs a database).
    require_accounts: bool = False
    #: Delete messages older than this many days (None: keep them all).
    retain_days: float | None = None
    #: Rooms a session may create: per second on average, and in a burst.
    room_rate: float = ROOM_CREATE_RATE
    room_burst: int = ROOM_CREATE_BURST


class ChatServer(Service):
    """Listens on every configured strports description with one shared factory.

    ``listening`` fires with the bound ports once all of them listen, which is
    how tests learn the port behind ``tcp:0``.
    """

    name = "chat-server"  # type: ignore[assignment]

    def __init__(self, config: ServerConfig, reactor: Any, store: MessageLog | None = None) -> None:
        self.config = config
        self.reactor = reactor
        durable = store if isinstance(store, Storage) else None
        if config.require_accounts and durable is None:
            raise ValueError("require_accounts needs a database for the accounts")
        first_id = durable.next_id() if durable is not None else 1  # ids never repeat across restarts
        self.hub = Hub(
            reactor,
            history_size=config.history,
            store=store,
            first_id=first_id,
            room_rate=config.room_rate,
            room_burst=config.room_burst,
            history_memory=config.history_memory,
        )
        limits = replace(config.limits, max_connections=fit_file_limit(config.limits.max_connections))
        self.factory = ChatFactory(self.hub, reactor, limits)
        if durable is not None:
            # Login history comes from the database, and the accounts live there.
            self.hub.remember(durable.recent_now(GENERAL, config.history))
            self.factory.store = durable
            self.factory.accounts = Accounts(durable, reactor, require_accounts=config.require_accounts)
        self.ports: list[IListeningPort] = []
        self.listening: Deferred[list[IListeningPort]] = Deferred()

    def startService(self) -> None:
        super().startService()
        attempts = [
            serverFromString(self.reactor, with_backlog(d)).listen(self.factory) for d in self.config.listen
        ]
        for description, attempt in zip(self.config.listen, attempts, strict=True):
            attempt.addCallback(self._listening, description)
        gathered = DeferredList(attempts, fireOnOneErrback=True, consumeErrors=True)
        failures: list[Any] = []
        gathered.addCallbacks(
            lambda results: self.listening.callback([port for _, port in results]),
            lambda f: failures.append(f.value.subFailure),
        )
        if failures:
            # TCP and SSL listeners fail synchronously: raising here makes
            # twistd report the error and exit non-zero instead of idling.
            failures[0].raiseException()

    def _listening(self, port: IListeningPort, description: str) -> IListeningPort:
        self.ports.append(port)
        log.info("listening on {description} ({address})", description=description, address=port.getHost())
        return port

    def stopService(self) -> Deferred[Any]:
        super().stopService()
        self.factory.disconnect_all()
        ports, self.ports = self.ports, []
        return DeferredList([port.stopListening() for port in ports])  # type: ignore[misc]


def makeService(config: ServerConfig, reactor: Any = None, store: MessageLog | None = None) -> MultiService:
    """Build the application: the chat server, and later services beside it.

    *reactor* and *store* are injected so that tests run the real service on a
    fake clock or a temporary database.
    """
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    application = MultiService()
    if store is None and config.db is not None:
        # Blocking connect and migration: this runs before the server serves.
        store = open_store(config.db, reactor)
        StorageService(store).setServiceParent(application)
    server = ChatServer(config, reactor, store)
    server.setServiceParent(application)
    if isinstance(store, Storage) and config.db is not None:
        # After the server: it starts only once the server listens (a server
        # that cannot listen exits at once, with no storage threads to wait
        # for), and it stops, finishing its batch, before the store closes.
        RetentionService(store, reactor, config.retain_days).setServiceParent(application)
    if config.telegram is not None:
        from .bridge import TelegramBridge

        # After the chat server, so it stops first and logs out of a live hub.
        TelegramBridge(config.telegram, server.hub, reactor, store).setServiceParent(application)
    return application
