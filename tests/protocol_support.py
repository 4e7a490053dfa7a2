"""A ChatProtocol on StringTransport and a fake clock, for the unit tests of
the connection, its dialects and its output.

``clock.advance(0)`` runs the end of the reactor turn, when presence changes are
announced and every connection's gathered output is written.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from chatserv.hub import Hub
from chatserv.protocol import ChatFactory, ChatProtocol, Limits


def strict_json(line: bytes) -> Any:
    def no_constants(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    return json.loads(line.decode("utf-8"), parse_constant=no_constants)


class Silent:
    """A hub participant that ignores everything: fills a room cheaply."""

    def receive_message(self, message: Any) -> None:
        pass

    def receive_own(self, message: Any) -> None:
        pass

    def receive_presence(self, change: Any) -> None:
        pass

    def receive_typing(self, typing: Any) -> None:
        pass

    def receive_correction(self, correction: Any) -> None:
        pass


class Conn:
    """One connection: what goes in, what came out."""

    def __init__(self, world: World, host: str = "127.0.0.1") -> None:
        self.world = world
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", host, 40000))
        self.protocol: ChatProtocol = world.factory.buildProtocol(self.transport.getPeer())
        self.protocol.makeConnection(self.transport)

    def raw(self, data: bytes) -> None:
        self.protocol.dataReceived(data)

    def send(self, **frame: Any) -> None:
        self.raw(json.dumps(frame).encode() + b"\n")

    def lines(self) -> list[bytes]:
        """Everything written since the last call, as lines (after the turn ends)."""
        self.world.clock.advance(0)
        data = self.transport.value()
        self.transport.clear()
        assert data == b"" or data.endswith(b"\n"), data
        return data.splitlines()

    def frames(self) -> list[dict[str, Any]]:
        return [strict_json(line) for line in self.lines()]

    def frame(self) -> dict[str, Any]:
        (frame,) = self.frames()
        return frame

    def text(self) -> list[str]:
        return [line.decode("utf-8") for line in self.lines()]

    def error(self) -> dict[str, Any]:
        frame = self.frame()
        assert frame["cmd"] == "error", frame
        return frame

    def login(self, name: str, **extra: Any) -> list[dict[str, Any]]:
        self.send(cmd="login", user=name, **extra)
        frames = self.frames()
        assert [f["cmd"] for f in frames] == ["history", "users"], frames
        return frames

    @property
    def closing(self) -> bool:
        return self.transport.disconnecting

    def lose(self, reason: Exception | None = None) -> None:
        """What the reactor does once the transport really closed."""
        self.protocol.connectionLost(Failure(reason or ConnectionDone()))


class World:
    def __init__(self, **limits: Any) -> None:
        limits.setdefault("rate_limit", 0)
        self.clock = MemoryReactorClock()
        self.hub = Hub(self.clock, history_size=limits.pop("history", 50))
        self.factory = ChatFactory(self.hub, self.clock, Limits(**limits))

    def connect(self, host: str = "127.0.0.1") -> Conn:
        return Conn(self, host)

    def user(self, name: str, **extra: Any) -> Conn:
        conn = self.connect()
        conn.login(name, **extra)
        return conn

    def settle(self, *conns: Conn) -> None:
        for conn in conns:
            conn.lines()


def plain(world: World, first: bytes) -> Conn:
    """A connection whose first line, *first*, makes it a plain-text one."""
    conn = world.connect()
    conn.raw(first)
    return conn
