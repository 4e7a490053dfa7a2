"""The line protocol: frames in, hub calls out; hub events in, frames out.

One :class:`ChatProtocol` per connection. It speaks JSON to seed-000 clients and
plain ``name: text`` lines to seed-004 clients, deciding by the first line. It
holds no chat state of its own beyond its session: routing is the hub's.

Output is gathered per connection and written once per reactor turn (see
:class:`OutputFlusher`), and a client that stops reading is cut off once its
unsent output passes the factory's bound instead of growing server memory.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet.abstract import FileDescriptor
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IAddress, IDelayedCall, IReactorTime
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols.basic import LineReceiver

from . import conversation, wire
from .accounts import AuthFailed, Identity
from .hub import (
    GENERAL,
    ChatError,
    ChatMessage,
    Correction,
    Hub,
    NameTaken,
    PresenceChange,
    Session,
    Typing,
)
from .names import name_key
from .ratelimit import TokenBucket
from .storage import paging

log = Logger()


@dataclass
class Limits:
    """Per-connection bounds; see docs/PROTOCOL.md, "Bounds"."""

    max_line: int = 65_536
    rate_limit: float = 5.0
    rate_burst: int = 20
    max_output: int = 1 << 20
    max_connections: int = 20_000


#: Seconds a closing connection may take to drain before it is aborted.
CLOSE_GRACE = 10.0


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
        self._socket: Any = None
        #: Private history is readable from this time on (see accounts.Identity).
        self.history_since = 0.0
        #: A plain-text client that asked for message ids (``/ids on``).
        self.plain_ids = False

    # -- connection life --------------------------------------------------

    def connectionMade(self) -> None:
        factory = self.factory
        self.MAX_LENGTH = factory.limits.max_line
        self._peer = _describe(self.transport.getPeer())
        self._socket = _socket_of(self.transport)
        if factory.limits.rate_limit > 0:
            self._bucket = TokenBucket(
                factory.limits.rate_limit, factory.limits.rate_burst, factory.clock.seconds
            )
        if len(factory.connections) >= factory.limits.max_connections:
            log.warn("refusing {peer}: connection limit reached", peer=self._peer)
            self.transport.write(wire.error_frame("server_full", "el servidor está lleno"))
            self._close()
            return
        factory.connections.add(self)
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

    def connectionLost(self, reason: object = None) -> None:
        self._closing = True
        self._out = []
        self._lost = True
        self.factory.connections.discard(self)
        if self.session is not None:
            self._leave_hub()
        else:
            log.debug("connection from {peer} closed", peer=self._peer)

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
            log.info("{name} disconnected ({peer})", name=session.name, peer=self._peer)

    # -- output -----------------------------------------------------------

    def send(self, data: bytes) -> None:
        """Queue *data* for the end of this reactor turn."""
        if self._closing:
            return
        self._out.append(data)
        self._out_bytes += len(data)
        if not self._writable and self._out_bytes > self.factory.limits.max_output:
            log.warn(
                "dropping {who}: {n} bytes of unread output",
                who=self.session.name if self.session else self._peer,
                n=self._out_bytes,
            )
            self._closing = True
            self._out = []
            self.transport.abortConnection()
            return
        if not self._scheduled:
            self._scheduled = True
            self.factory.flusher.schedule(self)

    def flush(self) -> None:
        self._scheduled = False
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
        transport.write(data)

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
        if self.plain:
            self.send(wire.plain_error(code, msg))
        else:
            self.send(wire.error_frame(code, msg, ref))

    # -- input ------------------------------------------------------------

    def lineLengthExceeded(self, line: bytes) -> None:
        if self._closing:
            return
        log.info("line too long from {peer}", peer=self._peer)
        self.error("line_too_long", f"línea de más de {self.MAX_LENGTH} bytes")
        self._close()

    def lineReceived(self, line: bytes) -> None:
        if self._closing:
            return
        if line.endswith(b"\r"):
            line = line[:-1]
        if self.plain is None:
            stripped = line.lstrip()
            if not stripped:
                return
            self.plain = not stripped.startswith(b"{")
        if self._bucket is not None and not self._bucket.allow():
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
            if self.session is None and cmd not in ("login", "ping", "register"):
                raise BadRequest("primero inicia sesión con 'login'", "not_logged_in")
            handler(self, frame)
        except BadRequest as e:
            self.error(e.code, str(e), ref)
        except ChatError as e:
            self.error(e.code, str(e), ref)

    def _hold(self, d: Deferred[Any], then: Callable[[Any], None], ref: str | None) -> None:
        """Read no further input until *d* fires, then call *then* with its result.

        Commands that wait on storage or a password hash (login, register,
        history, joining a room not in memory) go through here. Lines that
        arrive meanwhile wait in the line buffer, then in the kernel, and are
        handled in order once *d* has fired, exactly as if it had fired at
        once: a client may pipeline frames after ``login``. It also bounds
        every connection to one such request in flight. If the connection
        closes first, the result is dropped, so a login that completes after
        its client left creates no session.
        """
        self.paused = True  # LineReceiver stops splitting lines
        self.transport.pauseProducing()

        def done(result: Any) -> None:
            if self._closing:
                return
            try:
                then(result)
            except (BadRequest, ChatError) as e:
                self.error(e.code, str(e), ref)

        def failed(failure: Any) -> None:
            if self._closing:
                return
            if failure.check(ChatError, BadRequest):
                self.error(failure.value.code, str(failure.value), ref)
            else:
                log.failure("{ref} failed for {peer}", failure, ref=ref, peer=self._peer)
                self.error("server_error", "el servidor no ha podido atender la petición", ref)

        def resume(_: object) -> None:
            self.paused = False
            if not self._closing:
                self.transport.resumeProducing()
                self.dataReceived(b"")  # the lines that waited

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
        self.history_since = identity.since
        self.features = frozenset(features)
        general = self.factory.hub.rooms[GENERAL]
        # The `users` half of the answer follows with the room's presence
        # change, which always includes this login (see wire.presence_frames).
        self.send(wire.room_history_frame(general))
        log.info("{name} logged in from {peer}", name=self.session.name, peer=self._peer)

    def _cmd_register(self, frame: dict[str, Any]) -> None:
        user = _text(frame, "user")
        password = _text(frame, "password")
        accounts = self.factory.accounts
        if accounts is None:
            raise BadRequest("este servidor no tiene cuentas")
        holder = self.factory.hub.find(user)
        if holder is not None and holder.participant is not self:
            # Online names are not up for grabs; a guest may register its own.
            raise NameTaken(f"el nombre {holder.name} ya está en uso")
        d = accounts.register(user, password, _host(self.transport.getPeer()))
        self._hold(d, lambda name: self.send(wire.frame({"cmd": "registered", "user": name})), "register")

    def _cmd_history(self, frame: dict[str, Any]) -> None:
        assert self.session is not None
        d = paging.history(self.factory.hub, self.factory.store, self.session, frame, self.history_since)
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

        self._hold(conversation.find(hub, self.factory.store, wanted, rooms), post, ref)

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
        found = conversation.find(hub, self.factory.store, wanted, sorted(session.rooms))

        def correct(original: ChatMessage | None) -> None:
            hub.correct(session, original, text, self.history_since)

        self._hold(found, correct, ref)

    def _cmd_users(self, frame: dict[str, Any]) -> None:
        room_name = _optional_text(frame, "room")
        if room_name is None:
            self.send(wire.users_frame(GENERAL, self.factory.hub.users(GENERAL)))
            return
        room = self.factory.hub.room(room_name)
        if room is None:
            raise ChatError(f"no existe la sala {room_name}")
        self.send(wire.users_frame(room.name, room.names()))

    def _cmd_typing(self, frame: dict[str, Any]) -> None:
        assert self.session is not None
        self.factory.hub.typing(
            self.session, to=_optional_text(frame, "to"), room_name=_optional_text(frame, "room")
        )

    def _cmd_join(self, frame: dict[str, Any]) -> None:
        hub, store = self.factory.hub, self.factory.store
        room_name = frame.get("room")
        if isinstance(room_name, str) and paging.needs_loading(hub, store, room_name):
            # Not in memory, but storage may hold its history: read the
            # window before entering, so the answer carries it.
            def enter(messages: list[ChatMessage]) -> None:
                hub.remember(messages)
                self._join_room(frame)

            self._hold(paging.load_room(hub, store, room_name), enter, "join")
            return
        self._join_room(frame)

    def _join_room(self, frame: dict[str, Any]) -> None:
        assert self.session is not None
        hub = self.factory.hub
        room_name = _text(frame, "room")  # ill-typed is bad_request, not bad_name
        existing = hub.room(room_name)
        already_in = existing is not None and existing.name in self.session.rooms
        room = hub.join(self.session, room_name)
        self.send(wire.room_history_frame(room))
        if already_in:
            # No presence change will follow; answer with the list now.
            self.send(wire.users_frame(room.name, room.names()))

    def _cmd_leave(self, frame: dict[str, Any]) -> None:
        assert self.session is not None
        name = self.factory.hub.leave(self.session, _text(frame, "room"))
        self.send(wire.frame({"cmd": "left", "room": name}))

    def _cmd_rooms(self, frame: dict[str, Any]) -> None:
        rooms = [{"name": n, "members": m} for n, m in self.factory.hub.room_list()]
        self.send(wire.frame({"cmd": "rooms", "list": rooms}))

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
            self.error(e.code, str(e))

    def _plain_login(self, text: str) -> None:
        accounts = self.factory.accounts
        command, _, args = text.partition(" ")
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
                raise NameTaken(f"el nombre {holder.name} ya está en uso")
            d = accounts.register(user, password, host)
            self._hold(d, lambda name: self.send(wire.plain_line(f"* Cuenta {name} creada.")), "register")
            return
        name, colon, rest = text.partition(":")
        first = rest if colon else ""
        if accounts is not None:
            d = accounts.admit_guest(name.strip())
            self._hold(d, lambda identity: self._plain_login_as(identity, first), "login")
            return
        self._plain_login_as(Identity(name.strip(), self.factory.clock.seconds(), False), first)

    def _plain_login_as(self, identity: Identity, rest: str) -> None:
        hub = self.factory.hub
        self.session = hub.login(self, identity.name)
        self.history_since = identity.since
        log.info("{name} logged in (plain text) from {peer}", name=self.session.name, peer=self._peer)
        self.send(
            wire.plain_line(
                f"* Hola, {self.session.name}. Escribe y pulsa Enter."
                " Órdenes: /users, /msg NOMBRE texto, /quit;"
                " /ids on muestra los números de mensaje para /re N texto, /edit N texto, /del N."
            )
        )
        for message in hub.recent(GENERAL):
            self.send(wire.plain_history(message))
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


def _host(address: IAddress) -> str:
    """The client address login throttling counts failures against."""
    host = getattr(address, "host", None)
    return host if isinstance(host, str) else str(address)


class ChatFactory(Factory):
    """Builds :class:`ChatProtocol` connections onto one hub."""

    protocol = ChatProtocol  # type: ignore[assignment]
    noisy = False
    #: Set by the server when it runs on a database (chatserv.storage): the
    #: store for history pages, and the accounts for register and passwords.
    store: Any = None
    accounts: Any = None

    def __init__(self, hub: Hub, clock: IReactorTime, limits: Limits | None = None) -> None:
        self.hub = hub
        self.clock = clock
        self.limits = limits or Limits()
        self.flusher = OutputFlusher(clock)
        self.connections: set[ChatProtocol] = set()

    def disconnect_all(self) -> None:
        for protocol in list(self.connections):
            protocol._close()
