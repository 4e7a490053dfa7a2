"""A connection: bounds, deadlines, and lines handed to its dialect.

One :class:`ChatProtocol` per connection. It speaks JSON to seed-000 clients
and plain ``name: text`` lines to seed-004 clients, deciding by the first
line which :mod:`dialect <chatserv.dialects>` reads its lines and renders the
hub's events for it; the dialect is the session's participant in the hub.
The connection holds no chat state of its own beyond its session: routing is
the hub's.

Output is gathered per connection and written once per reactor turn, and a
client that stops reading is cut off once its unsent output passes the
factory's bound instead of growing server memory (see :mod:`chatserv.output`).

Connections are bounded in number (overall and per client address) and in
time: one :class:`Sweeper` timer for all of them closes those that do not
finish a TLS handshake or log in in time, and pings, then closes, logged-in
connections that stop sending.

One broadcast's path, for N recipients: ``lineReceived`` →
``JsonDialect.line`` → ``Hub.broadcast`` (the store commits it, then the hub
hands it to the room's plan) → for the JSON connections, once per message,
``RoomWrite.deliver`` (encoded once, a list append); at the end of the turn
``OutputFlusher.flush`` → ``RoomWrite.write`` → one
``chatserv.fanout.send_all`` call, a ``send()`` per socket in C (see
:mod:`chatserv.output`). Plain-text connections still get
``Dialect.receive_message`` → ``OutputQueue.send`` per recipient.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IHalfCloseableProtocol, IHandshakeListener, IReactorTime
from twisted.internet.protocol import Factory
from twisted.internet.task import LoopingCall
from twisted.protocols.basic import LineReceiver
from twisted.protocols.tls import TLSMemoryBIOProtocol
from zope.interface import implementer

from . import wire
from .accounts import Accounts
from .addresses import describe, host, source
from .dialects.base import Dialect
from .dialects.jsonlines import BadRequest, JsonDialect
from .dialects.plain import PlainDialect
from .errors import ChatError
from .hub import Hub, Session
from .logs import LogBudget, Logger
from .output import OutputFlusher, OutputQueue, RoomFanout
from .ratelimit import TokenBucket
from .stats import ConnectionStats
from .storage import MessageStore

log = Logger()

@dataclass
class Limits:
    """Per-connection bounds; see docs/PROTOCOL.md, "Bounds"."""

    max_line: int = 65_536
    rate_limit: float = 5.0
    rate_burst: int = 20
    max_output: int = 1 << 20
    max_connections: int = 20_000
    #: connections from one client address (an IPv6 /64); 0: no limit
    max_per_address: int = 64
    #: seconds from connecting to a successful login; 0: no deadline
    login_timeout: float = 60.0
    #: seconds a logged-in connection may send nothing before it is pinged; 0: never
    idle_timeout: float = 300.0
    #: seconds a pinged connection has to send something before it is closed
    ping_grace: float = 60.0
    #: seconds a TLS connection has to complete its handshake
    handshake_timeout: float = 10.0
    #: longest line (or unfinished line held) before login; a login frame
    #: with a 1,024-character password escaped as \uXXXX pairs still fits
    max_login_line: int = 16_384


#: Seconds a closing connection may take to drain before it is aborted.
CLOSE_GRACE = 10.0
#: Seconds between two sweeps of the connection deadlines.
SWEEP_INTERVAL = 1.0
#: Seconds between two ``rate_limited`` answers to lines the rate limit drops.
RATE_LIMIT_NOTICE = 1.0


class Sweeper:
    """Enforces every connection's deadlines with one timer for all of them.

    Every :data:`SWEEP_INTERVAL` seconds it walks the factory's connections
    (a few milliseconds for 20,000): a TLS connection without a finished
    handshake after ``handshake_timeout`` is aborted, one not logged in after
    ``login_timeout`` gets ``login_timeout`` and is closed, and one logged in
    that has sent no line for ``idle_timeout`` is sent a ping, then closed
    with ``idle_timeout`` if it sends nothing for ``ping_grace`` more. A
    connection only raises a flag per line it sends; the sweep turns flags
    into times. The timer runs only while there are connections.
    """

    def __init__(self, factory: ChatFactory) -> None:
        self.factory = factory
        self._loop = LoopingCall(self.sweep)
        self._loop.clock = factory.clock

    def wake(self) -> None:
        if not self._loop.running:
            self._loop.start(SWEEP_INTERVAL, now=False)

    def sweep(self) -> None:
        factory = self.factory
        connections = factory.connections
        if not connections:
            self._loop.stop()
            return
        limits = factory.limits
        now = factory.clock.seconds()
        handshake, login, idle, grace = (
            limits.handshake_timeout,
            limits.login_timeout,
            limits.idle_timeout,
            limits.ping_grace,
        )
        for c in list(connections):
            if c._heard:
                c._heard = False
                c._last_heard = now
                c._pinged = None
            if c._closing:
                continue
            if c.session is None:
                if handshake and not c._handshaken and now - c._since >= handshake:
                    log.debug("no TLS handshake from {peer} in time", peer=c._peer)
                    c.transport.abortConnection()
                elif login and now - c._since >= login:
                    c.error("login_timeout", f"no has iniciado sesión en {login:g} s")
                    c._close()
            elif idle and now - c._last_heard >= idle:
                if c._pinged is None:
                    c._pinged = now
                    c.send(c.dialect.ping)
                elif now - c._pinged >= grace:
                    c.error("idle_timeout", f"sin noticias de ti en {now - c._last_heard:.0f} s")
                    c._close()



@implementer(IHandshakeListener, IHalfCloseableProtocol)
class ChatProtocol(OutputQueue, LineReceiver):
    """One client connection, JSON or plain text."""

    delimiter = b"\n"
    factory: ChatFactory
    # A TCP or TLS transport: it is also an IProducer consumer and can abort.
    transport: Any
    #: Reads the lines and renders the hub's events: set to JSON when the
    #: connection is made (so errors before any line are JSON frames), and
    #: replaced by plain text if the first line says so.
    dialect: Dialect

    def __init__(self) -> None:
        OutputQueue.__init__(self)
        self.session: Session | None = None
        #: Whether the first line was plain text; None until it came.
        self.plain: bool | None = None
        self._lost = False
        self._bucket: TokenBucket | None = None
        #: When a line dropped by the rate limit is answered again.
        self._refuse_again = 0.0
        self._peer = "?"
        self._address: str | None = None  # counted in factory.per_address
        self._since = 0.0
        self._handshaken = True
        #: a line arrived since the last sweep; see Sweeper
        self._heard = False
        self._last_heard = 0.0
        self._pinged: float | None = None
        self._held: Deferred[Any] | None = None
        self._reading = True
        #: The client shut its sending side: close once what it sent is handled.
        self._eof = False

    # -- connection life --------------------------------------------------

    def connectionMade(self) -> None:
        factory = self.factory
        self.dialect = JsonDialect(self)
        limits = factory.limits
        self.MAX_LENGTH = min(limits.max_line, limits.max_login_line)
        peer = self.transport.getPeer()
        self._peer = describe(peer)
        self._open_output()
        if limits.rate_limit > 0:
            self._bucket = TokenBucket(limits.rate_limit, limits.rate_burst, factory.clock.seconds)
        if len(factory.connections) >= limits.max_connections:
            factory.stats.refused += 1
            factory.log_budget.line(
                "connections refused (server full)",
                host(peer),
                "refusing {peer}: connection limit reached",
                emit=log.warn,
                peer=self._peer,
            )
            self.transport.write(wire.error_frame("server_full", "el servidor está lleno"))
            self._close()
            return
        address = host(peer)
        if limits.max_per_address and factory.per_address.get(address, 0) >= limits.max_per_address:
            factory.stats.refused += 1
            log.debug("refusing {peer}: too many connections from its address", peer=self._peer)
            self.transport.write(
                wire.error_frame(
                    "too_many_connections",
                    f"demasiadas conexiones desde tu dirección (máximo {limits.max_per_address})",
                )
            )
            self._close()
            return
        self._address = address
        factory.per_address[address] = factory.per_address.get(address, 0) + 1
        factory.connections.add(self)
        factory.stats.accepted += 1
        self._since = self._last_heard = factory.clock.seconds()
        self._handshaken = not isinstance(self.transport, TLSMemoryBIOProtocol)
        factory.sweeper.wake()
        # Registered as a streaming producer so the transport tells us when
        # its buffer is full (pauseProducing) and when it drained.
        self.transport.registerProducer(self, True)
        # Output is already gathered per reactor turn, so Nagle's algorithm
        # has nothing left to coalesce; it would only hold a turn's last
        # segment back for an ACK (40 ms with delayed ACKs on real networks).
        no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if no_delay is not None:
            no_delay(True)
        log.debug("connection from {peer}", peer=self._peer)

    def handshakeCompleted(self) -> None:
        self._handshaken = True

    def connectionLost(self, reason: object = None) -> None:
        self._closing = True
        self._out = []
        if self._fd >= 0:
            # Its descriptor is closed, and may soon be another connection's.
            self._hold_flags[self._fd] = 1
        self._lost = True
        factory = self.factory
        factory.connections.discard(self)
        if self._address is not None:
            left = factory.per_address[self._address] - 1
            if left:
                factory.per_address[self._address] = left
            else:
                del factory.per_address[self._address]
            self._address = None
        if self._held is not None:
            # Nobody waits for it now: a queued password check is dropped.
            self._held.cancel()
        if self.session is not None:
            self._leave_hub()
        else:
            log.debug("connection from {peer} closed", peer=self._peer)

    def readConnectionLost(self) -> None:
        """The client has sent all it will (``printf … | nc``): handle every
        line it sent, a pending login first, then hang up as ``/quit`` does."""
        self._eof = True
        self._reading = False
        if self._held is None:
            self._close()

    def writeConnectionLost(self) -> None:
        # The client reads no more: nothing it is sent can arrive.
        self.transport.abortConnection()

    def _close(self) -> None:
        """Say goodbye: flush what is queued, leave the hub now, then hang up.

        The session leaves at once rather than at ``connectionLost``, because
        a peer that does not read would otherwise keep its name for as long
        as it keeps the socket open. Such a peer is aborted outright, and one
        that stops reading after this gets ``CLOSE_GRACE`` seconds.
        """
        if self._closing and self.session is None:
            return
        # Room frames waiting for this connection are part of what it is owed.
        self.flush()
        self._closing = True
        self.flush()
        self._leave_hub()
        if not self._writable:
            self.transport.abortConnection()
            return
        self.transport.loseConnection()
        self.factory.clock.callLater(CLOSE_GRACE, self._abort_if_connected)

    def _abort_if_connected(self) -> None:
        if not self._lost:
            self.transport.abortConnection()

    def _leave_hub(self) -> None:
        if self.session is not None:
            session, self.session = self.session, None
            self.factory.hub.logout(session)
            self.factory.log_budget.line(
                "logouts",
                source(self._peer),
                "{name} logged out ({peer})",
                name=session.name,
                peer=self._peer,
            )

    def error(self, code: str, msg: str, ref: str | None = None) -> None:
        self.factory.stats.errors[code] += 1
        self.send(self.dialect.render_error(code, msg, ref))

    # -- input ------------------------------------------------------------

    def lineLengthExceeded(self, line: bytes) -> None:
        if self._closing:
            return
        budget = self.factory.log_budget
        budget.line("lines too long", source(self._peer), "line too long from {peer}", peer=self._peer)
        self.error("line_too_long", f"línea de más de {self.MAX_LENGTH} bytes")
        self._close()

    def dataReceived(self, data: bytes) -> Any:
        why = LineReceiver.dataReceived(self, data)
        if self.paused and self._reading and len(self._buffer) > self.MAX_LENGTH:
            # A request is held (see _hold) and the client keeps sending:
            # leave the rest in the kernel until it is answered.
            self._reading = False
            self.transport.pauseProducing()
        return why

    def lineReceived(self, line: bytes) -> None:
        if self._closing:
            return
        self._heard = True
        if line.endswith(b"\r"):
            line = line[:-1]
        if self.plain is None:
            stripped = line.lstrip()
            if not stripped:
                return
            self.plain = not stripped.startswith(b"{")
            if self.plain:
                self.dialect = PlainDialect(self)
        if self._bucket is not None and not self._bucket.allow():
            self.factory.stats.rate_limited += 1
            self.factory.log_budget.tally("rate-limited lines", source(self._peer))
            # One answer per second at most: a flood must not be answered
            # line by line, which would cost more than dropping it.
            now = self.factory.clock.seconds()
            if now >= self._refuse_again:
                self._refuse_again = now + RATE_LIMIT_NOTICE
                self.error("rate_limited", "demasiados mensajes; espera un momento")
            return
        self.dialect.line(line)

    def _hold(self, d: Deferred[Any], then: Callable[[Any], None], ref: str | None) -> None:
        """Read no further input until *d* fires, then call *then* with its result.

        Commands that wait on storage or a password hash (login, register,
        history, joining a room not in memory) go through here. Lines that
        arrive meanwhile wait in the line buffer, then in the kernel, and are
        handled in order once *d* has fired, exactly as if it had fired at
        once: a client may pipeline frames after ``login``. It also bounds
        every connection to one such request in flight. Reading goes on
        (up to a line's worth, see dataReceived) so that a client that leaves
        is noticed: *d* is then cancelled (a waiting password check never
        runs) and its result, if it comes anyway, dropped, so a login that
        completes after its client left creates no session.
        """
        self.paused = True  # LineReceiver stops splitting lines
        self._held = d

        def done(result: Any) -> None:
            if self._closing:
                return
            try:
                then(result)
            except (BadRequest, ChatError) as e:
                self.error(e.code, wire.error_text(e), ref)

        def failed(failure: Any) -> None:
            if self._closing:
                return
            if failure.check(ChatError, BadRequest):
                self.error(failure.value.code, wire.error_text(failure.value), ref)
            else:
                log.failure("{ref} failed for {peer}", failure, ref=ref, peer=self._peer)
                self.error("server_error", "el servidor no ha podido atender la petición", ref)

        def resume(_: object) -> None:
            self.paused = False
            self._held = None
            if not self._closing:
                if not self._reading and not self._eof:
                    self._reading = True
                    self.transport.resumeProducing()
                self.dataReceived(b"")  # the lines that waited
                if self._eof and self._held is None:
                    self._close()

        d.addCallbacks(done, failed).addBoth(resume)


class ChatFactory(Factory):
    """Builds :class:`ChatProtocol` connections onto one hub."""

    protocol = ChatProtocol  # type: ignore[assignment]
    noisy = False

    def __init__(
        self,
        hub: Hub,
        clock: IReactorTime,
        limits: Limits | None = None,
        *,
        accounts: Accounts | None = None,
        history: MessageStore | None = None,
    ) -> None:
        self.hub = hub
        self.clock = clock
        self.limits = limits or Limits()
        #: With a database (chatserv.storage): the accounts for register and
        #: passwords, and the stored messages for history pages and look-ups.
        self.accounts = accounts
        self.history = history
        self.flusher = OutputFlusher(clock)
        #: The JSON dialect's room frames are the same bytes for every
        #: connection: its participants share this fan-out (see Hub._plan).
        self.room_fanout = RoomFanout(wire.broadcast_frame, self.flusher)
        self.connections: set[ChatProtocol] = set()
        #: open connections per client address (see _host)
        self.per_address: dict[str, int] = {}
        self.sweeper = Sweeper(self)
        #: Counts for the metrics, and the log budget for lines clients cause.
        self.stats = ConnectionStats()
        self.log_budget = LogBudget(clock, log)

    def disconnect_all(self) -> None:
        for protocol in list(self.connections):
            protocol._close()
