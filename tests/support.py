"""Helpers shared by the test suite: a real server on loopback and a line client.

The reactor is imported inside functions: pytest-twisted installs the asyncio
reactor after conftest modules are imported.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from twisted.internet import defer
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol

from chatserv.protocol import Limits
from chatserv.service import ChatServer, ServerConfig, build_server


async def start_server(**limits: Any) -> ChatServer:
    """A real :class:`ChatServer` on 127.0.0.1, port chosen by the kernel."""
    history = limits.pop("history", 50)
    limits.setdefault("rate_limit", 0)
    config = ServerConfig(
        listen=["tcp:0:interface=127.0.0.1"], history=history, limits=Limits(**limits)
    )
    from twisted.internet import reactor

    server = build_server(config, reactor)
    server.startService()
    await server.listening
    return server


def server_port(server: ChatServer) -> int:
    return server.ports[0].getHost().port


class LineClient(Protocol):
    """A test client: raw bytes out, lines in, with awaitable reads."""

    def __init__(self) -> None:
        self.lines: defer.DeferredQueue[bytes] = defer.DeferredQueue()
        self.buffer = b""
        self.closed: defer.Deferred[None] = defer.Deferred()
        self.connected = False

    def connectionMade(self) -> None:
        self.connected = True

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        *lines, self.buffer = self.buffer.split(b"\n")
        for line in lines:
            self.lines.put(line)

    def connectionLost(self, reason: object = None) -> None:
        self.connected = False
        self.closed.callback(None)

    def send_raw(self, data: bytes) -> None:
        self.transport.write(data)

    def send(self, **frame: Any) -> None:
        self.transport.write(json.dumps(frame).encode() + b"\n")

    async def line(self, timeout: float = 5.0) -> bytes:
        d = self.lines.get()
        from twisted.internet import reactor

        d.addTimeout(timeout, reactor)
        return await d

    async def frame(self, timeout: float = 5.0) -> dict[str, Any]:
        return json.loads(await self.line(timeout))

    async def expect(self, cmd: str, timeout: float = 5.0, **fields: Any) -> dict[str, Any]:
        """Read frames until one with *cmd* (and *fields*) arrives; return it."""
        while True:
            frame = await self.frame(timeout)
            if frame.get("cmd") == cmd and all(frame.get(k) == v for k, v in fields.items()):
                return frame

    async def login(self, user: str, **extra: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        """Log in; return the ``history`` and ``users`` frames of the answer."""
        self.send(cmd="login", user=user, **extra)
        history = await self.frame()
        assert history["cmd"] == "history", history
        users = await self.frame()
        assert users["cmd"] == "users", users
        return history, users

    async def quiet(self, wait: float = 0.2) -> list[bytes]:
        """Everything that arrives within *wait* seconds."""
        await sleep(wait)
        got = []
        while self.lines.pending:
            got.append(self.lines.pending.pop(0))
        return got

    def close(self) -> None:
        if self.connected:
            self.transport.loseConnection()


async def connect(server: ChatServer) -> LineClient:
    from twisted.internet import reactor

    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", server_port(server))
    return await connectProtocol(endpoint, LineClient())


def sleep(seconds: float) -> defer.Deferred[None]:
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    return deferLater(reactor, seconds, lambda: None)


def make_certificate(directory: Path, hostname: str = "localhost") -> tuple[Path, Path]:
    """A throwaway self-signed certificate for *hostname*: (key.pem, cert.pem)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem, cert_pem = directory / "key.pem", directory / "cert.pem"
    key_pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    cert_pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_pem, cert_pem
