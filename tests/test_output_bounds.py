"""Every byte queued for a connection counts against ``--max-output`` (issue 11, item 2),
and history answers are bounded in bytes as well as in items.

A line of 65,000 U+0001 becomes a frame of about 390 KB (``\\u0001`` is six
bytes of JSON), so one frame or one history page used to hold far more than
the bound while the client did not read.
"""

from __future__ import annotations

import json
import socket

import pytest_twisted
from twisted.internet.testing import StringTransport

from chatserv import wire
from chatserv.output import HANDOVER
from tests.protocol_support import Conn, World
from tests.support import connect, sleep, start_server

HUGE = "\x01" * 65_000
BIG = "x" * 60_000


class PausingTransport(StringTransport):
    """Buffers like a TCP transport whose client reads nothing: it pauses
    its streaming producer once it holds more than 64 KiB, as
    ``FileDescriptor.write`` does, and never resumes it."""

    bufferSize = 65_536

    def write(self, data: bytes) -> None:
        super().write(data)
        if self.producer is not None and len(self.value()) > self.bufferSize:
            self.producer.pauseProducing()


def non_reader(world: World, name: str) -> Conn:
    conn = Conn.__new__(Conn)
    conn.world = world
    conn.transport = PausingTransport()
    conn.protocol = world.factory.buildProtocol(None)
    conn.protocol.makeConnection(conn.transport)
    conn.login(name)
    return conn


def held(conn: Conn) -> int:
    """Bytes the server holds for *conn*: its queue and its transport's buffer."""
    return conn.protocol._out_bytes + len(conn.transport.value())


def test_one_frame_larger_than_the_bound_drops_a_client_that_does_not_read():
    world = World(max_output=200_000)
    pepe = non_reader(world, "Pepe")
    ana = world.connect()
    ana.raw(b"Ana\n")
    world.settle(ana)
    ana.raw(HUGE.encode() + b"\n")
    world.clock.advance(0)
    frame_size = len(wire.broadcast_frame(world.hub.recent()[-1]))
    assert frame_size > 380_000
    # Only what a transport takes before it pauses was handed over; the
    # rest of the frame is over the bound, and the client is dropped.
    assert len(pepe.transport.value()) <= 2 * HANDOVER
    assert pepe.transport.disconnected
    assert held(pepe) <= 2 * HANDOVER


def test_a_reader_that_keeps_up_gets_frames_larger_than_the_bound():
    world = World(max_output=200_000)
    luis = world.user("Luis")
    ana = world.connect()
    ana.raw(b"Ana\n")
    world.settle(ana, luis)
    ana.raw(HUGE.encode() + b"\n")
    (frame,) = luis.frames()
    assert frame["msg"] == HUGE
    assert not luis.transport.disconnected


def test_queued_output_counts_even_before_the_transport_pauses():
    world = World(max_output=300_000)
    pepe = non_reader(world, "Pepe")
    ana = world.connect()
    ana.raw(b"Ana\n")
    world.settle(ana)
    # Eight lines read in one turn: 480 KB for Pepe before the turn ends.
    ana.raw(b"".join(f"{i}".encode() + b"x" * 60_000 + b"\n" for i in range(8)))
    assert held(pepe) <= 300_000 + 2 * HANDOVER
    world.clock.advance(0)
    assert held(pepe) <= 300_000 + 2 * HANDOVER
    assert pepe.transport.disconnected


def test_a_history_page_is_bounded_in_bytes_and_says_there_is_more():
    world = World(history=200)
    ana = world.user("Ana")
    plain = world.connect()
    plain.raw(b"Pepe\n")
    world.settle(ana, plain)
    for _ in range(20):
        plain.raw(BIG.encode() + b"\n")
    world.clock.advance(0)
    ana.lines()
    ana.send(cmd="history", limit=200)
    (line,) = ana.lines()
    page = json.loads(line)
    # Without a database the window in memory answers; 20 items of 60 KB
    # would be 1.2 MB in one frame.
    assert len(line) <= wire.MAX_PAGE_BYTES + 1024
    assert page["more"] is True
    assert 1 <= len(page["items"]) < 20
    assert page["items"][-1]["id"] == world.hub.recent()[-1].id  # the newest first
    # A message larger than the page bound still comes, alone.
    plain.raw(HUGE.encode() + b"\n")
    world.clock.advance(0)
    ana.lines()
    ana.send(cmd="history", limit=5)
    page = ana.frame()
    assert [item["msg"] for item in page["items"]] == [HUGE] and page["more"] is True


def test_the_login_window_is_bounded_in_bytes():
    world = World(history=50)
    pepe = world.connect()
    pepe.raw(b"Pepe\n")
    for _ in range(10):
        pepe.raw(BIG.encode() + b"\n")
    world.settle(pepe)
    history, _ = world.connect().login("Ana")
    assert 1 <= len(history["items"]) < 10
    assert len(json.dumps(history, ensure_ascii=False)) <= wire.MAX_PAGE_BYTES + 1024
    # Plain-text clients get the same bound on their login lines.
    late = world.connect()
    late.raw(b"Tardon\n")
    assert sum(len(line) + 1 for line in late.lines()) <= wire.MAX_PAGE_BYTES + 1024


@pytest_twisted.ensureDeferred
async def test_over_loopback_a_reader_keeps_up_and_a_sleeper_is_dropped():
    """The same on real sockets, where the transport pauses the protocol."""
    server = await start_server(max_output=300_000)
    clients = []
    try:
        clients = [await connect(server) for _ in range(3)]
        luis, pepe, ana = clients
        await luis.login("Luis")
        await pepe.login("Pepe")
        # Pepe stops reading, with a small receive buffer.
        pepe.transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        pepe.transport.pauseProducing()
        ana.send_raw(b"Ana\n" + (HUGE.encode() + b"\n") * 12)
        got = 0
        while got < 12:
            frame = await luis.frame(timeout=20)
            got += frame.get("cmd") == "broadcast" and frame.get("msg") == HUGE
        # About 4.7 MB went to each: Luis read it, Pepe was cut off at the bound.
        for _ in range(200):
            if server.hub.find("Pepe") is None:
                break
            await sleep(0.05)
        assert server.hub.find("Pepe") is None
        assert server.hub.find("Luis") is not None
    finally:
        for c in clients:
            c.close()
        await server.stopService()
