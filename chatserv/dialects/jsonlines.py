"""The JSON dialect: one JSON object per line, ``{"cmd": ...}``, both ways.

Each command is a ``_cmd_<name>`` method of :class:`JsonDialect` (see
``_commands``); each hub event is rendered by a ``receive_*`` method from
bytes the event encoded once (see :mod:`chatserv.wire`). The frames are
described in docs/PROTOCOL.md.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .. import conversation, wire
from ..accounts import Identity
from ..addresses import host
from ..errors import AuthFailed, ChatError, InvalidName, NameTaken, NoSuchUser, NotInRoom
from ..events import ChatMessage, Correction, PresenceChange, Typing
from ..hub import GENERAL, ROOMS_PAGE
from ..names import BadName, check_name
from . import members, paging
from .base import Dialect

if TYPE_CHECKING:
    from ..hub import Room
    from ..output import RoomFanout
    from ..protocol import ChatProtocol


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


def _page(frame: dict[str, Any], default_limit: int) -> tuple[str | None, int]:
    """A paged list's ``after`` (a name, or None) and ``limit`` (a positive
    integer, *default_limit* when absent), as ``rooms`` and ``members`` take them."""
    after = _optional_text(frame, "after")
    if after is not None:
        try:
            after = check_name(after)
        except BadName as e:
            raise InvalidName(str(e)) from None
    limit = frame.get("limit", default_limit)
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
        raise BadRequest("el campo 'limit' debe ser un entero positivo")
    return after, limit


#: The longest client message id (``cid``).
MAX_CID = 64


def _cid(frame: dict[str, Any]) -> str | None:
    """The client's own id for the message it sends, if it gave one: 1 to
    64 printable ASCII characters (it is echoed back, and kept as a key)."""
    value = frame.get("cid")
    if value is None:
        return None
    if (
        not isinstance(value, str)
        or not 1 <= len(value) <= MAX_CID
        or not all(" " <= c <= "~" for c in value)
    ):
        raise BadRequest(f"el campo 'cid' debe ser un texto de 1 a {MAX_CID} caracteres ASCII imprimibles")
    return value


PING = wire.frame({"cmd": "ping"})


class JsonDialect(Dialect):
    """A connection speaking JSON frames; also the dialect of a connection
    that has not sent a line yet (its errors are JSON)."""

    __slots__ = ("features",)

    ping = PING

    def __init__(self, connection: ChatProtocol) -> None:
        super().__init__(connection)
        #: The optional frames this client asked for at login.
        self.features: frozenset[str] = frozenset()

    def render_error(self, code: str, msg: str, ref: str | None = None) -> bytes:
        return wire.error_frame(code, msg, ref)

    def line(self, line: bytes) -> None:
        if not line.strip():
            return
        error = self.connection.error
        try:
            frame = _loads(line.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            # ValueError covers JSONDecodeError and integers too long to parse.
            error("bad_json", "la línea no es JSON válido en UTF-8")
            return
        if not isinstance(frame, dict):
            error("bad_request", "cada línea debe ser un objeto JSON")
            return
        cmd = frame.get("cmd")
        if not isinstance(cmd, str):
            error("bad_request", "falta el campo 'cmd'")
            return
        handler = self._commands.get(cmd)
        ref = cmd if handler is not None else None
        try:
            if handler is None:
                raise BadRequest("comando desconocido", "unknown_cmd")
            if self.connection.session is None and cmd not in ("login", "ping", "pong", "register"):
                raise BadRequest("primero inicia sesión con 'login'", "not_logged_in")
            handler(self, frame)
        except BadRequest as e:
            error(e.code, wire.error_text(e), ref)
        except ChatError as e:
            error(e.code, wire.error_text(e), ref)

    # -- hub events (Participant) -------------------------------------------

    @property
    def fanout(self) -> RoomFanout:
        """Room messages reach this connection with those of every other
        JSON connection of its factory, in one call (chatserv.output.RoomFanout)."""
        return self.factory.room_fanout

    def receive_message(self, message: ChatMessage) -> None:
        if message.room is not None:
            self.send(wire.broadcast_frame(message))
            return
        session = self.connection.session
        assert session is not None
        if message.sender != session.name or message.recipient == session.name:
            self.send(wire.private_frame(message))
        elif "sent" in self.features:
            self.send(wire.sent_frame(message))

    def receive_own(self, message: ChatMessage) -> None:
        self.send(wire.own_frame(message))  # the echo or `sent`, with its cid

    def receive_presence(self, change: PresenceChange) -> None:
        session = self.connection.session
        assert session is not None
        if "lazy_members" in self.features and members.is_large(len(change.members)):
            room = self.factory.hub.room(change.room)
            if room is not None:
                if session.name in wire.entered(change):
                    self.send(members.entered_frame(self.factory.hub, room, change))
                else:
                    self.send(members.presence_frame(change))
                return
        self.send(wire.presence_frames(change, session.name, "presence" in self.features))

    def _users_answer(self, room: Room) -> bytes:
        """The member list of *room* for this client: whole, or the first
        page of a large room for a lazy_members client."""
        if "lazy_members" in self.features and members.is_large(room.size()):
            return members.first_page(self.factory.hub, room)
        return wire.users_frame(room.name, room.names())

    def receive_typing(self, typing: Typing) -> None:
        self.send(wire.typing_frame(typing))

    def receive_correction(self, correction: Correction) -> None:
        self.send(wire.correction_frame(correction))

    # -- commands -----------------------------------------------------------

    def _cmd_login(self, frame: dict[str, Any]) -> None:
        if self.connection.session is not None:
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
                # Most guest logins are decided from memory (chatserv.registered):
                # no query, and no pause in reading the connection.
                identity = accounts.guest_now(user)
                if identity is not None:
                    self._claim_then(identity, lambda identity: self._login_as(identity, features))
                    return
                d = accounts.admit_guest(user)
            else:
                d = accounts.authenticate(user, password, host(self.connection.transport.getPeer()))
            self._claim_then(d, lambda identity: self._login_as(identity, features))
            return
        if password is not None:
            raise AuthFailed("este servidor no tiene cuentas")
        identity = Identity(user, self.factory.clock.seconds(), False)
        self._claim_then(identity, lambda identity: self._login_as(identity, features))

    def _login_as(self, identity: Identity, features: list[str]) -> None:
        hub = self.factory.hub
        self._enter_hub(identity)
        self.features = frozenset(features)
        general = hub.rooms[GENERAL]
        # The `users` half of the answer follows with the room's presence
        # change, which always includes this login (see wire.presence_frames).
        self.send(hub.window_frame(general, "json-history", wire.room_history_frame))

    def _cmd_register(self, frame: dict[str, Any]) -> None:
        user = _text(frame, "user")
        password = _text(frame, "password")
        accounts = self.factory.accounts
        if accounts is None:
            raise BadRequest("este servidor no tiene cuentas")
        holder = self.factory.hub.online_holder(user, self)
        if holder is not None:
            # Online names, on any node, are not up for grabs; a guest may register its own.
            raise NameTaken("name_taken", name=holder)
        d = accounts.register(user, password, host(self.connection.transport.getPeer()))
        self.connection._hold(
            d, lambda name: self.send(wire.frame({"cmd": "registered", "user": name})), "register"
        )

    def _cmd_history(self, frame: dict[str, Any]) -> None:
        session = self.connection.session
        assert session is not None
        d = paging.history(self.factory.hub, self.factory.history, session, frame, self.history_since)
        self.connection._hold(d, self.send, "history")

    def _cmd_broadcast(self, frame: dict[str, Any]) -> None:
        session = self.connection.session
        assert session is not None
        text = _text(frame, "msg")
        cid = _cid(frame)
        room = _optional_text(frame, "room")
        if frame.get("reply_to") is not None:
            self._reply(frame, text, "broadcast", room=room, cid=cid)
            return
        try:
            self.factory.hub.broadcast(session, text, room, cid=cid)
        except NotInRoom as refusal:
            self._resent(cid, refusal, "broadcast")

    def _cmd_message(self, frame: dict[str, Any]) -> None:
        session = self.connection.session
        assert session is not None
        to = _text(frame, "to")
        text = _text(frame, "msg")
        cid = _cid(frame)
        if frame.get("reply_to") is not None:
            self._reply(frame, text, "message", to=to, cid=cid)
            return
        try:
            self.factory.hub.private(session, to, text, cid=cid)
        except NoSuchUser as refusal:
            self._resent(cid, refusal, "message")

    def _resent(self, cid: str | None, refusal: ChatError, ref: str) -> None:
        """*refusal* of a message that may be a resend the hub no longer
        remembers (another server took the first, or a restart came between):
        if storage has the sender's *cid*, confirm that message instead."""
        store, session = self.factory.history, self.connection.session
        if cid is None or store is None:
            raise refusal
        assert session is not None

        def answer(original: ChatMessage | None) -> None:
            if original is None:
                raise refusal
            self.factory.hub.confirm(session, original)

        self.connection._hold(store.message_by_cid(session.sender_key, cid), answer, ref)

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

    def _cmd_users(self, frame: dict[str, Any]) -> None:
        session = self.connection.session
        assert session is not None
        # Who is in a room is for its members, as its messages and presence
        # are; `rooms` tells anyone which rooms exist and how full they are.
        room = self.factory.hub.member_room(session, _optional_text(frame, "room"))
        self.send(self._users_answer(room))

    def _cmd_members(self, frame: dict[str, Any]) -> None:
        # One page of a room's member list, by name (see dialects.members).
        session = self.connection.session
        assert session is not None
        room = self.factory.hub.member_room(session, _optional_text(frame, "room"))
        after, limit = _page(frame, members.FIRST_PAGE)
        self.send(members.page(self.factory.hub, room, after, limit))

    def _cmd_typing(self, frame: dict[str, Any]) -> None:
        session = self.connection.session
        assert session is not None
        to, room_name = _optional_text(frame, "to"), _optional_text(frame, "room")
        self.factory.hub.typing(session, to=to, room_name=room_name)

    def _cmd_join(self, frame: dict[str, Any]) -> None:
        hub, store = self.factory.hub, self.factory.history
        room_name = frame.get("room")
        if isinstance(room_name, str) and paging.needs_loading(hub, store, room_name):
            # Not in memory, but storage may hold its history: read the
            # window before entering, so the answer carries it. A join that
            # would be refused is refused first, without reading anything.
            session = self.connection.session
            assert session is not None
            hub.admit(session, room_name)

            def enter(messages: list[ChatMessage]) -> None:
                hub.restore(room_name, messages)
                self._join_room(frame, admitted=True)

            self.connection._hold(paging.load_room(hub, store, room_name), enter, "join")
            return
        self._join_room(frame)

    def _join_room(self, frame: dict[str, Any], admitted: bool = False) -> None:
        session = self.connection.session
        assert session is not None
        hub = self.factory.hub
        room_name = _text(frame, "room")  # ill-typed is bad_request, not bad_name
        existing = hub.room(room_name)
        already_in = existing is not None and existing.name in session.rooms
        room = hub.join(session, room_name, admitted=admitted)
        self.send(hub.window_frame(room, "json-history", wire.room_history_frame))
        if already_in:
            # No presence change will follow; answer with the list now.
            self.send(self._users_answer(room))

    def _cmd_leave(self, frame: dict[str, Any]) -> None:
        session = self.connection.session
        assert session is not None
        name = self.factory.hub.leave(session, _text(frame, "room"))
        self.send(wire.frame({"cmd": "left", "room": name}))

    def _cmd_rooms(self, frame: dict[str, Any]) -> None:
        # Pages in the order of the rooms' keys: a client pages on with
        # `after` set to the last name it got (see docs/PROTOCOL.md, Rooms).
        after, limit = _page(frame, ROOMS_PAGE)
        hub = self.factory.hub
        page, more, total = hub.room_listing(after, min(limit, ROOMS_PAGE))
        rooms = [{"name": name, "members": members} for name, members in page]
        self.send(wire.frame({"cmd": "rooms", "list": rooms, "more": more, "total": total}))

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

    _commands: dict[str, Callable[[JsonDialect, dict[str, Any]], None]] = {
        "login": _cmd_login,
        "broadcast": _cmd_broadcast,
        "message": _cmd_message,
        "users": _cmd_users,
        "members": _cmd_members,
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
