"""Network side of the client: the JSON-lines protocol and the connection
keeper that reconnects with back-off.

The protocol only turns lines into frames and back; what frames mean is the
business of a :class:`FrameHandler` (the session), so the same pieces serve
any client (Tk, a bot, tests).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import (
    IDelayedCall,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure
from zope.interface import implementer

Frame = dict[str, Any]

#: A history frame carries up to --history messages of up to --max-line bytes
#: each, so a server line can be much longer than what a client may send.
MAX_SERVER_LINE = 32 * 1024 * 1024
#: Seconds of silence from the server before we ping it.
KEEPALIVE_INTERVAL = 30.0
#: Seconds of silence after which a server that answers pings is presumed
#: gone (a half-open TCP connection would otherwise look alive for hours).
DEAD_AFTER = 95.0


class FrameHandler(Protocol):
    def connection_made(self, conn: ChatLineProtocol) -> None: ...
    def frame_received(self, conn: ChatLineProtocol, frame: Frame) -> None: ...
    def connection_lost(self, conn: ChatLineProtocol, reason: Failure) -> None: ...


def clean_text(text: str) -> str:
    """Text as UTF-8 can carry it: joins surrogate pairs (Tk 8.6 hands out
    astral characters as pairs) and replaces lone surrogates, which the
    server would refuse with ``bad_request``."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def encode_frame(frame: Frame) -> bytes:
    return json.dumps(frame, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


class ChatLineProtocol(LineReceiver):
    delimiter = b"\n"
    MAX_LENGTH = MAX_SERVER_LINE
    log = Logger()

    def __init__(self, handler: FrameHandler, clock: IReactorTime) -> None:
        self.handler = handler
        self.clock = clock
        self.connected_ok = False
        self.pong_seen = False
        self._last_heard = 0.0
        self._keepalive: IDelayedCall | None = None

    def connectionMade(self) -> None:
        self.connected_ok = True
        self._last_heard = self.clock.seconds()
        self._schedule_keepalive()
        self.handler.connection_made(self)

    def send_frame(self, frame: Frame) -> None:
        if self.transport is not None and self.connected_ok:
            self.sendLine(encode_frame(frame))

    def lineReceived(self, line: bytes) -> None:
        self._last_heard = self.clock.seconds()
        if line.endswith(b"\r"):
            line = line[:-1]
        if not line.strip():
            return
        try:
            frame = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            # A plain-text or broken server: nothing we can show faithfully.
            self.log.warn("Ignoring a line that is not JSON from the server")
            return
        if not isinstance(frame, dict) or not isinstance(frame.get("cmd"), str):
            self.log.warn("Ignoring a JSON value that is not a frame")
            return
        if frame["cmd"] == "pong":
            self.pong_seen = True
        self.handler.frame_received(self, frame)

    def lineLengthExceeded(self, line: bytes) -> None:
        self.log.error("Server sent a line over {limit} bytes", limit=self.MAX_LENGTH)
        if self.transport is not None:
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure | None = None) -> None:  # type: ignore[override]
        self.connected_ok = False
        if self._keepalive is not None and self._keepalive.active():
            self._keepalive.cancel()
        self._keepalive = None
        self.handler.connection_lost(self, reason or Failure(ConnectionError()))

    def _schedule_keepalive(self) -> None:
        self._keepalive = self.clock.callLater(KEEPALIVE_INTERVAL, self._check_alive)

    def _check_alive(self) -> None:
        silent = self.clock.seconds() - self._last_heard
        # Only servers known to answer ping can be judged by their silence.
        if self.pong_seen and silent >= DEAD_AFTER:
            self.log.warn("No word from the server in {s:.0f} s, reconnecting", s=silent)
            transport: Any = self.transport
            if transport is not None:
                transport.abortConnection()
            return
        if silent >= KEEPALIVE_INTERVAL:
            self.send_frame({"cmd": "ping", "data": "keepalive"})
        self._schedule_keepalive()


class _ChatFactory(Factory):
    def __init__(self, handler: FrameHandler, clock: IReactorTime) -> None:
        self.handler = handler
        self.clock = clock

    def buildProtocol(self, addr: object) -> ChatLineProtocol:
        proto = ChatLineProtocol(self.handler, self.clock)
        proto.factory = self
        return proto


@dataclass
class ServerAddress:
    host: str = "localhost"
    port: int = 2000
    tls: bool = False
    #: PEM file of a CA (or a self-signed certificate) to trust instead of the
    #: system's trust store; only used with ``tls``.
    cafile: str | None = None

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


def make_endpoint(reactor: Any, address: ServerAddress) -> IStreamClientEndpoint:
    endpoint: IStreamClientEndpoint = HostnameEndpoint(
        reactor, address.host, address.port, timeout=15
    )
    if address.tls:
        from twisted.internet import ssl

        trust = None
        if address.cafile:
            with open(address.cafile, "rb") as pem:
                trust = ssl.Certificate.loadPEM(pem.read())
        options = ssl.optionsForClientTLS(address.host, trustRoot=trust)
        endpoint = wrapClientTLS(options, endpoint)
    return endpoint


def parse_servers(
    text: str, default_port: int, tls: bool = False, cafile: str | None = None
) -> list[ServerAddress]:
    """``"a:2001,b:2002"`` (or one ``host``, or ``[::1]:2001``) as addresses;
    an entry without a port gets *default_port*. Raises ValueError for an
    entry whose port is not a number from 1 to 65535."""
    found: list[ServerAddress] = []
    for entry in text.split(","):
        entry = entry.strip()
        if not entry:
            continue
        host, port = entry, default_port
        if entry.startswith("["):  # [IPv6]:port
            close = entry.find("]")
            host, rest = entry[1:close], entry[close + 1 :]
            if rest.startswith(":"):
                port = _port(rest[1:], entry)
        elif entry.count(":") == 1:  # a bare IPv6 address has several
            host, _, number = entry.partition(":")
            port = _port(number, entry)
        found.append(ServerAddress(host, port, tls, cafile))
    if not found:
        raise ValueError("no server given")
    return found


def _port(text: str, entry: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"{entry}: the port must be a number from 1 to 65535")
    return int(text)


def describe(addresses: Sequence[ServerAddress]) -> str:
    return ",".join(str(a) for a in addresses)


@implementer(IStreamClientEndpoint)
class RoundRobinEndpoint:
    """Connects to each of several servers in turn: every attempt, the first
    and every reconnection, goes to the next one. So when a node of a cluster
    dies, the next attempt is another node; ``ClientService``'s back-off
    still spaces the attempts out."""

    def __init__(self, reactor: Any, addresses: Sequence[ServerAddress]) -> None:
        if not addresses:
            raise ValueError("no server given")
        self.reactor = reactor
        self.addresses = list(addresses)
        self._next = 0
        #: The server of the latest attempt.
        self.current = self.addresses[0]

    def connect(self, factory: Any) -> Deferred[Any]:
        self.current = self.addresses[self._next % len(self.addresses)]
        self._next += 1
        return make_endpoint(self.reactor, self.current).connect(factory)  # type: ignore[no-any-return]


RetryPolicy = Callable[[int], float]


def default_policy() -> RetryPolicy:
    """About 1 s for the first retry, growing to half a minute."""
    return backoffPolicy(initialDelay=0.7, maxDelay=30.0, factor=1.6)


class ConnectionKeeper:
    """Keeps one connection to the server up with ``ClientService``.

    ``on_wait(delay)`` is called each time the service schedules a retry, so
    the UI can count down ("reconnecting in 4 s"): ClientService exposes its
    delay only to the retry policy, which we wrap.
    """

    def __init__(
        self,
        reactor: Any,
        handler: FrameHandler,
        on_wait: Callable[[float], None],
        policy: RetryPolicy | None = None,
    ) -> None:
        self.reactor = reactor
        self.handler = handler
        self.on_wait = on_wait
        self.policy = policy or default_policy()
        self.service: ClientService | None = None
        self.endpoint: RoundRobinEndpoint | None = None

    @property
    def current(self) -> ServerAddress | None:
        """The server of the latest connection attempt."""
        return self.endpoint.current if self.endpoint is not None else None

    def _retry_after(self, attempt: int) -> float:
        delay = self.policy(attempt)
        self.on_wait(delay)
        return delay

    @property
    def running(self) -> bool:
        return self.service is not None

    def start(self, address: ServerAddress | Sequence[ServerAddress]) -> None:
        """Connect to *address*, or to each of several in turn (round robin)."""
        if self.service is not None:
            raise RuntimeError("already started")
        addresses = [address] if isinstance(address, ServerAddress) else list(address)
        self.endpoint = RoundRobinEndpoint(self.reactor, addresses)
        self.service = ClientService(
            self.endpoint,
            _ChatFactory(self.handler, self.reactor),
            retryPolicy=self._retry_after,
            clock=self.reactor,
        )
        self.service.startService()

    def stop(self) -> Deferred[None]:
        service, self.service = self.service, None
        if service is None:
            return succeed(None)
        stopped: Deferred[None] = service.stopService()
        return stopped
