"""The fan-out write loop (chatserv.fanout) and the room fan-out built on it (chatserv.output.RoomFanout).

``send_all`` is tested against real socket pairs, in both implementations
(the compiled one when it was built); the room fan-out on a real server over
loopback TCP, where it must keep every connection's order.
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import pytest_twisted

from chatserv import fanout
from chatserv.events import ChatMessage
from chatserv.hub import GENERAL
from tests.support import sleep
from tests.test_output_fast_path import server_side

try:
    import chatserv._fanout as compiled
except ImportError:
    compiled = None  # type: ignore[assignment]

IMPLEMENTATIONS: list[Any] = [pytest.param(fanout.python_send_all, id="python")]
IMPLEMENTATIONS.append(
    pytest.param(
        compiled.send_all if compiled else None,
        id="c",
        marks=pytest.mark.skipif(compiled is None, reason="chatserv._fanout was not built"),
    )
)


def test_the_implementation_is_the_one_the_environment_asks_for() -> None:
    wanted = os.environ.get(fanout.ENV, "")
    if wanted == "1":
        assert fanout.IMPLEMENTATION == "python"
        assert fanout.send_all is fanout.python_send_all
    elif wanted == "0":
        assert fanout.IMPLEMENTATION == "c"  # and importing it would have failed otherwise
        assert compiled is not None and fanout.send_all is compiled.send_all
    else:
        assert fanout.IMPLEMENTATION == ("c" if compiled is not None else "python")


# -- send_all on socket pairs ------------------------------------------------


@pytest.fixture
def pairs() -> Iterator[Callable[[int], list[tuple[socket.socket, socket.socket]]]]:
    made: list[socket.socket] = []

    def make(n: int, sndbuf: int | None = None) -> list[tuple[socket.socket, socket.socket]]:
        out = []
        for _ in range(n):
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            ours.setblocking(False)
            if sndbuf is not None:
                ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
            made.extend((ours, theirs))
            out.append((ours, theirs))
        return out

    yield make
    for sock in made:
        sock.close()


def received(sock: socket.socket) -> bytes:
    sock.setblocking(False)
    got = b""
    while True:
        try:
            chunk = sock.recv(1 << 20)
        except BlockingIOError:
            return got
        if not chunk:
            return got
        got += chunk


def fill(sock: socket.socket) -> None:
    """Send until the kernel takes no more."""
    while True:
        try:
            sock.send(b"f" * 65536)
        except BlockingIOError:
            return


@pytest.mark.parametrize("send_all", IMPLEMENTATIONS)
def test_every_socket_gets_the_data_and_nothing_is_reported(send_all, pairs) -> None:
    socks = pairs(5)
    held = bytearray(4096)
    assert send_all([a.fileno() for a, _ in socks], b"hola\n", held) == []
    assert [received(b) for _, b in socks] == [b"hola\n"] * 5
    assert send_all([], b"x", held) == []


@pytest.mark.parametrize("send_all", IMPLEMENTATIONS)
def test_held_sockets_and_sockets_beyond_the_table_are_not_written(send_all, pairs) -> None:
    socks = pairs(3)
    fds = [a.fileno() for a, _ in socks]
    held = bytearray(max(fds) + 1)
    held[fds[1]] = 1
    assert send_all(fds, b"data", held) == [(1, 0)]
    assert [received(b) for _, b in socks] == [b"data", b"", b"data"]
    short = bytearray(min(fds))  # every fd lies beyond it
    assert send_all(fds, b"more", short) == [(0, 0), (1, 0), (2, 0)]
    assert [received(b) for _, b in socks] == [b"", b"", b""]


@pytest.mark.parametrize("send_all", IMPLEMENTATIONS)
def test_a_full_socket_would_block_and_is_reported_with_nothing_taken(send_all, pairs) -> None:
    (full, full_peer), (ok, ok_peer) = pairs(2)
    fill(full)
    held = bytearray(4096)
    assert send_all([full.fileno(), ok.fileno()], b"frame\n", held) == [(0, 0)]
    assert received(ok_peer) == b"frame\n"
    assert b"frame" not in received(full_peer)


@pytest.mark.parametrize("send_all", IMPLEMENTATIONS)
def test_a_partial_write_reports_how_much_was_taken(send_all, pairs) -> None:
    ((small, peer),) = pairs(1, sndbuf=4096)
    data = bytes(range(256)) * 4096  # 1 MiB: more than any socket buffer takes at once
    (result,) = send_all([small.fileno()], data, bytearray(4096))
    i, n = result
    assert i == 0 and 0 < n < len(data)
    assert received(peer) == data[:n]


@pytest.mark.parametrize("send_all", IMPLEMENTATIONS)
def test_a_closed_peer_is_reported_as_an_error_and_the_others_still_get_the_data(send_all, pairs) -> None:
    (a, a_peer), (b, b_peer), (c, c_peer) = pairs(3)
    b_peer.close()
    result = send_all([a.fileno(), b.fileno(), c.fileno()], b"x" * 10, bytearray(4096))
    assert result == [(1, -errno.EPIPE)] or result == [(1, -errno.ECONNRESET)]
    assert received(a_peer) == received(c_peer) == b"x" * 10


def test_bad_arguments_are_refused() -> None:
    if compiled is None:
        pytest.skip("chatserv._fanout was not built")
    with pytest.raises(TypeError):
        compiled.send_all((1, 2), b"x", bytearray(8))  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        compiled.send_all([-1], b"x", bytearray(8))
    with pytest.raises(TypeError):
        compiled.send_all([1], b"x")  # type: ignore[call-arg]


# -- the room fan-out on a real server ------------------------------------------


def post(server: Any, sender: str, text: str) -> ChatMessage:
    """A committed room message handed to the hub's fan-out at once, as a
    commit does (synchronously, inside the test's reactor turn)."""
    hub = server.hub
    message = ChatMessage(hub.ids.take(), 0.0, sender, text, room=GENERAL)
    hub.deliver_to_room(message)
    return message


async def room_of_two(clients: Any) -> tuple[Any, Any]:
    ana = await clients()
    await ana.login("Ana")
    luis = await clients()
    await luis.login("Luis")
    await ana.expect("users", room="general")  # Luis's arrival
    return ana, luis


@pytest_twisted.ensureDeferred
async def test_frames_of_one_turn_go_out_in_one_send_per_socket(server, clients):
    ana, _ = await room_of_two(clients)
    protocol = server_side(server, "Ana")
    assert protocol._fd >= 0, "no direct socket on plain TCP"
    sent: list[Any] = []
    real = fanout.send_all

    def counting(fds: list[int], data: bytes, held: bytearray) -> list[tuple[int, int]]:
        sent.append(data)
        return real(fds, data, held)

    import chatserv.output

    chatserv.output.send_all = counting
    try:
        for n in range(3):
            post(server, "Luis", f"m{n}")
        await sleep(0.05)
    finally:
        chatserv.output.send_all = real
    assert len(sent) == 1 and sent[0].count(b"\n") == 3
    assert [(await ana.expect("broadcast"))["msg"] for _ in range(3)] == ["m0", "m1", "m2"]


@pytest_twisted.ensureDeferred
async def test_anything_else_sent_to_a_connection_goes_after_the_room_frames_it_was_handed(server, clients):
    ana, _ = await room_of_two(clients)
    protocol = server_side(server, "Ana")
    post(server, "Luis", "first")
    protocol.send(b'{"cmd":"marker"}\n')  # must not overtake "first"
    post(server, "Luis", "second")
    got = [await ana.frame() for _ in range(3)]
    assert [f.get("msg", f["cmd"]) for f in got] == ["first", "marker", "second"]


@pytest_twisted.ensureDeferred
async def test_a_connection_with_output_queued_gets_room_frames_behind_it(server, clients):
    ana, luis = await room_of_two(clients)
    protocol = server_side(server, "Ana")
    protocol.send(b'{"cmd":"queued"}\n')
    assert server.factory.flusher.held[protocol._fd] == 1
    post(server, "Luis", "after")
    assert [f.get("msg", f["cmd"]) for f in [await ana.frame(), await ana.frame()]] == ["queued", "after"]
    await sleep(0.05)
    assert server.factory.flusher.held[protocol._fd] == 0  # flushed: direct sends again


@pytest_twisted.ensureDeferred
async def test_a_slow_reader_gets_every_frame_in_order_and_direct_sends_resume(server, clients):
    ana, luis = await room_of_two(clients)
    protocol = server_side(server, "Ana")
    ana.transport.pauseProducing()  # Ana stops reading: her kernel buffers fill
    padding = "p" * 32000
    posted = 0
    held = False
    while posted < 1000 and not held:
        post(server, "Luis", f"{posted} {padding}")
        posted += 1
        await sleep(0)
        held = bool(server.factory.flusher.held[protocol._fd])
    assert held, "the server never had to queue output for a client that does not read"
    for n in range(posted, posted + 5):  # these go through the queue
        post(server, "Luis", f"{n} {padding}")
    posted += 5
    ana.transport.resumeProducing()
    got = [int((await ana.expect("broadcast"))["msg"].split()[0]) for _ in range(posted)]
    assert got == list(range(posted))
    post(server, "Luis", "caught up")  # flushed through the queue, then direct again
    assert (await ana.expect("broadcast"))["msg"] == "caught up"
    await sleep(0.05)
    assert server.factory.flusher.held[protocol._fd] == 0
    assert protocol.session is not None


@pytest_twisted.ensureDeferred
async def test_a_peer_that_vanished_is_closed_the_usual_way_and_the_others_still_hear(server, clients):
    ana, luis = await room_of_two(clients)
    protocol = server_side(server, "Ana")
    # Reset, not FIN: the server's next send to Ana fails.
    sock = ana.transport.getHandle()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    ana.transport.abortConnection()
    post(server, "Luis", "anyone there?")
    assert (await luis.expect("broadcast"))["msg"] == "anyone there?"
    for _ in range(100):
        if protocol._lost:
            break
        await sleep(0.02)
    assert protocol._lost and server.hub.find("Ana") is None


@pytest_twisted.ensureDeferred
async def test_a_sender_with_a_cid_gets_its_own_echo_once_and_in_order(server, clients):
    ana, luis = await room_of_two(clients)
    hub = server.hub
    post(server, "Ana", "before")  # waits for the end of the turn
    # Luis's own message, with a cid, committed in the same turn.
    own = ChatMessage(hub.ids.take(), 0.0, "Luis", "mine", room=GENERAL, cid="c-1")
    own.from_session = hub.find("Luis")
    hub.deliver_to_room(own)
    post(server, "Ana", "after")
    mine = [await luis.expect("broadcast") for _ in range(3)]
    assert [(f["msg"], f.get("cid")) for f in mine] == [("before", None), ("mine", "c-1"), ("after", None)]
    theirs = [await ana.expect("broadcast") for _ in range(3)]
    assert [(f["msg"], f.get("cid")) for f in theirs] == [("before", None), ("mine", None), ("after", None)]
    assert await luis.quiet(0.1) == []
