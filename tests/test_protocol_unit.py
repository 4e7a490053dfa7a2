"""ChatProtocol on StringTransport and a fake clock: frames in, frames out.

``clock.advance(0)`` runs the end of the reactor turn, when presence changes are
announced and every connection's gathered output is written.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionAborted, ConnectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from chatserv.hub import Hub
from chatserv.protocol import ChatFactory, ChatProtocol, Limits


def strict_json(line: bytes) -> Any:
    def no_constants(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    return json.loads(line.decode("utf-8"), parse_constant=no_constants)


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


@pytest.fixture
def world() -> World:
    return World()


# -- login ----------------------------------------------------------------------


def test_login_answers_history_then_users(world):
    ana = world.connect()
    history, users = ana.login("Ana")
    assert history == {"cmd": "history", "room": "general", "items": []}
    assert users == {"cmd": "users", "room": "general", "list": ["Ana"]}
    assert ana.lines() == []


def test_login_history_items(world):
    luis = world.user("Luis")
    world.clock.advance(3600)
    luis.send(cmd="broadcast", msg="Buenos días")
    luis.lines()
    history, users = world.connect().login("Ana")
    (item,) = history["items"]
    assert item["from"] == "Luis" and item["msg"] == "Buenos días" and item["room"] == "general"
    assert isinstance(item["id"], int)
    assert len(item["time"]) == 8 and item["time"][2] == ":" and item["time"][5] == ":"
    assert item["ts"] == "1970-01-01T01:00:00.000Z"
    assert users["list"] == ["Luis", "Ana"]


def test_others_hear_of_a_login(world):
    ana = world.user("Ana")
    world.user("Luis")
    system, users = ana.frames()
    assert system == {
        "cmd": "system",
        "room": "general",
        "event": "join",
        "users": ["Luis"],
        "msg": "Luis se ha unido al chat",
    }
    assert users == {"cmd": "users", "room": "general", "list": ["Ana", "Luis"]}


def test_others_hear_of_a_leave(world):
    ana = world.user("Ana")
    luis = world.user("Luis")
    world.settle(ana)
    luis.lose()
    system, users = ana.frames()
    assert system["event"] == "leave" and system["users"] == ["Luis"]
    assert system["msg"] == "Luis ha abandonado el chat"
    assert users["list"] == ["Ana"]


def test_login_with_presence_feature(world):
    ana = world.user("Ana", features=["presence", "unknown-feature"])
    luis = world.user("Luis")
    assert ana.frames() == [{"cmd": "presence", "room": "general", "joined": ["Luis"], "left": []}]
    luis.lose()
    assert ana.frames() == [{"cmd": "presence", "room": "general", "joined": [], "left": ["Luis"]}]


def test_name_taken_then_retry_on_the_same_connection(world):
    world.user("Ana")
    other = world.connect()
    other.send(cmd="login", user="ＡＮＡ")
    error = other.error()
    assert error["code"] == "name_taken" and error["ref"] == "login" and error["msg"]
    assert not other.closing
    history, users = other.login("Luis")
    assert users["list"] == ["Ana", "Luis"]


@pytest.mark.parametrize("name", ["", "a" * 33, "Ana María", "Ana\t", "Ana\u200b", "Ana\x00"])
def test_bad_name(world, name):
    conn = world.connect()
    conn.send(cmd="login", user=name)
    assert conn.error()["code"] == "bad_name"
    conn.login("Ana")


def test_display_name_is_kept(world):
    history, users = world.connect().login("ＡＮＡ")
    assert users["list"] == ["ＡＮＡ"]


def test_login_twice_is_bad_request(world):
    ana = world.user("Ana")
    ana.send(cmd="login", user="Otra")
    error = ana.error()
    assert error["code"] == "bad_request" and error["ref"] == "login"
    assert world.hub.users() == ("Ana",)


# -- commands -------------------------------------------------------------------


def test_broadcast_reaches_everyone_sender_included(world):
    ana, luis = world.user("Ana"), world.user("Luis")
    world.settle(ana, luis)
    ana.send(cmd="broadcast", msg="¡Hola a todos!", **{"from": "Luis"})
    a, b = ana.frame(), luis.frame()
    assert a == b
    assert a["cmd"] == "broadcast" and a["from"] == "Ana" and a["msg"] == "¡Hola a todos!"
    assert a["room"] == "general" and isinstance(a["id"], int) and a["ts"].endswith("Z")


def test_broadcast_bytes_are_shared(world):
    """A broadcast is encoded once: every connection is handed the same bytes object."""
    conns = [world.user(f"u{i}") for i in range(3)]
    world.settle(*conns)
    written: list[list[bytes]] = []
    for conn in conns:
        chunks: list[bytes] = []
        conn.transport.write = chunks.append  # type: ignore[method-assign]
        written.append(chunks)
    conns[0].send(cmd="broadcast", msg="x")
    world.clock.advance(0)
    assert all(len(chunks) == 1 for chunks in written)
    assert written[0][0] is written[1][0] is written[2][0]


def test_private_message(world):
    ana, luis, eva = world.user("Ana"), world.user("Luis"), world.user("Eva")
    world.settle(ana, luis, eva)
    ana.send(cmd="message", to="luis", msg="¿Vamos al cine?", **{"from": "Eva"})
    frame = luis.frame()
    assert frame["cmd"] == "private" and frame["from"] == "Ana" and frame["to"] == "Luis"
    assert frame["msg"] == "¿Vamos al cine?" and isinstance(frame["id"], int)
    assert {"time", "ts"} <= frame.keys()
    assert ana.lines() == [] and eva.lines() == []


def test_private_sent_feature(world):
    ana = world.user("Ana", features=["sent"])
    luis = world.user("Luis")
    world.settle(ana, luis)
    ana.send(cmd="message", to="Luis", msg="hola")
    sent = ana.frame()
    private = luis.frame()
    assert sent["cmd"] == "sent" and sent["to"] == "Luis" and sent["msg"] == "hola"
    assert sent["id"] == private["id"] and "from" not in sent


def test_private_to_self(world):
    ana = world.user("Ana")
    ana.send(cmd="message", to="ANA", msg="nota")
    frame = ana.frame()
    assert frame["cmd"] == "private" and frame["from"] == frame["to"] == "Ana"


def test_users(world):
    ana, _ = world.user("Ana"), world.user("Luis")
    world.settle(ana)
    ana.send(cmd="users")
    assert ana.frame() == {"cmd": "users", "room": "general", "list": ["Ana", "Luis"]}
    ana.send(cmd="users", room="GENERAL")
    assert ana.frame()["list"] == ["Ana", "Luis"]


def test_typing_room_and_private(world):
    ana, luis, eva = world.user("Ana"), world.user("Luis"), world.user("Eva")
    world.settle(ana, luis, eva)
    ana.send(cmd="typing")
    assert ana.lines() == []
    for conn in (luis, eva):
        assert conn.frame() == {"cmd": "typing", "user": "Ana", "room": "general"}
    ana.send(cmd="typing", to="luis", user="Eva")
    assert luis.frame() == {"cmd": "typing", "user": "Ana", "private": True}
    assert ana.lines() == [] and eva.lines() == []


def test_typing_is_not_sent_to_plain_clients(world):
    ana = world.user("Ana")
    pepe = world.connect()
    pepe.raw(b"Pepe\n")
    world.settle(ana, pepe)
    ana.send(cmd="typing")
    ana.send(cmd="typing", to="Pepe")
    assert pepe.lines() == []


def test_rooms_answer_is_paged():
    world = World(idle_timeout=0)  # the clock runs for minutes while nobody speaks
    ana, luis = world.user("Ana"), world.user("Luis")
    for i in range(150):
        # 100 rooms a session at most, and room creation is rate-limited.
        (ana if i < 99 else luis).send(cmd="join", room=f"sala{i:03}")
        world.clock.advance(10)
    world.settle(ana, luis)
    # A seed client's plain request gets the first page.
    ana.send(cmd="rooms")
    first = ana.frame()
    assert len(first["list"]) == 100 and first["more"] is True and first["total"] == 151
    assert first["list"][0] == {"name": "general", "members": 2}
    assert first["list"][1] == {"name": "sala000", "members": 1}
    ana.send(cmd="rooms", after=first["list"][-1]["name"])
    second = ana.frame()
    assert [r["name"] for r in second["list"]] == [f"sala{i:03}" for i in range(99, 150)]
    assert second["more"] is False
    ana.send(cmd="rooms", after="SALA010", limit=2)
    assert [r["name"] for r in ana.frame()["list"]] == ["sala011", "sala012"]
    ana.send(cmd="rooms", limit=1000)
    assert len(ana.frame()["list"]) == 100
    for bad in ({"limit": 0}, {"limit": "5"}, {"limit": True}, {"after": 5}):
        ana.send(cmd="rooms", **bad)
        assert ana.error()["code"] == "bad_request", bad
    ana.send(cmd="rooms", after="dos palabras")
    assert ana.error()["code"] == "bad_name"


def test_refused_joins_create_no_rooms():
    world = World(idle_timeout=0)
    ana = world.user("Ana")
    for i in range(99):
        ana.send(cmd="join", room=f"r{i}")
        world.clock.advance(10)
    world.settle(ana)
    for i in range(30):
        ana.send(cmd="join", room=f"x{i}")
        assert ana.error()["code"] == "bad_request"
    ana.send(cmd="rooms", after="x")
    assert ana.frame()["list"] == []
    assert world.hub.room("x0") is None


def test_join_leave_rooms(world):
    ana, luis = world.user("Ana"), world.user("Luis")
    world.settle(ana, luis)
    ana.send(cmd="join", room="Cocina")
    history, users = ana.frames()
    assert history == {"cmd": "history", "room": "Cocina", "items": []}
    assert users == {"cmd": "users", "room": "Cocina", "list": ["Ana"]}
    luis.send(cmd="join", room="cocina")
    assert [f["cmd"] for f in luis.frames()] == ["history", "users"]
    system, users = ana.frames()
    assert system["cmd"] == "system" and system["room"] == "Cocina" and system["users"] == ["Luis"]
    luis.send(cmd="broadcast", room="COCINA", msg="en la cocina")
    assert ana.frame()["room"] == "Cocina"
    assert luis.frame()["msg"] == "en la cocina"
    luis.send(cmd="typing", room="cocina")
    assert ana.frame() == {"cmd": "typing", "user": "Luis", "room": "Cocina"}
    ana.send(cmd="rooms")
    rooms = ana.frame()
    assert rooms["cmd"] == "rooms"
    assert {"name": "Cocina", "members": 2} in rooms["list"]
    assert {"name": "general", "members": 2} in rooms["list"]
    luis.send(cmd="leave", room="cocina")
    assert luis.frame() == {"cmd": "left", "room": "Cocina"}
    system, users = ana.frames()
    assert system["event"] == "leave" and users["list"] == ["Ana"]


def test_ping(world):
    conn = world.connect()
    conn.send(cmd="ping")
    assert conn.frame() == {"cmd": "pong"}
    data = {"a": [1, 2.5, None, True, "ñ😀"], "n": 10**30}
    conn.send(cmd="ping", data=data, extra="ignored")
    assert conn.frame() == {"cmd": "pong", "data": data}


# -- every error code -----------------------------------------------------------


@pytest.mark.parametrize(
    "line",
    [
        b"{",
        b'{"cmd": "login", "user": "Ana"',
        b"{'cmd': 'ping'}",
        b'{"cmd": "ping",}',
        b'{"cmd": "ping"} x',
        b'{"cmd": "ping", "data": NaN}',
        b'{"cmd": "ping", "data": Infinity}',
        b'{"cmd": "ping", "data": -Infinity}',
        b'{"cmd": "\xff"}',
        b'{"cmd": "ping", "data": "\xc3"}',
        b'{"cmd": "ping", "data": "\xed\xa0\x80"}',  # an encoded surrogate is not UTF-8
        b'{"cmd": "ping", "data": "a\x00b"}',  # raw control character in a string
    ],
)
def test_bad_json(world, line):
    conn = world.connect()
    conn.raw(line + b"\n")
    error = conn.error()
    assert error["code"] == "bad_json" and "ref" not in error
    assert not conn.closing
    conn.send(cmd="ping")
    assert conn.frame() == {"cmd": "pong"}


@pytest.mark.parametrize(
    "line",
    [
        b"[]",
        b"[1, 2]",
        b'"login"',
        b"{}",
        b'{"cmd": null}',
        b'{"cmd": 1}',
        b'{"cmd": ["login"]}',
        b'{"user": "Ana"}',
    ],
)
def test_bad_request_shapes(world, line):
    conn = world.connect()
    conn.raw(b"{}\n")  # the first line decides the JSON dialect
    conn.lines()
    conn.raw(line + b"\n")
    assert conn.error()["code"] == "bad_request"


BAD_VALUES = [None, 1, 1.5, True, [], {}, ["x"]]
FIELDS = [
    ("broadcast", "msg", {"msg": "x"}),
    ("broadcast", "room", {"msg": "x"}),
    ("message", "to", {"to": "Luis", "msg": "x"}),
    ("message", "msg", {"to": "Luis", "msg": "x"}),
    ("users", "room", {}),
    ("typing", "to", {}),
    ("typing", "room", {}),
    ("join", "room", {}),
    ("leave", "room", {"room": "cocina"}),
]


@pytest.mark.parametrize("bad", BAD_VALUES, ids=repr)
@pytest.mark.parametrize(("cmd", "field", "good"), FIELDS, ids=lambda v: str(v))
def test_ill_typed_fields(world, cmd, field, good, bad):
    ana, luis = world.user("Ana"), world.user("Luis")
    ana.send(cmd="join", room="cocina")
    world.settle(ana, luis)
    frame = {**good, field: bad}
    if bad is None and field in ("room", "to") and field not in good:
        pytest.skip("an optional field given as null means 'absent'")
    ana.send(cmd=cmd, **frame)
    error = ana.error()
    assert error["code"] == "bad_request", error
    assert error["ref"] == cmd
    assert luis.lines() == []


@pytest.mark.parametrize("bad", BAD_VALUES, ids=repr)
def test_ill_typed_login_user(world, bad):
    conn = world.connect()
    conn.send(cmd="login", user=bad)
    assert conn.error()["code"] == "bad_request"
    assert world.hub.users() == ()


@pytest.mark.parametrize("bad", ["presence", 1, None, {}, [1], ["presence", None]], ids=repr)
def test_ill_typed_login_features(world, bad):
    conn = world.connect()
    conn.send(cmd="login", user="Ana", features=bad)
    assert conn.error()["code"] == "bad_request"
    assert world.hub.users() == ()


def test_missing_fields(world):
    ana = world.user("Ana")
    for frame in [
        {"cmd": "login"},
        {"cmd": "broadcast"},
        {"cmd": "message", "msg": "x"},
        {"cmd": "message", "to": "Ana"},
        {"cmd": "leave"},
        {"cmd": "join"},
    ]:
        ana.send(**frame)
        error = ana.error()
        assert error["code"] == "bad_request", (frame, error)
        assert error["ref"] == frame["cmd"]


@pytest.mark.parametrize(
    "frame",
    [
        {"cmd": "broadcast", "msg": "\ud800"},
        {"cmd": "broadcast", "msg": "a\udfffb"},
        {"cmd": "broadcast", "msg": "\ude00\ud83d"},  # a pair the wrong way round
        {"cmd": "broadcast", "msg": "x", "room": "\ud800"},
        {"cmd": "message", "to": "\ud800", "msg": "x"},
        {"cmd": "message", "to": "Ana", "msg": "\udbff"},
        {"cmd": "typing", "to": "\ud800"},
        {"cmd": "users", "room": "\ud800"},
        {"cmd": "leave", "room": "\ud800"},
        {"cmd": "ping", "data": "\ud800"},
        {"cmd": "ping", "data": {"k": ["\ud800"]}},
    ],
    ids=repr,
)
def test_lone_surrogates_are_bad_request(world, frame):
    ana = world.user("Ana")
    ana.raw(json.dumps(frame).encode() + b"\n")  # ensure_ascii: \udXXX escapes
    error = ana.error()
    assert error["code"] == "bad_request" and error["ref"] == frame["cmd"]
    assert not ana.closing


@pytest.mark.parametrize("number", [b"1e400", b"-1e400", b"1" + b"0" * 400 + b".0"])
def test_ping_with_a_number_json_cannot_carry_back(world, number):
    """Valid JSON that parses to infinity: echoing it would emit `Infinity`."""
    conn = world.connect()
    conn.raw(b'{"cmd": "ping", "data": ' + number + b"}\n")
    error = conn.error()
    assert error["code"] == "bad_request" and error["ref"] == "ping"


def test_lone_surrogate_login(world):
    conn = world.connect()
    conn.raw(b'{"cmd": "login", "user": "\\ud800"}\n')
    # docs/PROTOCOL.md lists both: bad_request for a lone surrogate in any
    # string, bad_name for a name with a surrogate character.
    assert conn.error()["code"] in ("bad_request", "bad_name")
    conn.login("Ana")


def test_surrogate_pairs_are_fine(world):
    ana = world.user("Ana")
    ana.raw(b'{"cmd": "broadcast", "msg": "\\ud83d\\ude00 \\ud834\\udd1e"}\n')
    assert ana.frame()["msg"] == "😀 𝄞"


def test_unknown_cmd(world):
    conn = world.connect()
    conn.send(cmd="shout", msg="x")
    error = conn.error()
    assert error["code"] == "unknown_cmd" and "ref" not in error
    conn.login("Ana")
    conn.send(cmd="LOGIN", user="x")
    assert conn.error()["code"] == "unknown_cmd"
    conn.send(cmd="__init__")
    assert conn.error()["code"] == "unknown_cmd"


@pytest.mark.parametrize(
    "frame",
    [
        {"cmd": "broadcast", "msg": "x"},
        {"cmd": "message", "to": "x", "msg": "x"},
        {"cmd": "users"},
        {"cmd": "typing"},
        {"cmd": "join", "room": "x"},
        {"cmd": "leave", "room": "x"},
        {"cmd": "rooms"},
    ],
    ids=lambda f: f["cmd"],
)
def test_not_logged_in(world, frame):
    listener = world.user("Listener")
    conn = world.connect()
    conn.send(**frame)
    error = conn.error()
    assert error["code"] == "not_logged_in" and error["ref"] == frame["cmd"]
    assert listener.lines() == []


def test_ping_needs_no_login(world):
    conn = world.connect()
    conn.send(cmd="ping", data=1)
    assert conn.frame() == {"cmd": "pong", "data": 1}


def test_no_such_user(world):
    ana = world.user("Ana")
    ana.send(cmd="message", to="Luis", msg="x")
    error = ana.error()
    assert error["code"] == "no_such_user" and error["ref"] == "message"
    ana.send(cmd="typing", to="Luis")
    error = ana.error()
    assert error["code"] == "no_such_user" and error["ref"] == "typing"


def test_not_in_room(world):
    ana, luis = world.user("Ana"), world.user("Luis")
    luis.send(cmd="join", room="cocina")
    world.settle(ana, luis)
    for frame in [
        {"cmd": "broadcast", "msg": "x", "room": "cocina"},
        {"cmd": "broadcast", "msg": "x", "room": "nowhere"},
        {"cmd": "typing", "room": "cocina"},
        {"cmd": "leave", "room": "cocina"},
        {"cmd": "leave", "room": "general"},
        {"cmd": "leave", "room": "General"},
    ]:
        ana.send(**frame)
        error = ana.error()
        assert error["code"] == "not_in_room", (frame, error)
        assert error["ref"] == frame["cmd"]
    assert luis.lines() == []


def test_join_bad_room_name(world):
    ana = world.user("Ana")
    for room in ["", "co cina", "x" * 33, "a\x00"]:
        ana.send(cmd="join", room=room)
        assert ana.error()["code"] == "bad_name"


def test_server_full():
    world = World(max_connections=2)
    a, b = world.connect(), world.connect()
    third = world.connect()
    error = third.error()
    assert error["code"] == "server_full"
    assert third.closing
    third.lose()
    assert not a.closing and not b.closing
    a.lose()
    fourth = world.connect()
    assert not fourth.closing
    fourth.login("Ana")


def test_errors_leave_the_connection_open(world):
    ana = world.user("Ana")
    ana.raw(b"nope\n[]\n{}\n" + json.dumps({"cmd": "x"}).encode() + b"\n")
    assert [f["code"] for f in ana.frames()] == ["bad_json", "bad_request", "bad_request", "unknown_cmd"]
    assert not ana.closing
    ana.send(cmd="broadcast", msg="still here")
    assert ana.frame()["msg"] == "still here"


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
    assert conn.error()["code"] == "rate_limited"
    world.clock.advance(0.2)  # 0.5 + 1 token
    conn.send(cmd="ping", data="ok")
    assert conn.frame() == {"cmd": "pong", "data": "ok"}
    conn.send(cmd="ping")
    assert conn.error()["code"] == "rate_limited"
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


# -- plain-text dialect ---------------------------------------------------------


def plain(world: World, first: bytes) -> Conn:
    conn = world.connect()
    conn.raw(first)
    return conn


def test_plain_first_line_name_and_text(world):
    luis = world.user("Luis")
    world.settle(luis)
    ana = plain(world, b"Ana: hola a todos\r\n")
    lines = ana.text()
    assert lines[0].startswith("* Hola, Ana.")
    assert lines[1:] == ["* En línea: Luis, Ana", "Ana: hola a todos"]
    system, users, broadcast = luis.frames()
    assert system["event"] == "join" and users["list"] == ["Luis", "Ana"]
    assert broadcast["cmd"] == "broadcast" and broadcast["from"] == "Ana"
    assert broadcast["msg"] == "hola a todos"


def test_plain_first_line_name_only(world):
    luis = world.user("Luis")
    world.settle(luis)
    ana = plain(world, b"  Ana  \n")
    lines = ana.text()
    assert lines[-1] == "* En línea: Luis, Ana"
    assert [f["cmd"] for f in luis.frames()] == ["system", "users"]


def test_plain_history_on_login(world):
    luis = world.user("Luis")
    luis.send(cmd="broadcast", msg="uno")
    luis.send(cmd="broadcast", msg="dos\ntres")
    world.clock.advance(0)
    lines = plain(world, b"Ana\n").text()
    assert lines[1].startswith("[") and lines[1][9:] == "] Luis: uno"
    assert lines[2][9:] == "] Luis: dos" and lines[3] == "  tres"
    assert lines[4] == "* En línea: Luis, Ana"


def test_plain_lines_and_own_name_prefix(world):
    luis = world.user("Luis")
    ana = plain(world, b"Ana\n")
    world.settle(luis, ana)
    ana.raw(b"hola\nAna: con prefijo\nana:sin espacio\nLuis: no es mi nombre\n\n   \nAna: \n")
    assert [f["msg"] for f in luis.frames()] == [
        "hola",
        "con prefijo",
        "sin espacio",
        "Luis: no es mi nombre",
    ]
    assert ana.text() == ["Ana: hola", "Ana: con prefijo", "Ana: sin espacio", "Ana: Luis: no es mi nombre"]


def test_plain_double_slash_escape(world):
    luis = world.user("Luis")
    ana = plain(world, b"Ana\n")
    world.settle(luis, ana)
    ana.raw(b"//shrug\nAna: //users\n")
    assert [f["msg"] for f in luis.frames()] == ["/shrug", "/users"]


def test_plain_users_command(world):
    world.user("Luis")
    ana = plain(world, b"Ana\n")
    ana.lines()
    ana.raw(b"/users\n")
    assert ana.text() == ["* En línea: Luis, Ana"]


def test_plain_msg_command(world):
    luis = world.user("Luis")
    eva = world.user("Eva")
    ana = plain(world, b"Ana\n")
    world.settle(luis, eva, ana)
    ana.raw(b"/msg luis hola   Luis\n")
    frame = luis.frame()
    assert frame["cmd"] == "private" and frame["from"] == "Ana" and frame["to"] == "Luis"
    assert frame["msg"] == "hola   Luis"
    assert eva.lines() == []
    assert ana.text() == ["[privado a Luis] Ana: hola   Luis"]
    luis.send(cmd="message", to="Ana", msg="qué\ntal")
    assert ana.text() == ["[privado] Luis: qué", "  tal"]


def test_plain_msg_errors(world):
    ana = plain(world, b"Ana\n")
    ana.lines()
    ana.raw(b"/msg\n/msg Luis\n/msg Nadie hola\n/nope\n")
    lines = ana.text()
    assert [line.split(":")[0] for line in lines] == [
        "* error bad_request",
        "* error bad_request",
        "* error no_such_user",
        "* error unknown_cmd",
    ]
    assert not ana.closing


def test_plain_quit(world):
    luis = world.user("Luis")
    ana = plain(world, b"Ana\n")
    world.settle(luis, ana)
    ana.raw(b"/quit\nnot sent\n")
    assert ana.closing
    system, users = luis.frames()
    assert system["event"] == "leave" and system["users"] == ["Ana"]
    ana.lose()
    assert luis.lines() == []


def test_plain_name_taken_retry(world):
    world.user("Ana")
    conn = plain(world, b"ana: hola\n")
    (line,) = conn.text()
    assert line.startswith("* error name_taken:")
    conn.raw(b"Ana Maria\n")
    (line,) = conn.text()
    assert line.startswith("* error bad_name:")
    conn.raw(b": hola\n")
    assert conn.text()[0].startswith("* error bad_name:")
    conn.raw(b"Anita: por fin\n")
    lines = conn.text()
    assert lines[0].startswith("* Hola, Anita.") and lines[-1] == "Anita: por fin"


def test_plain_receives_room_messages_and_notices(world):
    ana = plain(world, b"Ana\n")
    ana.lines()
    luis = world.user("Luis")
    assert ana.text() == ["Luis se ha unido al chat."]
    luis.send(cmd="broadcast", msg="hola\r\nqué tal\n")
    assert ana.text() == ["Luis: hola", "  qué tal", "  "]
    luis.lose()
    assert ana.text() == ["Luis ha abandonado el chat."]


def test_plain_invalid_utf8(world):
    luis = world.user("Luis")
    ana = plain(world, b"Ana\n")
    world.settle(luis, ana)
    ana.raw(b"caf\xe9\n")
    (line,) = ana.text()
    assert line.startswith("* error bad_json:")
    assert luis.lines() == []


def test_plain_control_characters_are_relayed_to_json_clients(world):
    luis = world.user("Luis")
    ana = plain(world, b"Ana\n")
    world.settle(luis, ana)
    ana.raw(b"a\x00b\x07c\td\n")
    assert luis.frame()["msg"] == "a\x00b\x07c\td"


def test_blank_first_lines_do_not_decide_the_mode(world):
    conn = world.connect()
    conn.raw(b"\n  \r\n\t\n")
    assert conn.lines() == []
    conn.raw(b'  {"cmd": "login", "user": "Ana"}\n')
    assert [f["cmd"] for f in conn.frames()] == ["history", "users"]


def test_a_json_client_sending_plain_text_gets_bad_json(world):
    ana = world.user("Ana")
    ana.raw(b"Ana: hola\n")
    assert ana.error()["code"] == "bad_json"


def test_plain_client_sending_json_posts_it_as_text(world):
    luis = world.user("Luis")
    ana = plain(world, b"Ana\n")
    world.settle(luis, ana)
    ana.raw(b'{"cmd": "broadcast", "msg": "x"}\n')
    assert luis.frame()["msg"] == '{"cmd": "broadcast", "msg": "x"}'


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
