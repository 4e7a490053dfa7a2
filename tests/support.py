"""Helpers shared by the test suite: the real service on loopback and a line client.

The reactor is imported inside functions: pytest-twisted installs the asyncio
reactor after conftest modules are imported.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from twisted.internet import defer
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol

from chatserv.protocol import Limits
from chatserv.service import ChatServer, ServerConfig, makeService

_databases = tempfile.TemporaryDirectory(prefix="chatserv-tests-")


class TestServer:
    """The production service, as twistd builds it (``makeService``), on a
    database and a loopback port: a temporary SQLite file unless *db* names
    one (or a PostgreSQL DSN). It can be stopped and started again on the same
    database and the same port, as an operator restarting it would.

    It stands in for the :class:`ChatServer` it runs (``factory``, ``hub``,
    ``ports``, ``listening``, ``stopService``), so a test need not know
    whether it holds the service or the server.
    """

    __test__ = False  # not a test class, whatever its name

    def __init__(
        self,
        db: str | None = None,
        history: int = 50,
        require_accounts: bool = False,
        listen: str | list[str] = "tcp:0:interface=127.0.0.1",
        history_memory: int | None = None,
        **limits: Any,
    ) -> None:
        if db is None:
            db = str(Path(tempfile.mkdtemp(dir=_databases.name)) / "chat.sqlite3")
        limits.setdefault("rate_limit", 0)
        self.config = ServerConfig(
            listen=[listen] if isinstance(listen, str) else listen,
            history=history,
            limits=Limits(**limits),
            db=db,
            require_accounts=require_accounts,
        )
        if history_memory is not None:
            self.config.history_memory = history_memory
        self.app: Any = None
        self.server: ChatServer | None = None
        self.clients: list[LineClient] = []
        #: The port it listens on; kept while it is stopped (0 before it started).
        self.port = 0

    async def start(self) -> TestServer:
        from twisted.internet import reactor

        self.app = makeService(self.config, reactor)
        self.server = self.app.getServiceNamed("chat-server")
        self.app.startService()
        ports = await self.server.listening
        self.port = int(ports[0].getHost().port)
        if self.config.listen == ["tcp:0:interface=127.0.0.1"]:
            # Started again, it listens where its clients know to find it.
            self.config.listen = [f"tcp:{self.port}:interface=127.0.0.1"]
        return self

    async def stop(self) -> None:
        for client in self.clients:
            client.close()
        for client in self.clients:
            if client.connected:
                await client.closed
        self.clients = []
        if self.app is not None:
            app, self.app = self.app, None
            await app.stopService()

    async def stopService(self) -> None:
        await self.stop()

    async def client(self) -> LineClient:
        """A connected line client, closed when the server stops."""
        client = await connect(self)
        self.clients.append(client)
        return client

    def _running(self) -> ChatServer:
        assert self.server is not None, "the server is not running"
        return self.server

    @property
    def factory(self) -> Any:
        return self._running().factory

    @property
    def hub(self) -> Any:
        return self._running().hub

    @property
    def ports(self) -> list[Any]:
        return self._running().ports

    @property
    def listening(self) -> Any:
        return self._running().listening

    @property
    def store(self) -> Any:
        return self.factory.history



async def start_server(**options: Any) -> TestServer:
    """A running :class:`TestServer` with *options* (its arguments and
    :class:`Limits` fields); stop it with ``stop()``."""
    return await TestServer(**options).start()


def server_port(server: Any) -> int:
    return int(server.ports[0].getHost().port)


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


async def connect(server: Any) -> LineClient:
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
