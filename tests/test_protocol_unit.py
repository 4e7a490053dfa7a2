"""ChatProtocol, the connection, on StringTransport and a fake clock: its
bounds (line length, rate, slow readers), its end, and coalesced notices.

``clock.advance(0)`` runs the end of the reactor turn, when presence changes are
announced and every connection's gathered output is written.
"""

from __future__ import annotations

import pytest
from twisted.internet.error import ConnectionAborted

from tests.protocol_support import World, plain


@pytest.fixture
def world() -> World:
    return World()


# -- line length ----------------------------------------------------------------


def test_line_too_long_closes():
    world = World(max_line=100)
    ana = world.user("Ana")
    listener = world.user("Luis")
    world.settle(ana, listener)
    ana.raw(b"{" + b" " * 100 + b"\n")
    error = ana.error()
    assert error["code"] == "line_too_long"
    assert ana.closing
    # Nothing more is read or written on a closing connection.
    ana.send(cmd="broadcast", msg="late")
    assert ana.lines() == []
    # The session leaves when the server hangs up, not when the peer goes.
    system, users = listener.frames()
    assert system["event"] == "leave" and users["list"] == ["Luis"]
    ana.lose()
    assert listener.lines() == []


def test_line_too_long_without_newline():
    world = World(max_line=100)
    conn = world.connect()
    conn.raw(b"x" * 60)
    assert conn.lines() == []
    conn.raw(b"x" * 60)
    assert conn.error()["code"] == "line_too_long"
    assert conn.closing


def test_line_at_the_limit_is_accepted():
    world = World(max_line=100)
    conn = world.connect()
    line = b'{"cmd":"ping","data":"' + b"x" * 76 + b'"}'
    assert len(line) == 100
    conn.raw(line + b"\n")
    assert conn.frame()["cmd"] == "pong"
    conn.raw(line[:50])
    conn.raw(line[50:] + b"\n")
    assert conn.frame()["cmd"] == "pong"


def test_line_too_long_in_plain_mode():
    world = World(max_line=100)
    conn = world.connect()
    conn.raw(b"Ana\n")
    conn.lines()
    conn.raw(b"y" * 101 + b"\n")
    (line,) = conn.text()
    assert line.startswith("* error line_too_long:")
    assert conn.closing


# -- rate limit -----------------------------------------------------------------


def test_rate_limit_burst_then_refill():
    world = World(rate_limit=5, rate_burst=20, login_timeout=0)
    conn = world.connect()
    world.clock.advance(100)  # the bucket is full from the start; time changes nothing
    for _ in range(20):
        conn.send(cmd="ping")
    assert [f["cmd"] for f in conn.frames()] == ["pong"] * 20
    conn.send(cmd="ping", data=21)
    error = conn.error()
    assert error["code"] == "rate_limited"
    assert not conn.closing
    world.clock.advance(0.1)  # half a token
    conn.send(cmd="ping")
    assert conn.frames() == []  # dropped; answered at most once a second
    world.clock.advance(0.2)  # 0.5 + 1 token
    conn.send(cmd="ping", data="ok")
    assert conn.frame() == {"cmd": "pong", "data": "ok"}
    conn.send(cmd="ping")
    assert conn.frames() == []
    world.clock.advance(60)  # refills up to the burst, not beyond
    for _ in range(21):
        conn.send(cmd="ping")
    assert [f["cmd"] for f in conn.frames()] == ["pong"] * 20 + ["error"]


def test_rate_limited_messages_are_dropped():
    world = World(rate_limit=5, rate_burst=20)
    ana = world.user("Ana")  # the login took one token
    luis = world.user("Luis")
    world.settle(ana, luis)
    for i in range(20):
        ana.send(cmd="broadcast", msg=str(i))
    got = [f["msg"] for f in luis.frames()]
    assert got == [str(i) for i in range(19)]
    # Refused at once; the others are echoed once committed, at the end of the turn.
    assert [f.get("code") for f in ana.frames()] == ["rate_limited"] + [None] * 19


def test_rate_limit_applies_to_plain_clients():
    world = World(rate_limit=5, rate_burst=3)
    conn = world.connect()
    conn.raw(b"Pepe\nuno\ndos\ntres\n")
    lines = conn.text()
    assert sum(line.startswith("* error rate_limited:") for line in lines) == 1
    assert "Pepe: uno" in lines and "Pepe: dos" in lines and "Pepe: tres" not in lines


def test_a_flood_past_the_rate_limit_gets_one_answer_per_second():
    # Answering every dropped line would cost the server more than the flood.
    world = World(rate_limit=5, rate_burst=20)
    ana = world.user("Ana")
    world.settle(ana)
    for _ in range(200):
        ana.send(cmd="ping")
    codes = [f.get("code") for f in ana.frames()]
    assert codes.count("rate_limited") == 1
    world.clock.advance(1.0)  # five tokens back, and one more answer allowed
    for _ in range(50):
        ana.send(cmd="ping")
    frames = ana.frames()
    assert [f.get("code") for f in frames].count("rate_limited") == 1
    assert [f["cmd"] for f in frames].count("pong") == 5


def test_rate_limit_off():
    world = World(rate_limit=0)
    conn = world.connect()
    for _ in range(500):
        conn.send(cmd="ping")
    assert len(conn.frames()) == 500


# -- slow readers ---------------------------------------------------------------


def test_paused_output_is_kept_in_order_and_written_on_resume():
    world = World(max_output=10_000)
    ana, luis = world.user("Ana"), world.user("Luis")
    world.settle(ana, luis)
    luis.protocol.pauseProducing()
    for i in range(5):
        ana.send(cmd="broadcast", msg=f"m{i}")
    assert luis.lines() == []
    luis.protocol.resumeProducing()
    assert [f["msg"] for f in luis.frames()] == [f"m{i}" for i in range(5)]


def test_a_client_that_stops_reading_is_dropped():
    world = World(max_output=10_000)
    ana, luis, eva = world.user("Ana"), world.user("Luis"), world.user("Eva")
    world.settle(ana, luis, eva)
    luis.protocol.pauseProducing()
    big = "x" * 3000
    for _ in range(3):
        ana.send(cmd="broadcast", msg=big)
    world.clock.advance(0)
    assert not luis.transport.disconnected  # 9 KB kept: under the bound
    ana.send(cmd="broadcast", msg=big)
    world.clock.advance(0)
    assert luis.transport.disconnected  # aborted, not a graceful close
    assert luis.lines() == []
    # The reactor reports the abort; the hub logs Luis out and the others see him leave.
    luis.lose(ConnectionAborted())
    assert world.hub.find("Luis") is None
    frames = ana.frames()
    assert [f["cmd"] for f in frames][-2:] == ["system", "users"]
    assert frames[-2]["event"] == "leave" and frames[-2]["users"] == ["Luis"]
    assert frames[-1]["list"] == ["Ana", "Eva"]
    # The name is free again.
    world.user("Luis")


def test_unread_output_is_not_bounded_while_the_transport_keeps_up():
    """Without a pause, output is written at the end of each turn: no drop."""
    world = World(max_output=1_000)
    ana, luis = world.user("Ana"), world.user("Luis")
    world.settle(ana, luis)
    for _ in range(5):
        ana.send(cmd="broadcast", msg="y" * 500)
        world.clock.advance(0)
    assert not luis.transport.disconnected
    assert len(luis.lines()) == 5


def test_quit_from_a_client_that_does_not_read_is_not_left_hanging():
    world = World(max_output=10_000)
    ana = world.user("Ana")
    pepe = world.connect()
    pepe.raw(b"Pepe\n")
    world.settle(ana, pepe)
    pepe.protocol.pauseProducing()
    ana.send(cmd="broadcast", msg="z" * 3000)
    pepe.raw(b"/quit\n")
    world.clock.advance(0)
    for _ in range(5):
        ana.send(cmd="broadcast", msg="z" * 3000)
    world.clock.advance(60)
    # A paused transport cannot finish a graceful close: it must be aborted.
    assert pepe.transport.disconnected


# -- connection end ---------------------------------------------------------------


def test_disconnect_before_login(world):
    luis = world.user("Luis")
    world.settle(luis)
    conn = world.connect()
    conn.lose()
    assert luis.lines() == []
    assert conn.protocol not in world.factory.connections


def test_disconnect_all(world):
    ana, luis = world.user("Ana"), world.user("Luis")
    world.factory.disconnect_all()
    assert ana.closing and luis.closing


# -- coalesced notices ----------------------------------------------------------------


def test_one_notice_names_everyone_who_joined_in_the_window(world):
    ana = world.user("Ana")
    pepe = plain(world, b"Pepe\n")
    world.settle(ana, pepe)
    newcomers = [world.connect() for _ in range(5)]
    for conn, name in zip(newcomers, ["Bea", "Carl", "Dani", "Eli", "Flor"], strict=True):
        conn.send(cmd="login", user=name)
    system, users = ana.frames()
    assert system["event"] == "join"
    assert system["users"] == ["Bea", "Carl", "Dani", "Eli", "Flor"]
    assert system["msg"] == "Bea, Carl y 3 más se han unido al chat"
    assert users["list"] == ["Ana", "Pepe", "Bea", "Carl", "Dani", "Eli", "Flor"]
    assert pepe.text() == ["Bea, Carl y 3 más se han unido al chat."]
    # Every newcomer gets its own login answer, and no notice about itself.
    for conn in newcomers:
        frames = conn.frames()
        assert [f["cmd"] for f in frames] == ["history", "users"]
        assert frames[1]["list"] == users["list"]
    newcomers[0].lose()
    newcomers[1].lose()
    system, users = ana.frames()
    assert system["event"] == "leave" and system["msg"] == "Bea y Carl han abandonado el chat"
    assert pepe.text() == ["Bea y Carl han abandonado el chat."]


def test_reconnect_in_the_same_turn_gets_a_complete_login_answer(world):
    world.user("Luis")
    ana = world.user("Ana")
    ana.lose()  # the old connection drops ...
    again = world.connect()
    again.send(cmd="login", user="Ana")  # ... and its client is back in the same turn
    assert [f["cmd"] for f in again.frames()] == ["history", "users"]


def test_an_evicted_session_is_told_why_and_hung_up():
    """The cluster found the name held by another node's session
    (chatserv.cluster_redis): the client reads name_taken, then the server
    hangs up, and the others see it leave."""
    from chatserv.errors import NameTaken

    world = World()
    ana = world.user("Ana")
    listener = world.user("Luis")
    world.settle(ana, listener)
    session = world.hub.find("Ana")
    world.hub.evict(session, NameTaken("name_lost", name="Ana"))
    error = ana.error()
    assert error["code"] == "name_taken" and "Ana" in error["msg"] and "ref" not in error
    assert ana.closing
    assert world.hub.find("Ana") is None
    system, users = listener.frames()
    assert system["event"] == "leave" and users["list"] == ["Luis"]
    ana.lose()
