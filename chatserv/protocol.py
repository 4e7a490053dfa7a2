"""The line protocol: frames in, hub calls out; hub events in, frames out.

One :class:`ChatProtocol` per connection. It speaks JSON to seed-000 clients and
plain ``name: text`` lines to seed-004 clients, deciding by the first line. It
holds no chat state of its own beyond its session: routing is the hub's.

Output is gathered per connection and written once per reactor turn (see
:class:`OutputFlusher`), and a client that stops reading is cut off once its
unsent output passes the factory's bound instead of growing server memory.

Connections are bounded in number (overall and per client address) and in
time: one :class:`Sweeper` timer for all of them closes those that do not
finish a TLS handshake or log in in time, and pings, then closes, logged-in
connections that stop sending.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet.abstract import FileDescriptor
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IHalfCloseableProtocol,
    IHandshakeListener,
    IReactorTime,
)
from twisted.internet.protocol import Factory
from twisted.internet.task import LoopingCall
from twisted.protocols.basic import LineReceiver
from twisted.protocols.tls import TLSMemoryBIOProtocol
from zope.interface import implementer

from . import conversation, wire
from .accounts import Accounts, Identity
from .errors import AuthFailed, ChatError, InvalidName, NameTaken
from .events import ChatMessage, Correction, PresenceChange, Typing
from .hub import GENERAL, ROOMS_PAGE, Hub, Session
from .logs import LogBudget, Logger
from .names import BadName, check_name, name_key
from .ratelimit import TokenBucket
from .stats import ConnectionStats
from .storage import MessageStore, paging

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
#: Most bytes handed to a transport in one write: a transport buffers all it
#: is given, so larger output is handed over in slices while it takes them.
HANDOVER = 64 * 1024


class BadRequest(Exception):
    """A frame that is well-formed JSON but not a valid command."""

    def __init__(self, msg: str, code: str = "bad_request") -> None:
        super().__init__(msg)
        self.code = code


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON")


# Python's parser accepts NaN, Infinity and -Infinity; JSON does not.
_loads = json.JSONDecoder(parse_constant=_not_json).decode


def _text(frame: dict[str, Any], field: str) -> str:
    value = frame.get(field)
    if not isinstance(value, str):
        raise BadRequest(f"el campo {field!r} debe ser un texto")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise BadRequest(f"el campo {field!r} no es Unicode válido") from None
    return value


def _optional_text(frame: dict[str, Any], field: str) -> str | None:
    if frame.get(field) is None:
        return None
    return _text(frame, field)


class OutputFlusher:
    """Writes every connection's gathered output once, at the end of the reactor turn.

    One delayed call serves all connections, so a broadcast to N clients costs
    N list appends during the turn and N ``write`` calls after it, however many
    messages each client received in that turn.
    """

    def __init__(self, clock: IReactorTime) -> None:
        self.clock = clock
        self._pending: list[ChatProtocol] = []
        self._call: IDelayedCall | None = None

    def schedule(self, protocol: ChatProtocol) -> None:
        self._pending.append(protocol)
        if self._call is None:
            self._call = self.clock.callLater(0, self.flush)

    def flush(self) -> None:
        self._call = None
        pending, self._pending = self._pending, []
        for protocol in pending:
            protocol.flush()


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
                    c.send(wire.plain_line(PLAIN_PING) if c.plain else PING)
                elif now - c._pinged >= grace:
                    c.error("idle_timeout", f"sin noticias de ti en {now - c._last_heard:.0f} s")
                    c._close()


PING = wire.frame({"cmd": "ping"})
PLAIN_PING = "* ¿Sigues ahí? Escribe cualquier línea (o pulsa Enter) para seguir conectado."


@implementer(IHandshakeListener, IHalfCloseableProtocol)
class ChatProtocol(LineReceiver):
    """One client connection, JSON or plain text."""

    delimiter = b"\n"
    factory: ChatFactory
    # A TCP or TLS transport: it is also an IProducer consumer and can abort.
    transport: Any

    def __init__(self) -> None:
        self.session: Session | None = None
        self.plain: bool | None = None  # decided by the first line
        self.features: frozenset[str] = frozenset()
        self._out: list[bytes] = []
        self._out_bytes = 0
        self._scheduled = False
        self._writable = True
        self._closing = False
        self._lost = False
        self._bucket: TokenBucket | None = None
        self._peer = "?"
        self._address: str | None = None  # counted in factory.per_address
        self._socket: Any = None
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
        #: Private history is readable from this time on (see accounts.Identity).
        self.history_since = 0.0
        #: A plain-text client that asked for message ids (``/ids on``).
        self.plain_ids = False

    # -- connection life --------------------------------------------------

    def connectionMade(self) -> None:
        factory = self.factory
        limits = factory.limits
        self.MAX_LENGTH = min(limits.max_line, limits.max_login_line)
        peer = self.transport.getPeer()
        self._peer = _describe(peer)
        self._socket = _socket_of(self.transport)
        if limits.rate_limit > 0:
            self._bucket = TokenBucket(limits.rate_limit, limits.rate_burst, factory.clock.seconds)
        if len(factory.connections) >= limits.max_connections:
            factory.stats.refused += 1
            factory.log_budget.line(
                "connections refused (server full)",
                _host(peer),
                "refusing {peer}: connection limit reached",
                emit=log.warn,
                peer=self._peer,
            )
            self.transport.write(wire.error_frame("server_full", "el servidor está lleno"))
            self._close()
            return
        address = _host(peer)
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
                _source(self._peer),
                "{name} logged out ({peer})",
                name=session.name,
                peer=self._peer,
            )

    # -- output -----------------------------------------------------------

    def send(self, data: bytes) -> None:
        """Queue *data* for the end of this reactor turn.

        Every queued byte counts against ``--max-output``, the frame being
        queued included: past the bound, a connection whose transport is
        paused (the kernel and the transport hold all they will) is dropped,
        and one that is still writable hands its output over at once, so
        that only what the client really leaves unread is held (see flush).
        """
        if self._closing:
            return
        self._out.append(data)
        self._out_bytes += len(data)
        if self._out_bytes > self.factory.limits.max_output:
            if not self._writable:
                self._drop()
                return
            self._write_out()
            return
        if not self._scheduled:
            self._scheduled = True
            self.factory.flusher.schedule(self)

    def _drop(self) -> None:
        self.factory.stats.slow_dropped += 1
        self.factory.log_budget.line(
            "slow consumers dropped",
            _source(self._peer),
            "dropping {who}: {n} bytes of unread output",
            emit=log.warn,
            who=self.session.name if self.session else self._peer,
            n=self._out_bytes,
        )
        self._closing = True
        self._out = []
        self._out_bytes = 0
        self.transport.abortConnection()

    def flush(self) -> None:
        self._scheduled = False
        self._write_out()

    def _write_out(self) -> None:
        if not self._writable or not self._out:
            return
        out = self._out
        data = out[0] if len(out) == 1 else b"".join(out)
        self._out = []
        self._out_bytes = 0
        transport = self.transport
        sock = self._socket
        if sock is not None and not transport.dataBuffer and not transport._tempDataBuffer:
            # See _socket_of. Whatever the kernel does not take, or any error,
            # goes through the transport, which then owns ordering,
            # back-pressure and error reporting as usual.
            try:
                sent = sock.send(data)
            except OSError:
                sent = 0
            if sent == len(data):
                return
            data = data[sent:]
        if len(data) <= HANDOVER:
            transport.write(data)
            return
        # A transport buffers whatever it is given, without bound: hand a
        # large output over a slice at a time, while the transport has not
        # paused us (it does so synchronously past its 64 KiB buffer). What
        # it did not take stays queued here and counts against the bound.
        view = memoryview(data)
        pos = 0
        while pos < len(data) and self._writable:
            transport.write(view[pos : pos + HANDOVER].tobytes())
            pos += HANDOVER
        if pos < len(data):
            self._out = [data[pos:]]
            self._out_bytes = len(data) - pos
            if self._out_bytes > self.factory.limits.max_output:
                self._drop()

    # IPushProducer, called by the transport. These replace LineReceiver's own
    # pause methods on purpose: a full output buffer must not stop us reading.
    def pauseProducing(self) -> None:
        self._writable = False

    def resumeProducing(self) -> None:
        self._writable = True
        self.flush()

    def stopProducing(self) -> None:
        self._writable = False

    def error(self, code: str, msg: str, ref: str | None = None) -> None:
        self.factory.stats.errors[code] += 1
        if self.plain:
            self.send(wire.plain_error(code, msg))
        else:
            self.send(wire.error_frame(code, msg, ref))

    # -- input ------------------------------------------------------------

    def lineLengthExceeded(self, line: bytes) -> None:
        if self._closing:
            return
        budget = self.factory.log_budget
        budget.line("lines too long", _source(self._peer), "line too long from {peer}", peer=self._peer)
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
        if self._bucket is not None and not self._bucket.allow():
            self.factory.stats.rate_limited += 1
            self.factory.log_budget.tally("rate-limited lines", _source(self._peer))
            self.error("rate_limited", "demasiados mensajes; espera un momento")
            return
        if self.plain:
            self._plain_line(line)
        else:
            self._json_line(line)

    def _json_line(self, line: bytes) -> None:
        if not line.strip():
            return
        try:
            frame = _loads(line.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            # ValueError covers JSONDecodeError and integers too long to parse.
            self.error("bad_json", "la línea no es JSON válido en UTF-8")
            return
        if not isinstance(frame, dict):
            self.error("bad_request", "cada línea debe ser un objeto JSON")
            return
        cmd = frame.get("cmd")
        if not isinstance(cmd, str):
            self.error("bad_request", "falta el campo 'cmd'")
            return
        handler = self._json_commands.get(cmd)
        ref = cmd if handler is not None else None
        try:
            if handler is None:
                raise BadRequest("comando desconocido", "unknown_cmd")
            if self.session is None and cmd not in ("login", "ping", "pong", "register"):
                raise BadRequest("primero inicia sesión con 'login'", "not_logged_in")
            handler(self, frame)
        except BadRequest as e:
            self.error(e.code, wire.error_text(e), ref)
        except ChatError as e:
            self.error(e.code, wire.error_text(e), ref)

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

    # -- JSON commands ----------------------------------------------------

    def _cmd_login(self, frame: dict[str, Any]) -> None:
        if self.session is not None:
            raise BadRequest("ya has iniciado sesión")
        user = frame.get("user")
        if not isinstance(user, str):
            raise BadRequest("el campo 'user' debe ser un texto")
        features = frame.get("features", [])
        if not isinstance(features, list) or not all(isinstance(f, str) for f in features):
            raise BadRequest("el campo 'features' debe ser una lista de textos")
        password = frame.get("password")
        if password is not None and not isinstance(password, str):
            raise BadRequest("el campo 'password' debe ser un texto")
        accounts = self.factory.accounts
        if accounts is not None:
            if password is None:
                d = accounts.admit_guest(user)
            else:
                d = accounts.authenticate(user, password, _host(self.transport.getPeer()))
            self._hold(d, lambda identity: self._login_as(identity, features), "login")
            return
        if password is not None:
            raise AuthFailed("este servidor no tiene cuentas")
        self._login_as(Identity(user, self.factory.clock.seconds(), False), features)

    def _login_as(self, identity: Identity, features: list[str]) -> None:
        self.session = self.factory.hub.login(self, identity.name)
        self.MAX_LENGTH = self.factory.limits.max_line
        self.history_since = identity.since
        self.features = frozenset(features)
        general = self.factory.hub.rooms[GENERAL]
        # The `users` half of the answer follows with the room's presence
        # change, which always includes this login (see wire.presence_frames).
        self.send(self.factory.hub.window_frame(general, "json-history", wire.room_history_frame))
        self.factory.log_budget.line(
            "logins",
            _source(self._peer),
            "{name} logged in from {peer}",
            name=self.session.name,
            peer=self._peer,
        )

    def _cmd_register(self, frame: dict[str, Any]) -> None:
        user = _text(frame, "user")
        password = _text(frame, "password")
        accounts = self.factory.accounts
        if accounts is None:
            raise BadRequest("este servidor no tiene cuentas")
        holder = self.factory.hub.find(user)
        if holder is not None and holder.participant is not self:
            # Online names are not up for grabs; a guest may register its own.
            raise NameTaken("name_taken", name=holder.name)
        d = accounts.register(user, password, _host(self.transport.getPeer()))
        self._hold(d, lambda name: self.send(wire.frame({"cmd": "registered", "user": name})), "register")

    def _cmd_history(self, frame: dict[str, Any]) -> None:
        assert self.session is not None
        d = paging.history(self.factory.hub, self.factory.history, self.session, frame, self.history_since)
        self._hold(d, self.send, "history")

    def _cmd_broadcast(self, frame: dict[str, Any]) -> None:
        assert self.session is not None
        text = _text(frame, "msg")
        if frame.get("reply_to") is not None:
            self._reply(frame, text, "broadcast", room=_optional_text(frame, "room"))
            return
        self.factory.hub.broadcast(self.session, text, _optional_text(frame, "room"))

    def _cmd_message(self, frame: dict[str, Any]) -> None:
        assert self.session is not None
        to = _text(frame, "to")
        text = _text(frame, "msg")
        if frame.get("reply_to") is not None:
            self._reply(frame, text, "message", to=to)
            return
        self.factory.hub.private(self.session, to, text)

    # -- replies, edits, deletes (see chatserv.conversation) ---------------

    def _reply(
        self, frame: dict[str, Any], text: str, ref: str, room: str | None = None, to: str | None = None
    ) -> None:
        """Post *text* as a reply to ``frame["reply_to"]``: find the original
        (perhaps in storage), let the hub check the session may quote it in
        this conversation, then post. Nothing is posted if it may not."""
        assert self.session is not None
        session, hub = self.session, self.factory.hub
        wanted = conversation.message_id(frame, "reply_to")
        assert wanted is not None
        if to is None:
            rooms = [hub.member_room(session, room).name]  # not_in_room before any look-up
        else:
            rooms = []

        def post(original: ChatMessage | None) -> None:
            quote = hub.reply_quote(session, original, room_name=room, to=to, since=self.history_since)
            if to is None:
                hub.broadcast(session, text, room, reply_to=quote)
            else:
                hub.private(session, to, text, reply_to=quote)

        self._hold(conversation.find(hub, self.factory.history, wanted, rooms), post, ref)

    def _cmd_edit(self, frame: dict[str, Any]) -> None:
        wanted = conversation.message_id(frame, "id")
        if wanted is None:
            raise BadRequest("falta el campo 'id'")
        self._correct(wanted, _text(frame, "msg"), "edit")

    def _cmd_delete(self, frame: dict[str, Any]) -> None:
        wanted = conversation.message_id(frame, "id")
        if wanted is None:
            raise BadRequest("falta el campo 'id'")
        self._correct(wanted, None, "delete")

    def _correct(self, wanted: int, text: str | None, ref: str) -> None:
        assert self.session is not None
        session, hub = self.session, self.factory.hub
        found = conversation.find(hub, self.factory.history, wanted, sorted(session.rooms))

        def correct(original: ChatMessage | None) -> None:
            hub.correct(session, original, text, self.history_since)

        self._hold(found, correct, ref)

    def _cmd_users(self, frame: dict[str, Any]) -> None:
        assert self.session is not None
        # Who is in a room is for its members, as its messages and presence
        # are; `rooms` tells anyone which rooms exist and how full they are.
        room = self.factory.hub.member_room(self.session, _optional_text(frame, "room"))
        self.send(wire.users_frame(room.name, room.names()))

    def _cmd_typing(self, frame: dict[str, Any]) -> None:
        assert self.session is not None
        self.factory.hub.typing(
            self.session, to=_optional_text(frame, "to"), room_name=_optional_text(frame, "room")
        )

    def _cmd_join(self, frame: dict[str, Any]) -> None:
        hub, store = self.factory.hub, self.factory.history
        room_name = frame.get("room")
        if isinstance(room_name, str) and paging.needs_loading(hub, store, room_name):
            # Not in memory, but storage may hold its history: read the
            # window before entering, so the answer carries it. A join that
            # would be refused is refused first, without reading anything.
            assert self.session is not None
            hub.admit(self.session, room_name)

            def enter(messages: list[ChatMessage]) -> None:
                hub.restore(room_name, messages)
                self._join_room(frame, admitted=True)

            self._hold(paging.load_room(hub, store, room_name), enter, "join")
            return
        self._join_room(frame)

    def _join_room(self, frame: dict[str, Any], admitted: bool = False) -> None:
        assert self.session is not None
        hub = self.factory.hub
        room_name = _text(frame, "room")  # ill-typed is bad_request, not bad_name
        existing = hub.room(room_name)
        already_in = existing is not None and existing.name in self.session.rooms
        room = hub.join(self.session, room_name, admitted=admitted)
        self.send(hub.window_frame(room, "json-history", wire.room_history_frame))
        if already_in:
            # No presence change will follow; answer with the list now.
            self.send(wire.users_frame(room.name, room.names()))

    def _cmd_leave(self, frame: dict[str, Any]) -> None:
        assert self.session is not None
        name = self.factory.hub.leave(self.session, _text(frame, "room"))
        self.send(wire.frame({"cmd": "left", "room": name}))

    def _cmd_rooms(self, frame: dict[str, Any]) -> None:
        # Pages in the order of the rooms' keys: a client pages on with
        # `after` set to the last name it got (see docs/PROTOCOL.md, Rooms).
        after = _optional_text(frame, "after")
        if after is not None:
            try:
                after = check_name(after)
            except BadName as e:
                raise InvalidName(str(e)) from None
        limit = frame.get("limit", ROOMS_PAGE)
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
            raise BadRequest("el campo 'limit' debe ser un entero positivo")
        hub = self.factory.hub
        page, more = hub.room_page(after, min(limit, ROOMS_PAGE))
        rooms = [{"name": room.name, "members": len(room.members)} for room in page]
        self.send(wire.frame({"cmd": "rooms", "list": rooms, "more": more, "total": len(hub.rooms)}))

    def _cmd_ping(self, frame: dict[str, Any]) -> None:
        pong: dict[str, Any] = {"cmd": "pong"}
        if "data" in frame:
            pong["data"] = frame["data"]
        try:
            data = wire.frame(pong)
        except (ValueError, RecursionError):
            # A lone surrogate (UnicodeEncodeError is a ValueError), a number
            # JSON cannot carry, or nesting the encoder cannot follow.
            raise BadRequest("el campo 'data' no se puede devolver") from None
        self.send(data)

    def _cmd_pong(self, frame: dict[str, Any]) -> None:
        pass  # the answer to the server's ping; that a line came is what counts

    _json_commands: dict[str, Callable[[ChatProtocol, dict[str, Any]], None]] = {
        "login": _cmd_login,
        "broadcast": _cmd_broadcast,
        "message": _cmd_message,
        "users": _cmd_users,
        "typing": _cmd_typing,
        "join": _cmd_join,
        "leave": _cmd_leave,
        "rooms": _cmd_rooms,
        "ping": _cmd_ping,
        "pong": _cmd_pong,
        "register": _cmd_register,
        "history": _cmd_history,
        "edit": _cmd_edit,
        "delete": _cmd_delete,
    }

    # -- plain-text dialect -----------------------------------------------

    def _plain_line(self, line: bytes) -> None:
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            self.error("bad_json", "la línea no es UTF-8 válido")
            return
        if not text.strip():
            return
        try:
            if self.session is None:
                self._plain_login(text)
            else:
                self._plain_text(text)
        except ChatError as e:
            self.error(e.code, wire.error_text(e))

    def _plain_login(self, text: str) -> None:
        accounts = self.factory.accounts
        command, _, args = text.partition(" ")
        if command == "/help":
            lines = PLAIN_LOGIN_HELP if accounts is not None else PLAIN_LOGIN_HELP[:1]
            for line in lines:
                self.send(wire.plain_line(line))
            return
        if accounts is not None and command in ("/login", "/register"):
            # Plain clients use an account with "/login NAME PASSWORD"
            # (the password is the rest of the line).
            user, _, password = args.strip().partition(" ")
            if not user or not password:
                raise ChatError(f"uso: {command} NOMBRE CONTRASEÑA")
            host = _host(self.transport.getPeer())
            if command == "/login":
                d = accounts.authenticate(user, password, host)
                self._hold(d, lambda identity: self._plain_login_as(identity, ""), "login")
                return
            holder = self.factory.hub.find(user)
            if holder is not None:
                raise NameTaken("name_taken", name=holder.name)
            made = accounts.register(user, password, host)
            self._hold(made, lambda name: self.send(wire.plain_line(f"* Cuenta {name} creada.")), "register")
            return
        name, colon, rest = text.partition(":")
        first = rest if colon else ""
        if accounts is not None:
            d = accounts.admit_guest(name.strip()).addErrback(_with_login_hint)
            self._hold(d, lambda identity: self._plain_login_as(identity, first), "login")
            return
        self._plain_login_as(Identity(name.strip(), self.factory.clock.seconds(), False), first)

    def _plain_login_as(self, identity: Identity, rest: str) -> None:
        hub = self.factory.hub
        self.session = hub.login(self, identity.name)
        self.MAX_LENGTH = self.factory.limits.max_line
        self.history_since = identity.since
        self.factory.log_budget.line(
            "logins",
            _source(self._peer),
            "{name} logged in (plain text) from {peer}",
            name=self.session.name,
            peer=self._peer,
        )
        self.send(
            wire.plain_line(
                f"* Hola, {self.session.name}. Escribe y pulsa Enter."
                " Órdenes: /help, /users, /msg NOMBRE texto, /quit."
            )
        )
        window = wire.plain_window(hub.recent(GENERAL))
        if window:
            self.send(window)
        self.send(wire.plain_line("* En línea: " + ", ".join(hub.users(GENERAL))))
        if rest.strip():
            hub.broadcast(self.session, rest[1:] if rest.startswith(" ") else rest)

    def _plain_text(self, text: str) -> None:
        assert self.session is not None
        hub = self.factory.hub
        prefix, colon, rest = text.partition(":")
        if colon and name_key(prefix.strip()) == self.session.key:
            # Seed 004 clients prefix every line with their own name.
            text = rest[1:] if rest.startswith(" ") else rest
            if not text.strip():
                return
        if text.startswith("//"):
            text = text[1:]
        elif text.startswith("/"):
            self._plain_command(text)
            return
        hub.broadcast(self.session, text)

    def _plain_command(self, text: str) -> None:
        assert self.session is not None
        command, _, args = text.partition(" ")
        hub = self.factory.hub
        if command == "/users":
            self.send(wire.plain_line("* En línea: " + ", ".join(hub.users(GENERAL))))
        elif command == "/msg":
            to, _, body = args.strip().partition(" ")
            if not to or not body:
                self.error("bad_request", "uso: /msg NOMBRE texto")
                return
            hub.private(self.session, to, body)
        elif command == "/quit":
            self._close()
        elif command == "/help":
            for line in PLAIN_HELP:
                self.send(wire.plain_line(line))
        elif command in _PLAIN_CONVERSATION:
            self._plain_conversation(command, args.strip())
        else:
            self.error("unknown_cmd", f"orden desconocida {command}; usa // para empezar con /")

    def _plain_conversation(self, command: str, args: str) -> None:
        """``/ids on|off``, ``/re ID text``, ``/edit ID text``, ``/del ID``."""
        if command == "/ids":
            if args not in ("on", "off"):
                self.error("bad_request", "uso: /ids on | /ids off")
                return
            self.plain_ids = args == "on"
            state = "Se muestran" if self.plain_ids else "No se muestran"
            self.send(wire.plain_line(f"* {state} los números de mensaje."))
            return
        number, _, body = args.partition(" ")
        usage = _PLAIN_CONVERSATION[command]
        if not (number.isascii() and number.isdigit()) or (command != "/del" and not body):
            self.error("bad_request", f"uso: {usage}")
            return
        if command == "/re":
            self._reply({"reply_to": int(number)}, body, "re")
        else:
            self._correct(int(number), body if command == "/edit" else None, command[1:])

    # -- hub events (Participant) -----------------------------------------

    def receive_message(self, message: ChatMessage) -> None:
        assert self.session is not None
        if self.plain:
            self.send(wire.plain_message(message, self.session.name, self.plain_ids))
        elif message.room is not None:
            self.send(wire.broadcast_frame(message))
        elif message.sender != self.session.name or message.recipient == self.session.name:
            self.send(wire.private_frame(message))
        elif "sent" in self.features:
            self.send(wire.sent_frame(message))

    def receive_presence(self, change: PresenceChange) -> None:
        assert self.session is not None
        if self.plain:
            data = wire.plain_presence(change, self.session.name)
            if data:
                self.send(data)
        else:
            self.send(wire.presence_frames(change, self.session.name, "presence" in self.features))

    def receive_typing(self, typing: Typing) -> None:
        if not self.plain:
            self.send(wire.typing_frame(typing))

    def receive_correction(self, correction: Correction) -> None:
        if self.plain:
            self.send(wire.plain_correction(correction, self.plain_ids))
        else:
            self.send(wire.correction_frame(correction))


#: Plain-text orders for replies and corrections, with their usage line.
_PLAIN_CONVERSATION = {
    "/ids": "/ids on | /ids off",
    "/re": "/re ID texto",
    "/edit": "/edit ID texto",
    "/del": "/del ID",
}


#: The answer to ``/help`` in the plain-text dialect, one line each.
PLAIN_HELP = (
    "* Escribe un texto y pulsa Enter para enviarlo a la sala general. Órdenes:",
    "* /msg NOMBRE texto: mensaje privado a NOMBRE",
    "* /users: quién está en línea",
    "* /ids on | /ids off: muestra u oculta los números de mensaje",
    "* /re N texto: responde al mensaje N",
    "* /edit N texto, /del N: corrige o borra tu mensaje N",
    "* /help: esta ayuda",
    "* /quit: salir",
    "* //texto: envía un texto que empieza por /",
)


#: ``/help`` before logging in; the account lines only where there are accounts.
PLAIN_LOGIN_HELP = (
    "* Para entrar, escribe tu nombre y pulsa Enter (o NOMBRE: primer mensaje).",
    "* Con cuenta: /login NOMBRE CONTRASEÑA",
    "* Crear una cuenta: /register NOMBRE CONTRASEÑA",
)


def _with_login_hint(failure: Any) -> Any:
    """Tell a plain-text guest refused for a registered name how to log in instead."""
    if failure.check(AuthFailed):
        raise AuthFailed(f"{failure.value} (escribe /login NOMBRE CONTRASEÑA)")
    return failure


def _socket_of(transport: Any) -> Any:
    """The socket *transport* writes to, if writing to it directly is safe.

    ``ChatProtocol.flush`` sends straight to this socket when the transport
    has nothing queued. ``transport.write`` only queues: the bytes go out on
    the next poll, after the transport has registered itself for writability
    and before it unregisters again, two extra epoll calls and a buffer copy
    per write. Fan-out is nearly all small writes the kernel takes whole, so
    sending at once halves the server's CPU per delivery (docs/PERFORMANCE.md).
    TLS and other wrapped transports get None and always take the plain path:
    they are not socket FileDescriptors, though a wrapper forwards ``socket``
    lookups to the TCP transport beneath it (sending there would bypass TLS).
    """
    if isinstance(transport, FileDescriptor) and hasattr(transport, "_tempDataBuffer"):
        return getattr(transport, "socket", None)
    return None


def _describe(address: IAddress) -> str:
    host = getattr(address, "host", None)
    port = getattr(address, "port", None)
    return f"{host}:{port}" if host is not None else str(address)


def _source(peer: str) -> str:
    """The address part of ``_describe``'s ``host:port``: what log summaries count."""
    return peer.rsplit(":", 1)[0]


def _host(address: IAddress) -> str:
    """The client address that per-address limits and login throttling count.

    An IPv6 client usually holds a whole /64, so that is its address here;
    an IPv4 address mapped into IPv6 is the IPv4 address.
    """
    host = getattr(address, "host", None)
    if not isinstance(host, str):
        return str(address)
    if ":" in host:
        try:
            ip = ipaddress.IPv6Address(host.split("%", 1)[0])
        except ValueError:
            return host
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return host


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
