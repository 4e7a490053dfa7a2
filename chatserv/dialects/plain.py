"""The plain-text dialect: ``name: text`` lines in, ``* ...`` and ``name: text`` lines out.

For seed-004 clients and ``nc``: the first line is the name (or ``NAME:
first message``, or ``/login NAME PASSWORD``), every later line a message to
the general room unless it is a ``/`` order (``PLAIN_HELP``). Typing
notifications are not shown; errors are ``* Error: ...`` lines.
"""

from __future__ import annotations

from typing import Any

from .. import wire
from ..accounts import Identity
from ..addresses import host
from ..errors import AuthFailed, ChatError, NameTaken
from ..events import ChatMessage, Correction, PresenceChange, Typing
from ..hub import GENERAL
from ..names import name_key
from .base import Dialect

PLAIN_PING = "* ¿Sigues ahí? Escribe cualquier línea (o pulsa Enter) para seguir conectado."


class PlainDialect(Dialect):
    """A connection speaking plain text lines."""

    __slots__ = ("plain_ids",)

    ping = wire.plain_line(PLAIN_PING)

    def __init__(self, connection: Any) -> None:
        super().__init__(connection)
        #: The client asked for message ids (``/ids on``).
        self.plain_ids = False

    def render_error(self, code: str, msg: str, ref: str | None = None) -> bytes:
        return wire.plain_error(code, msg)

    def line(self, line: bytes) -> None:
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            self.connection.error("bad_json", "la línea no es UTF-8 válido")
            return
        if not text.strip():
            return
        try:
            if self.connection.session is None:
                self._login(text)
            else:
                self._text(text)
        except ChatError as e:
            self.connection.error(e.code, wire.error_text(e))

    # -- hub events (Participant) -------------------------------------------

    def receive_message(self, message: ChatMessage) -> None:
        session = self.connection.session
        assert session is not None
        self.send(wire.plain_message(message, session.name, self.plain_ids))

    def receive_presence(self, change: PresenceChange) -> None:
        session = self.connection.session
        assert session is not None
        data = wire.plain_presence(change, session.name)
        if data:
            self.send(data)

    def receive_typing(self, typing: Typing) -> None:
        pass  # a line-based terminal has nowhere to show it

    def receive_correction(self, correction: Correction) -> None:
        self.send(wire.plain_correction(correction, self.plain_ids))

    # -- lines --------------------------------------------------------------

    def _login(self, text: str) -> None:
        accounts = self.factory.accounts
        command, _, args = text.partition(" ")
        if command == "/help":
            lines = PLAIN_LOGIN_HELP if accounts is not None else PLAIN_LOGIN_HELP[:1]
            for line in lines:
                self.send(wire.plain_line(line))
            return
        hold = self.connection._hold
        if accounts is not None and command in ("/login", "/register"):
            # Plain clients use an account with "/login NAME PASSWORD"
            # (the password is the rest of the line).
            user, _, password = args.strip().partition(" ")
            if not user or not password:
                raise ChatError(f"uso: {command} NOMBRE CONTRASEÑA")
            address = host(self.connection.transport.getPeer())
            if command == "/login":
                d = accounts.authenticate(user, password, address)
                self._claim_then(d, lambda identity: self._login_as(identity, ""))
                return
            holder = self.factory.hub.online_holder(user)
            if holder is not None:  # online on any node
                raise NameTaken("name_taken", name=holder)
            made = accounts.register(user, password, address)
            hold(made, lambda name: self.send(wire.plain_line(f"* Cuenta {name} creada.")), "register")
            return
        name, colon, rest = text.partition(":")
        first = rest if colon else ""
        if accounts is not None:
            d = accounts.admit_guest(name.strip()).addErrback(_with_login_hint)
            self._claim_then(d, lambda identity: self._login_as(identity, first))
            return
        identity = Identity(name.strip(), self.factory.clock.seconds(), False)
        self._claim_then(identity, lambda identity: self._login_as(identity, first))

    def _login_as(self, identity: Identity, rest: str) -> None:
        hub = self.factory.hub
        session = self._enter_hub(identity, " (plain text)")
        self.send(
            wire.plain_line(
                f"* Hola, {session.name}. Escribe y pulsa Enter."
                " Órdenes: /help, /users, /msg NOMBRE texto, /quit."
            )
        )
        window = wire.plain_window(hub.recent(GENERAL))
        if window:
            self.send(window)
        self.send(wire.plain_line("* En línea: " + ", ".join(hub.users(GENERAL))))
        if rest.strip():
            hub.broadcast(session, rest[1:] if rest.startswith(" ") else rest)

    def _text(self, text: str) -> None:
        session = self.connection.session
        assert session is not None
        prefix, colon, rest = text.partition(":")
        if colon and name_key(prefix.strip()) == session.key:
            # Seed 004 clients prefix every line with their own name.
            text = rest[1:] if rest.startswith(" ") else rest
            if not text.strip():
                return
        if text.startswith("//"):
            text = text[1:]
        elif text.startswith("/"):
            self._command(text)
            return
        self.factory.hub.broadcast(session, text)

    def _command(self, text: str) -> None:
        session = self.connection.session
        assert session is not None
        command, _, args = text.partition(" ")
        hub = self.factory.hub
        if command == "/users":
            self.send(wire.plain_line("* En línea: " + ", ".join(hub.users(GENERAL))))
        elif command == "/msg":
            to, _, body = args.strip().partition(" ")
            if not to or not body:
                self.connection.error("bad_request", "uso: /msg NOMBRE texto")
                return
            hub.private(session, to, body)
        elif command == "/quit":
            self.connection._close()
        elif command == "/help":
            for line in PLAIN_HELP:
                self.send(wire.plain_line(line))
        elif command in _CONVERSATION:
            self._conversation(command, args.strip())
        else:
            self.connection.error("unknown_cmd", f"orden desconocida {command}; usa // para empezar con /")

    def _conversation(self, command: str, args: str) -> None:
        """``/ids on|off``, ``/re ID text``, ``/edit ID text``, ``/del ID``."""
        if command == "/ids":
            if args not in ("on", "off"):
                self.connection.error("bad_request", "uso: /ids on | /ids off")
                return
            self.plain_ids = args == "on"
            state = "Se muestran" if self.plain_ids else "No se muestran"
            self.send(wire.plain_line(f"* {state} los números de mensaje."))
            return
        number, _, body = args.partition(" ")
        usage = _CONVERSATION[command]
        if not (number.isascii() and number.isdigit()) or (command != "/del" and not body):
            self.connection.error("bad_request", f"uso: {usage}")
            return
        if command == "/re":
            self._reply({"reply_to": int(number)}, body, "re")
        else:
            self._correct(int(number), body if command == "/edit" else None, command[1:])


#: Plain-text orders for replies and corrections, with their usage line.
_CONVERSATION = {
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
        raise AuthFailed(f"{wire.error_text(failure.value)} (escribe /login NOMBRE CONTRASEÑA)")
    return failure
