"""The chat server as a Twisted service: a hub, a factory, and its listeners."""

from __future__ import annotations

import os
import resource
import sys
from dataclasses import dataclass, field, replace
from typing import Any, NoReturn

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort

from .accounts import Accounts
from .cluster import Cluster
from .hashing import HashPool
from .hub import GENERAL, ROOM_CREATE_BURST, ROOM_CREATE_RATE, Hub
from .local import LocalCluster, MemoryLog
from .logs import Logger
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
    #: strports description to serve Prometheus metrics on; None: no metrics.
    metrics: str | None = None
    #: strports description to serve ``/healthz`` on (chatserv.health); None: none.
    health: str | None = None
    #: A ``--workers`` child: the inherited listening sockets, one per
    #: ``listen`` entry, to adopt instead of binding (chatserv.workers).
    adopt_fds: list[int] | None = None
    #: redis:// URL of the cluster's bus (needs a PostgreSQL db); None: a lone node.
    cluster: str | None = None
    #: The prefix of the cluster's Redis keys and channel.
    cluster_name: str = "chatserv"


class Listener(Service):
    """One ``--listen`` description: listens with *factory* while running.

    ``listening`` fires with the bound port (how tests learn the port behind
    ``tcp:0``). A listener that cannot listen stops start-up with one line
    (:func:`cannot_listen`). Like ``strports.service``, but with the port
    and the failure in public hands.
    """

    def __init__(self, description: str, factory: Any, reactor: Any, fd: int | None = None) -> None:
        self.description = description
        self.factory = factory
        self.reactor = reactor
        #: A listening socket inherited from a ``--workers`` parent, or None.
        self.fd = fd
        self.port: IListeningPort | None = None
        self.listening: Deferred[IListeningPort] = Deferred()

    def startService(self) -> None:
        super().startService()
        if self.fd is not None:
            from .workers import adopt

            self._listening(adopt(self.reactor, self.description, self.fd, self.factory))
            return
        attempt = serverFromString(self.reactor, with_backlog(self.description)).listen(self.factory)
        failures: list[Any] = []
        attempt.addCallbacks(self._listening, failures.append)
        if failures:
            # TCP and SSL listeners fail synchronously: exiting here makes
            # twistd stop with one line and a non-zero status instead of idling.
            cannot_listen(self.description, failures[0].value)

    def _listening(self, port: IListeningPort) -> None:
        self.port = port
        log.info("listening on {where} ({address})", where=self.description, address=port.getHost())
        self.listening.callback(port)

    def stopService(self) -> Deferred[Any] | None:
        super().stopService()
        port, self.port = self.port, None
        return port.stopListening() if port is not None else None  # type: ignore[no-any-return]


class ChatServer(MultiService):
    """The chat server: one :class:`Listener` per ``--listen`` over one
    factory, built by :func:`build_server` and handed everything it uses.

    ``listening`` fires with the bound ports once all of them listen.
    """

    name = "chat-server"  # type: ignore[assignment]

    def __init__(
        self, factory: ChatFactory, listen: list[str], reactor: Any, adopt_fds: list[int] | None = None
    ) -> None:
        super().__init__()
        self.factory = factory
        self.hub = factory.hub
        fds: list[int | None] = list(adopt_fds) if adopt_fds is not None else [None] * len(listen)
        self.listeners = [
            Listener(description, factory, reactor, fd) for description, fd in zip(listen, fds, strict=True)
        ]
        for listener in self.listeners:
            listener.setServiceParent(self)
        self.listening: Deferred[list[IListeningPort]] = DeferredList(
            [listener.listening for listener in self.listeners], fireOnOneErrback=True, consumeErrors=True
        ).addCallback(lambda results: [port for _, port in results])

    @property
    def ports(self) -> list[IListeningPort]:
        return [listener.port for listener in self.listeners if listener.port is not None]

    def stopService(self) -> Deferred[Any]:
        self.factory.disconnect_all()
        self.factory.log_budget.stop()
        return super().stopService()  # type: ignore[no-any-return]


def build_server(
    config: ServerConfig,
    reactor: Any,
    store: Storage | None = None,
    hashing: HashPool | None = None,
    cluster: Cluster | None = None,
) -> ChatServer:
    """The chat server over *store* (None: no database, messages in memory).

    With a store, accounts hash passwords in *hashing*'s threads; without
    one given, the server gets a :class:`HashPool` of its own, which starts
    and stops with it. *cluster*: the other nodes (None: a lone node).
    """
    if config.require_accounts and store is None:
        raise ValueError("require_accounts needs a database for the accounts")
    if cluster is None:
        # Ids never repeat across restarts.
        cluster = LocalCluster(store.next_id() if store is not None else 1)
    hub = Hub(
        reactor,
        history_size=config.history,
        store=store if store is not None else MemoryLog(reactor),
        cluster=cluster,
        room_rate=config.room_rate,
        room_burst=config.room_burst,
        history_memory=config.history_memory,
    )
    limits = replace(config.limits, max_connections=fit_file_limit(config.limits.max_connections))
    accounts = None
    own_pool = None
    if store is not None:
        # Login history comes from the database, and the accounts live there.
        hub.remember(store.recent_now(GENERAL, config.history))
        if hashing is None:
            hashing = own_pool = HashPool(reactor)
        accounts = Accounts(store, reactor, hashing.queue, require_accounts=config.require_accounts)
        # In a cluster, failed logins count on every node (a lone node has none).
        accounts.shared = getattr(cluster, "failures", None)
    factory = ChatFactory(hub, reactor, limits, accounts=accounts, history=store)
    server = ChatServer(factory, config.listen, reactor, config.adopt_fds)
    if own_pool is not None:
        own_pool.setServiceParent(server)
    return server


class StartError(Exception):
    """Start-up failed; the message is the one line that says why."""

    # twistd shows a daemon's start-up error as "module.Class: message" cut at
    # 100 bytes: leave the message as much of them as possible.
    __module__ = "chatserv"


def cannot_listen(description: str, error: BaseException, doing: str = "listen on") -> NoReturn:
    """Stop start-up with ``chatserv: cannot listen on DESCRIPTION: REASON``.

    By the time services start, twistd has sent stdout and stderr into its
    log, so the line goes to the log and to the process's original standard
    error, and the process exits with status 1. A daemonized twistd (no
    ``-n``) has no standard error left, and its parent waits for the child to
    report through a pipe, which twistd writes only for an ``Exception``: so
    there the error is raised as :class:`StartError`, and the parent prints
    ``An error has occurred: ... cannot listen on ...``.
    """
    why = f"cannot {doing} {description}: {listen_reason(error)}"
    log.critical("chatserv: {why}", why=why)
    if _daemonized():
        raise StartError(why)
    if sys.__stderr__ is not None:
        sys.__stderr__.write(f"chatserv: {why}\n")
        sys.__stderr__.flush()
    raise SystemExit(1)


def _daemonized() -> bool:
    """Whether standard error is /dev/null, as twistd leaves it once it has daemonized."""
    try:
        return os.path.samestat(os.fstat(2), os.stat(os.devnull))
    except OSError:
        return False


def listen_reason(error: BaseException) -> str:
    """What an operator needs from a listening error: "address already in use"."""
    cause = getattr(error, "socketError", None) or error
    text = getattr(cause, "strerror", None) or str(cause)
    return text[0].lower() + text[1:] if text else type(error).__name__


def makeService(config: ServerConfig, reactor: Any = None, store: Storage | None = None) -> MultiService:
    """Build the application: storage, the hashing threads, the chat server
    and its listeners, and the services beside it, each handed what it uses.

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
    hashing = None
    if store is not None:
        # After storage, before the server: stops once no login waits on it.
        hashing = HashPool(reactor)
        hashing.setServiceParent(application)
    cluster = None
    if config.cluster is not None:
        from .cluster_redis.service import ClusterService, redis_cluster

        assert store is not None and config.db is not None  # tap.Options checks it
        cluster = redis_cluster(config.cluster, config.cluster_name, config.db, store, reactor)
        # Before the server: it stops after it, when the server's sessions
        # have logged out, and leaves Redis as if it had never been there.
        ClusterService(cluster).setServiceParent(application)
    server = build_server(config, reactor, store, hashing, cluster)
    server.setServiceParent(application)
    bridge = None
    if config.telegram is not None:
        from .bridge.cluster import build_bridge

        bridge = build_bridge(config.telegram, server.hub, reactor, store)
    if config.metrics is not None:
        from .metrics import MetricsService

        # Right after the server: like it, it may fail to listen, which ends
        # the process, and must do so before a service below starts threads
        # the interpreter would wait for.
        MetricsService(config.metrics, reactor, server, bridge).setServiceParent(application)
    if config.health is not None:
        from .health import HealthService, NodeHealth

        # Beside metrics, for the same reason.
        check = NodeHealth(reactor, store, server.hub.cluster).problems
        HealthService(config.health, reactor, check).setServiceParent(application)
    if config.adopt_fds is not None:
        from .workers import ParentLifeline

        # A --workers child: stop when the parent is gone.
        ParentLifeline(reactor).setServiceParent(application)
    if store is not None and config.db is not None:
        # After the server: it starts only once the server listens (a server
        # that cannot listen exits at once, with no storage threads to wait
        # for), and it stops, finishing its batch, before the store closes.
        RetentionService(store, reactor, config.retain_days).setServiceParent(application)
    if bridge is not None:
        # After the chat server, so it stops first and logs out of a live hub.
        bridge.setServiceParent(application)
    return application
