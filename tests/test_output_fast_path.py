"""The direct-socket fast path of chatserv.output on a real TCP connection.

``socket_of`` reads Twisted private attributes (``_tempDataBuffer``) and,
if they are not there, quietly falls back to ``transport.write``: everything
still works, only at twice the CPU per delivery. These tests fail if that
happens, so a Twisted upgrade that renames the attributes is noticed.
"""

from __future__ import annotations

from typing import Any

import pytest_twisted

from chatserv.protocol import ChatProtocol


def server_side(server: Any, name: str) -> ChatProtocol:
    (protocol,) = [
        c for c in server.factory.connections if c.session is not None and c.session.name == name
    ]
    return protocol


class WriteLog:
    """Keeps what the real transport's ``write`` is handed, and hands it on."""

    def __init__(self, transport: Any) -> None:
        self.calls: list[bytes] = []
        self._write = transport.write

    def __call__(self, data: bytes) -> None:
        self.calls.append(bytes(data))
        self._write(data)


@pytest_twisted.ensureDeferred
async def test_a_broadcast_goes_straight_to_the_socket(server, clients):
    ana = await clients()
    await ana.login("Ana")
    luis = await clients()
    await luis.login("Luis")
    await ana.expect("users", room="general")  # Luis's arrival

    protocol = server_side(server, "Ana")
    transport = protocol.transport
    assert protocol._socket is not None, "socket_of fell back: no direct socket on plain TCP"
    assert protocol._socket is transport.socket
    writes = WriteLog(transport)
    transport.write = writes

    luis.send(cmd="broadcast", msg="hola")
    frame = await ana.expect("broadcast")
    assert frame["msg"] == "hola"
    # The frame reached Ana's socket without passing through the transport.
    assert writes.calls == []

