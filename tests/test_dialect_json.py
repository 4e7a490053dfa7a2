"""The JSON dialect (chatserv.dialects.jsonlines) on a StringTransport connection:
login, every command, and every error code."""

from __future__ import annotations

import json

import pytest

from tests.protocol_support import World


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
