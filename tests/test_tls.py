"""Chat over TLS with a throwaway certificate, verified by the client."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest_twisted
from twisted.internet.endpoints import SSL4ClientEndpoint, connectProtocol
from twisted.internet.ssl import Certificate, optionsForClientTLS

from tests.support import LineClient, make_certificate, sleep


class TLSClient(LineClient):
    def __init__(self) -> None:
        super().__init__()
        self.reason = None

    def connectionLost(self, reason: object = None) -> None:
        self.reason = reason
        super().connectionLost(reason)


async def tls_client(port: int, cert_pem: Path, hostname: str = "localhost") -> TLSClient:
    from twisted.internet import reactor

    # trustRoot is the throwaway certificate; the hostname is checked
    # against it by service_identity, as any real client would.
    options = optionsForClientTLS(hostname, trustRoot=Certificate.loadPEM(cert_pem.read_bytes()))
    endpoint = SSL4ClientEndpoint(reactor, "127.0.0.1", port, options)
    return await connectProtocol(endpoint, TLSClient())


@pytest_twisted.ensureDeferred
async def test_chat_over_tls(service, tmp_path):
    import service_identity  # noqa: F401 - without it Twisted skips hostname checks

    key_pem, cert_pem = make_certificate(tmp_path)
    srv = await service(listen=f"ssl:0:interface=127.0.0.1:privateKey={key_pem}:certKey={cert_pem}")
    ana = await tls_client(srv.port, cert_pem)
    luis = await tls_client(srv.port, cert_pem)
    try:
        await ana.login("Ana")
        await luis.login("Luis")
        ana.send(cmd="broadcast", msg="cifrado 🔒")
        frame = await luis.expect("broadcast")
        assert frame["from"] == "Ana" and frame["msg"] == "cifrado 🔒"
        luis.send(cmd="message", to="Ana", msg="solo para ti")
        assert (await ana.expect("private"))["msg"] == "solo para ti"
        ana.send(cmd="history")
        assert [i["msg"] for i in (await ana.expect("history"))["items"]] == ["cifrado 🔒"]
    finally:
        for c in (ana, luis):
            c.close()
            await c.closed


@pytest_twisted.ensureDeferred
async def test_the_client_rejects_a_certificate_for_another_name(service, tmp_path):
    key_pem, cert_pem = make_certificate(tmp_path, hostname="otro.example")
    srv = await service(listen=f"ssl:0:interface=127.0.0.1:privateKey={key_pem}:certKey={cert_pem}")
    client = await tls_client(srv.port, cert_pem, hostname="localhost")
    client.send(cmd="login", user="Ana")
    await client.closed
    assert client.lines.pending == []
    # service_identity's verdict: the certificate names another host.
    assert type(client.reason.value).__name__ == "VerificationError"
    assert "DNSMismatch" in repr(client.reason.value)
    assert srv.server.hub.find("Ana") is None


@pytest_twisted.ensureDeferred
async def test_a_stalled_tls_handshake_is_cut_off(service, tmp_path):
    key_pem, cert_pem = make_certificate(tmp_path)
    srv = await service(
        listen=f"ssl:0:interface=127.0.0.1:privateKey={key_pem}:certKey={cert_pem}",
        handshake_timeout=0.5,
    )
    stalled = socket.create_connection(("127.0.0.1", srv.port))
    stalled.setblocking(False)
    try:
        for _ in range(100):  # the server must close it well before its login deadline
            await sleep(0.05)
            try:
                if stalled.recv(1) == b"":
                    break
            except BlockingIOError:
                continue
            except ConnectionResetError:
                break
        else:
            raise AssertionError("the stalled handshake is still open after 5 s")
    finally:
        stalled.close()
    assert len(srv.server.factory.connections) == 0
