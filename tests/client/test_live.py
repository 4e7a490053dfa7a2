"""The client's network side and session against the real chat server over
loopback sockets (no display needed)."""

from __future__ import annotations

import pytest_twisted

from chatserv.client import i18n
from chatserv.client.model import (
    GENERAL_KEY,
    ChatModel,
    ConnState,
    ConvKey,
    LineKind,
    SendState,
)
from chatserv.client.network import ServerAddress
from chatserv.client.session import ChatSession, Credentials
from tests.client.support import FailureLog, RestartableServer, fast_retry, wait_for
from tests.support import make_certificate


class Client:
    def __init__(self, port: int, user: str, host: str = "127.0.0.1", **address: object) -> None:
        from twisted.internet import reactor

        i18n.install("en")
        self.model = ChatModel(reactor)
        self.session = ChatSession(self.model, reactor, policy=fast_retry)
        self.log = FailureLog()
        self.failures = self.log.failures
        self.model.subscribe(self.log)
        self.address = ServerAddress(host, port, **address)  # type: ignore[arg-type]
        self.user = user

    def connect(self) -> None:
        self.session.connect(self.address, Credentials(self.user))

    async def online(self) -> None:
        await wait_for(lambda: self.model.state is ConnState.ONLINE, f"{self.user} online")

    def texts(self, key: ConvKey = GENERAL_KEY, kinds=(LineKind.MESSAGE, LineKind.HISTORY)) -> list[str]:
        conv = self.model.get(key)
        return [ln.text for ln in conv.lines if ln.kind in kinds] if conv else []

    async def close(self) -> None:
        await self.session.disconnect()


async def bring_online(*clients: Client) -> None:
    """Connect every client at once, then wait until each is online."""
    for client in clients:
        client.connect()
    for client in clients:
        await client.online()


@pytest_twisted.ensureDeferred
async def test_general_private_and_typing_between_two_clients(chat_server: RestartableServer):
    ana, luis = Client(chat_server.port, "Ana"), Client(chat_server.port, "Luis")
    try:
        ana.connect()
        await ana.online()
        luis.connect()
        await luis.online()
        await wait_for(lambda: ana.model.online() == ["Ana", "Luis"], "Ana sees Luis online")
        await wait_for(lambda: "Luis joined the chat" in ana.texts(kinds=(LineKind.SYSTEM,)), "join notice")

        line = ana.session.send(GENERAL_KEY, "Hola a todos\nsegunda línea")
        await wait_for(lambda: "Hola a todos\nsegunda línea" in luis.texts(), "Luis gets the broadcast")
        assert line is not None and line.state is SendState.SENT
        assert ana.texts() == ["Hola a todos\nsegunda línea"]  # echo matched, not doubled

        key = luis.session.open_private("ana")  # names match case-insensitively
        luis.session.user_typing(key)
        await wait_for(lambda: ana.model.get(ConvKey.private("Luis")) is None, "no tab for typing alone")
        luis.session.send(key, "¿Vamos al cine?")
        await wait_for(lambda: ana.texts(ConvKey.private("Luis")) == ["¿Vamos al cine?"], "private arrives")
        assert ana.texts() == ["Hola a todos\nsegunda línea"]  # not in general
        conv = ana.model.conversations[ConvKey.private("Luis")]
        assert conv.title == "Luis" and conv.unread == 1
        await wait_for(
            lambda: luis.model.conversations[key].lines[-1].state is SendState.SENT, "private confirmed"
        )

        luis.session._typing_sent.clear()  # don't wait out the 3 s throttle
        luis.session.user_typing(key)
        await wait_for(lambda: conv.typing_names() == ["Luis"], "Ana sees Luis typing in private")
        assert ana.model.conversations[GENERAL_KEY].typing_names() == []
    finally:
        await ana.close()
        await luis.close()


@pytest_twisted.ensureDeferred
async def test_server_restart_both_reconnect_and_nothing_typed_is_lost(chat_server: RestartableServer):
    ana, luis = Client(chat_server.port, "Ana"), Client(chat_server.port, "Luis")
    try:
        await bring_online(ana, luis)
        await wait_for(lambda: len(ana.model.online()) == 2, "both online")
        luis.session.open_private("Ana")

        await chat_server.stop()
        await wait_for(lambda: ana.model.state is not ConnState.ONLINE, "Ana notices")
        await wait_for(lambda: luis.model.state is not ConnState.ONLINE, "Luis notices")
        await wait_for(lambda: ana.model.state is ConnState.WAITING, "Ana waits to retry")
        ana.session.send(GENERAL_KEY, "escrito sin conexión")
        luis.session.send(ConvKey.private("Ana"), "privado sin conexión")
        queued = [o.line.state for o in ana.session.outbox + luis.session.outbox]
        assert queued == [SendState.QUEUED, SendState.QUEUED]

        await chat_server.start()
        await ana.online()
        await luis.online()
        await wait_for(lambda: "escrito sin conexión" in luis.texts(), "offline broadcast delivered")
        await wait_for(
            lambda: ana.texts(ConvKey.private("Luis")) == ["privado sin conexión"],
            "offline private delivered once Ana is back",
        )
        await wait_for(lambda: not ana.session.outbox and not luis.session.outbox, "outboxes drained")
        assert ana.texts().count("escrito sin conexión") == 1
        assert "Reconnected." in ana.texts(kinds=(LineKind.INFO,))

        ana.session.send(GENERAL_KEY, "seguimos")
        await wait_for(lambda: "seguimos" in luis.texts(), "chat goes on after the restart")
    finally:
        await ana.close()
        await luis.close()


@pytest_twisted.ensureDeferred
async def test_rooms_on_a_server_that_has_them(chat_server: RestartableServer):
    ana, luis = Client(chat_server.port, "Ana"), Client(chat_server.port, "Luis")
    try:
        await bring_online(ana, luis)
        await wait_for(lambda: ana.model.rooms_supported is not None, "rooms probed")
        if not ana.model.rooms_supported:
            return  # a seed-000 server: test_session covers the refusal
        cine = ana.session.join("Cine")
        assert cine is not None
        await wait_for(lambda: cine in ana.session.ready, "Ana is in the room")
        ana.session.send(cine, "solo para la sala")
        await wait_for(lambda: "solo para la sala" in ana.texts(cine), "room echo")
        luis.session.join("cine")
        await wait_for(lambda: ana.model.conversations[cine].members == ["Ana", "Luis"], "members")
        await wait_for(lambda: "solo para la sala" in luis.texts(cine), "room history on join")
        assert "solo para la sala" not in luis.texts()
        luis.session.send(cine, "aquí estoy")
        await wait_for(lambda: "aquí estoy" in ana.texts(cine), "room message")
        assert "aquí estoy" not in ana.texts()
        luis.session.close(cine)
        await wait_for(lambda: ana.model.conversations[cine].members == ["Ana"], "Luis left the room")
    finally:
        await ana.close()
        await luis.close()


@pytest_twisted.ensureDeferred
async def test_taken_name_is_reported_not_retried(chat_server: RestartableServer):
    ana, other = Client(chat_server.port, "Ana"), Client(chat_server.port, "ＡＮＡ")
    try:
        ana.connect()
        await ana.online()
        other.connect()
        await wait_for(lambda: other.failures, "login failure reported")
        assert other.failures == ["The name ＡＮＡ is already in use. Choose another one."]
        assert other.model.state is ConnState.DISCONNECTED and not other.session.keeper.running
    finally:
        await ana.close()
        await other.close()


@pytest_twisted.ensureDeferred
async def test_tls_with_a_throwaway_certificate(tmp_path):
    from twisted.internet import reactor

    from chatserv.protocol import Limits
    from chatserv.service import ServerConfig, build_server

    key_pem, cert_pem = make_certificate(tmp_path)
    server = build_server(
        ServerConfig(
            listen=[f"ssl:0:interface=127.0.0.1:privateKey={key_pem}:certKey={cert_pem}"],
            limits=Limits(rate_limit=0),
        ),
        reactor,
    )
    server.startService()
    port = (await server.listening)[0].getHost().port
    ana = Client(port, "Ana", host="localhost", tls=True, cafile=str(cert_pem))
    luis = Client(port, "Luis", host="localhost", tls=True, cafile=str(cert_pem))
    try:
        await bring_online(ana, luis)
        ana.session.send(GENERAL_KEY, "cifrado")
        await wait_for(lambda: "cifrado" in luis.texts(), "message over TLS")
    finally:
        await ana.close()
        await luis.close()
        await server.stopService()
