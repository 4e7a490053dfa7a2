"""The hostile-input battery.

Every test runs a hostile connection next to two well-behaved clients: a
speaker and a watcher. After each attack the watcher must still receive the
speaker's broadcasts, and a brand-new client must still be able to log in.
The last part fuzzes frames through StringTransport with hypothesis.
"""

from __future__ import annotations

import itertools
import json
import socket
from typing import Any

import pytest_twisted
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.testing import MemoryReactorClock, StringTransport

from chatserv.hub import Hub
from chatserv.protocol import ChatFactory, Limits
from tests.support import LineClient, connect, server_port, sleep, start_server

_tokens = itertools.count()


class Arena:
    """A server, a speaker and a watcher, and the hostile connections of one test."""

    def __init__(self) -> None:
        self.server: Any = None
        self.speaker: LineClient
        self.watcher: LineClient
        self.made: list[LineClient] = []
        self.sockets: list[socket.socket] = []
        self.logins = 0

    async def start(self, **options: Any) -> None:
        self.server = await start_server(**options)
        self.watcher = await self.client()
        await self.watcher.login("Watcher")
        self.speaker = await self.client()
        await self.speaker.login("Speaker")
        await self.watcher.expect("users", list=["Watcher", "Speaker"])

    async def client(self) -> LineClient:
        client = await connect(self.server)
        self.made.append(client)
        return client

    async def user(self, name: str) -> LineClient:
        client = await self.client()
        await client.login(name)
        return client

    def raw_socket(self, rcvbuf: int | None = None) -> socket.socket:
        """A blocking socket the test writes to and never reads from."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.connect(("127.0.0.1", server_port(self.server)))
        self.sockets.append(sock)
        return sock

    async def alive(self) -> None:
        """The watcher still receives the speaker's broadcasts."""
        token = f"still alive {next(_tokens)}"
        self.speaker.send(cmd="broadcast", msg=token)
        await self.watcher.expect("broadcast", msg=token, **{"from": "Speaker"})

    async def new_login(self) -> None:
        """A brand-new client can still log in and is seen by the watcher."""
        self.logins += 1
        name = f"Fresh{self.logins}"
        client = await self.client()
        history, users = await client.login(name)
        assert name in users["list"]
        await self.watcher.expect("system", event="join", users=[name])
        await self.alive()

    async def stop(self) -> None:
        for sock in self.sockets:
            sock.close()
        for client in self.made:
            client.close()
        for client in self.made:
            if client.connected:
                await client.closed
        if self.server is not None:
            await self.server.stopService()


@pytest_twisted.async_yield_fixture
async def arena():
    a = Arena()
    await a.start()
    yield a
    await a.new_login()
    await a.stop()


@pytest_twisted.async_yield_fixture
async def make_arena():
    """For tests that need server options: ``await make_arena(max_output=...)``."""
    made: list[Arena] = []

    async def make(**options: Any) -> Arena:
        a = Arena()
        made.append(a)
        await a.start(**options)
        return a

    yield make
    for a in made:
        await a.new_login()
        await a.stop()


async def errors(client: LineClient, n: int) -> list[dict[str, Any]]:
    frames = [await client.frame() for _ in range(n)]
    assert all(f["cmd"] == "error" for f in frames), frames
    return frames


async def ping(client: LineClient) -> None:
    """Round trip: everything sent before has been handled, the connection is open."""
    client.send(cmd="ping", data="sync")
    await client.expect("pong", data="sync")


# -- malformed JSON ---------------------------------------------------------------

MALFORMED = [
    b"{",
    b"}",
    b"{{}}",
    b'{"cmd"}',
    b'{"cmd": }',
    b'{"cmd": "ping"',
    b'{"cmd": "ping"}}',
    b'{"cmd": "ping",}',
    b'{"cmd": "ping"} {"cmd": "ping"}',
    b"{'cmd': 'ping'}",
    b'{cmd: "ping"}',
    b'{"cmd": "ping" "data": 1}',
    b'{"cmd": undefined}',
    b'{"cmd": "ping", "data": NaN}',
    b'{"cmd": "ping", "data": Infinity}',
    b'{"cmd": "ping", "data": 0x10}',
    b'{"cmd": "ping", "data": 01}',
    b'{"cmd": "ping", "data": .5}',
    b'{"cmd": "ping", "data": "\\x41"}',
    b'{"cmd": "ping", "data": "\\u12"}',
    b'{"cmd": "ping", "data": "unterminated}',
    b'{"cmd": "ping"} // comment',
    b"\xef\xbb\xbf{}",  # a BOM is not JSON
    b"{" + b"\x00" * 10 + b"}",
    b"{\x0c}",
]


@pytest_twisted.ensureDeferred
async def test_malformed_json(arena):
    hostile = await arena.user("Hostile")
    hostile.send_raw(b"\n".join(MALFORMED) + b"\n")
    frames = await errors(hostile, len(MALFORMED))
    assert [f["code"] for f in frames] == ["bad_json"] * len(MALFORMED)
    await ping(hostile)
    await arena.alive()


@pytest_twisted.ensureDeferred
async def test_json_values_that_are_not_objects(arena):
    hostile = await arena.user("Hostile")
    values = [b"null", b"true", b"0", b"-1.5e3", b'"login"', b"[]", b'[{"cmd": "ping"}]']
    hostile.send_raw(b"\n".join(values) + b"\n")
    frames = await errors(hostile, len(values))
    assert [f["code"] for f in frames] == ["bad_request"] * len(values)
    await ping(hostile)
    await arena.alive()


# -- wrong types for every field of every command ---------------------------------

WRONG = [None, 0, -1, 1.5, True, False, "", [], {}, ["x"], {"a": "b"}]
STRING_FIELDS = {
    "login": {"user": "Nuevo"},
    "broadcast": {"msg": "x", "room": "general"},
    "message": {"to": "Watcher", "msg": "x"},
    "users": {"room": "general"},
    "typing": {"to": "Watcher", "room": "general"},
    "join": {"room": "cocina"},
    "leave": {"room": "cocina"},
}
REQUIRED = {("login", "user"), ("broadcast", "msg"), ("message", "to"), ("message", "msg")}
REQUIRED |= {("join", "room"), ("leave", "room")}


def wrong_type_frames() -> list[tuple[dict[str, Any], set[str]]]:
    """(frame, acceptable error codes) for every field of every command given every
    wrong type. Only the field under test is wrong."""
    cases = []
    for cmd, fields in STRING_FIELDS.items():
        for field in fields:
            for bad in WRONG:
                if isinstance(bad, str):
                    continue  # "" is a string: tested with the name rules
                if bad is None and (cmd, field) not in REQUIRED:
                    continue  # null for an optional field means absent
                frame = {"cmd": cmd, **{k: v for k, v in fields.items() if k != "room" or field == "room"}}
                if cmd == "typing":
                    frame = {"cmd": cmd}
                frame[field] = bad
                cases.append((frame, {"bad_request"}))
    for bad in WRONG:
        if not isinstance(bad, list):
            cases.append(({"cmd": "login", "user": "Nuevo", "features": bad}, {"bad_request"}))
    for bad in [[1], [None], [["presence"]], [{"a": 1}], ["presence", 2]]:
        cases.append(({"cmd": "login", "user": "Nuevo", "features": bad}, {"bad_request"}))
    for bad in WRONG:
        if not isinstance(bad, str):
            cases.append(({"cmd": bad}, {"bad_request"}))
    return cases


WRONG_TYPES = wrong_type_frames()


@pytest_twisted.ensureDeferred
async def test_wrong_types_for_every_field_of_every_command(arena):
    hostile = await arena.user("Hostile")
    hostile.send(cmd="join", room="cocina")
    await hostile.expect("users", room="cocina")
    # Logged in: every command is checked past the login gate; one packet.
    hostile.send_raw(b"".join(json.dumps(f).encode() + b"\n" for f, _ in WRONG_TYPES))
    frames = await errors(hostile, len(WRONG_TYPES))
    for (frame, codes), got in zip(WRONG_TYPES, frames, strict=True):
        assert got["code"] in codes, (frame, got)
        if isinstance(frame["cmd"], str):
            assert got["ref"] == frame["cmd"], (frame, got)
    await ping(hostile)
    await arena.alive()


@pytest_twisted.ensureDeferred
async def test_wrong_types_before_login(arena):
    hostile = await arena.client()
    logins = [f for f, _ in WRONG_TYPES if f["cmd"] == "login"]
    hostile.send_raw(b"".join(json.dumps(f).encode() + b"\n" for f in logins))
    frames = await errors(hostile, len(logins))
    assert {f["code"] for f in frames} == {"bad_request"}
    await hostile.login("Hostile")
    await arena.alive()


# -- deep nesting -----------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_deep_nesting(arena):
    hostile = await arena.user("Hostile")
    lines = [
        b"[" * 60_000,
        b"[" * 30_000 + b"]" * 30_000,
        b'{"a":' * 10_000 + b"1" + b"}" * 10_000,
        b'{"cmd": "broadcast", "msg": "x", "extra": ' + b"[" * 20_000 + b"]" * 20_000 + b"}",
        b'{"cmd": "ping", "data": ' + b'{"a":' * 10_000 + b"1" + b"}" * 10_000 + b"}",
    ]
    for line in lines:
        assert len(line) <= 65_536
        hostile.send_raw(line + b"\n")
        frame = await hostile.frame()
        assert frame["cmd"] == "error" and frame["code"] == "bad_json", frame
    await ping(hostile)
    await arena.alive()


@pytest_twisted.ensureDeferred
async def test_nesting_near_the_parser_limit_is_answered_once(arena):
    """Between what the parser accepts and what the encoder can echo back, every
    ping gets exactly one answer and the connection stays open."""
    hostile = await arena.user("Hostile")
    depths = list(range(800, 1001))  # every depth: the gap is a few levels wide
    hostile.send_raw(b"".join(b'{"cmd": "ping", "data": ' + b"[" * d + b"]" * d + b"}\n" for d in depths))
    seen = []
    for depth in depths:
        line = await hostile.line()
        seen.append(json.loads(line)["code"] if line.startswith(b'{"cmd":"error"') else "pong")
        if line.startswith(b'{"cmd":"pong"'):
            # Too deep for this test's own parser: check the bytes.
            assert line == b'{"cmd":"pong","data":' + b"[" * depth + b"]" * depth + b"}"
        else:
            frame = json.loads(line)
            assert frame["cmd"] == "error" and frame["code"] in ("bad_json", "bad_request"), frame
    # The range spans the parser's limit (on this stack, a couple of depths in
    # between parse but cannot be encoded back: bad_request).
    assert "pong" in seen and "bad_json" in seen
    await ping(hostile)
    await arena.alive()


@pytest_twisted.ensureDeferred
async def test_deep_nesting_100000(make_arena):
    a = await make_arena(max_line=600_000)
    hostile = await a.user("Hostile")
    hostile.send_raw(b"[" * 100_000 + b"\n" + b'{"x":' * 100_000 + b"\n")
    frames = await errors(hostile, 2)
    assert [f["code"] for f in frames] == ["bad_json", "bad_json"]
    await ping(hostile)
    await a.alive()


# -- NUL and control characters ------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_nul_and_control_characters(arena):
    hostile = await arena.client()
    controls = "".join(chr(c) for c in range(32)) + "\x7f\x85\u2028\u2029\u200e\ufeff"
    # In names: refused.
    for name in ["\x00", "a\x00b", "\x1b[2J", "a\rb", "a\x85", "\u200e", "\ufeff"]:
        hostile.send(cmd="login", user=name)
        assert (await hostile.frame())["code"] == "bad_name"
    await hostile.login("Hostile")
    await arena.watcher.expect("users", list=["Watcher", "Speaker", "Hostile"])
    # Escaped in message text: relayed exactly.
    hostile.send(cmd="broadcast", msg=controls)
    frame = await arena.watcher.expect("broadcast", **{"from": "Hostile"})
    assert frame["msg"] == controls
    assert (await hostile.expect("broadcast"))["msg"] == controls
    # Raw (unescaped) inside a JSON string, or raw NULs around it: not JSON.
    raw = [
        b'{"cmd": "broadcast", "msg": "a\x00b"}',
        b'{"cmd": "broadcast", "msg": "a\x1bb"}',
        b'\x00{"cmd": "ping"}',
        b'{"cmd": "ping"}\x00',
        b"\x00\x00\x00",
    ]
    hostile.send_raw(b"\n".join(raw) + b"\n")
    frames = await errors(hostile, len(raw))
    assert {f["code"] for f in frames} == {"bad_json"}
    await ping(hostile)
    await arena.alive()


@pytest_twisted.ensureDeferred
async def test_control_characters_from_a_plain_client(arena):
    pepe = await arena.client()
    pepe.send_raw(b"\x00\x01\n")
    assert (await pepe.line()).startswith(b"* error bad_name:")
    pepe.send_raw(b"Pepe\n")
    await arena.watcher.expect("users", list=["Watcher", "Speaker", "Pepe"])
    pepe.send_raw(b"a\x00b\x1b[31mc\x7f\n")
    frame = await arena.watcher.expect("broadcast", **{"from": "Pepe"})
    assert frame["msg"] == "a\x00b\x1b[31mc\x7f"
    await arena.alive()


# -- lone surrogates -------------------------------------------------------------------

SURROGATE_FRAMES = [
    b'{"cmd": "broadcast", "msg": "\\ud800"}',
    b'{"cmd": "broadcast", "msg": "\\udfff"}',
    b'{"cmd": "broadcast", "msg": "x\\ud83d"}',
    b'{"cmd": "broadcast", "msg": "\\ude00\\ud83d"}',
    b'{"cmd": "broadcast", "msg": "\\ud83d\\ud83d"}',
    b'{"cmd": "broadcast", "msg": "x", "room": "\\ud800"}',
    b'{"cmd": "message", "to": "\\ud800", "msg": "x"}',
    b'{"cmd": "message", "to": "Watcher", "msg": "\\udc00"}',
    b'{"cmd": "typing", "to": "\\ud800"}',
    b'{"cmd": "typing", "room": "\\ud800"}',
    b'{"cmd": "users", "room": "\\ud800"}',
    b'{"cmd": "join", "room": "\\ud800"}',
    b'{"cmd": "leave", "room": "\\ud800"}',
    b'{"cmd": "ping", "data": "\\ud800"}',
    b'{"cmd": "ping", "data": ["\\ud800"]}',
    b'{"cmd": "ping", "data": {"\\ud800": 1}}',
]


@pytest_twisted.ensureDeferred
async def test_lone_surrogates(arena):
    hostile = await arena.user("Hostile")
    hostile.send_raw(b"\n".join(SURROGATE_FRAMES) + b"\n")
    frames = await errors(hostile, len(SURROGATE_FRAMES))
    for line, frame in zip(SURROGATE_FRAMES, frames, strict=True):
        # join's room is a name: a surrogate is also a bad name.
        allowed = {"bad_request", "bad_name"} if b'"join"' in line else {"bad_request"}
        assert frame["code"] in allowed, (line, frame)
    # A lone surrogate in a field the server ignores is harmless; in cmd, unknown.
    hostile.send_raw(b'{"cmd": "broadcast", "msg": "ok", "x": "\\ud800"}\n{"cmd": "\\ud800"}\n')
    assert (await arena.watcher.expect("broadcast", **{"from": "Hostile"}))["msg"] == "ok"
    # The refusal is immediate; the echo comes once the message is committed.
    assert (await hostile.frame())["code"] == "unknown_cmd"
    await hostile.expect("broadcast", msg="ok")
    # Before login, in the name.
    anon = await arena.client()
    anon.send_raw(b'{"cmd": "login", "user": "\\ud800"}\n{"cmd": "login", "user": "a\\udfff"}\n')
    assert {f["code"] for f in await errors(anon, 2)} <= {"bad_request", "bad_name"}
    await ping(hostile)
    await arena.alive()


# -- invalid UTF-8 -----------------------------------------------------------------

INVALID_UTF8 = [
    b"\xff",
    b"\xfe\xff",
    b"\x80",  # lone continuation byte
    b"\xc3",  # truncated sequence
    b"\xe2\x82",
    b"\xc0\xaf",  # overlong "/"
    b"\xe0\x80\xaf",
    b"\xed\xa0\x80",  # an encoded surrogate
    b"\xed\xbf\xbf",
    b"\xf4\x90\x80\x80",  # above U+10FFFF
    b"\xf8\x88\x80\x80\x80",
]


@pytest_twisted.ensureDeferred
async def test_invalid_utf8(arena):
    hostile = await arena.user("Hostile")
    lines = [b'{"cmd": "broadcast", "msg": "' + bad + b'"}' for bad in INVALID_UTF8]
    lines += [b'{"cmd": "broadcast", "msg": "x", "' + bad + b'": 1}' for bad in INVALID_UTF8[:3]]
    hostile.send_raw(b"\n".join(lines) + b"\n")
    frames = await errors(hostile, len(lines))
    assert {f["code"] for f in frames} == {"bad_json"}
    await ping(hostile)
    await arena.alive()


@pytest_twisted.ensureDeferred
async def test_invalid_utf8_from_a_plain_client(arena):
    pepe = await arena.client()
    pepe.send_raw(b"Pe\xffpe\n")  # as a name
    assert (await pepe.line()).startswith(b"* error bad_json:")
    pepe.send_raw(b"Pepe\n")
    await arena.watcher.expect("users", list=["Watcher", "Speaker", "Pepe"])
    pepe.send_raw(b"".join(b"x" + bad + b"\n" for bad in INVALID_UTF8))
    for _ in INVALID_UTF8:
        line = await pepe.line()
        while not line.startswith(b"* error"):  # skip notices and others' messages
            line = await pepe.line()
        assert line.startswith(b"* error bad_json:")
    await arena.alive()


# -- line length -----------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_oversize_line_closes_only_that_connection(arena):
    hostile = await arena.user("Hostile")
    await arena.watcher.expect("users", list=["Watcher", "Speaker", "Hostile"])
    head, tail = b'{"cmd": "broadcast", "msg": "', b'"}'
    line = head + b"x" * (65_537 - len(head) - len(tail)) + tail
    assert len(line) == 65_537
    hostile.send_raw(line + b"\n")
    frame = await hostile.frame()
    assert frame["cmd"] == "error" and frame["code"] == "line_too_long"
    await hostile.closed
    await arena.watcher.expect("system", event="leave", users=["Hostile"])
    await arena.alive()


@pytest_twisted.ensureDeferred
async def test_oversize_without_newline_in_many_chunks(arena):
    hostile = await arena.client()
    chunk = b"{" + b" " * 8191
    for _ in range(9):  # 73,728 bytes and still no newline
        hostile.send_raw(chunk)
        await sleep(0)
    frame = await hostile.frame()
    assert frame["code"] == "line_too_long"
    await hostile.closed
    await arena.alive()


@pytest_twisted.ensureDeferred
async def test_exactly_65536_bytes_is_accepted(arena):
    hostile = await arena.user("Hostile")
    head, tail = b'{"cmd": "broadcast", "msg": "', b'"}'
    line = head + b"y" * (65_536 - len(head) - len(tail)) + tail
    assert len(line) == 65_536
    hostile.send_raw(line + b"\n")
    frame = await arena.watcher.expect("broadcast", **{"from": "Hostile"})
    assert len(frame["msg"]) == 65_536 - len(head) - len(tail)
    await ping(hostile)
    await arena.alive()


@pytest_twisted.ensureDeferred
async def test_65537_bytes_in_a_plain_first_line(arena):
    hostile = await arena.client()
    hostile.send_raw(b"a" * 65_537 + b"\n")
    line = await hostile.line()
    assert b"line_too_long" in line
    await hostile.closed
    await arena.alive()


# -- packets ---------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_command_split_byte_by_byte(arena):
    hostile = await arena.client()
    hostile.transport.setTcpNoDelay(True)
    text = "ñandú 😀 𝄞 — ok"
    data = (
        json.dumps({"cmd": "login", "user": "Troceado"}, ensure_ascii=False).encode()
        + b"\r\n"
        + json.dumps({"cmd": "broadcast", "msg": text}, ensure_ascii=False).encode()
        + b"\n"
    )
    for i in range(len(data)):
        hostile.send_raw(data[i : i + 1])
        await sleep(0)  # one reactor turn: the byte leaves on its own
    frame = await arena.watcher.expect("broadcast", **{"from": "Troceado"})
    assert frame["msg"] == text
    await arena.alive()


@pytest_twisted.ensureDeferred
async def test_many_commands_in_one_packet(arena):
    hostile = await arena.client()
    n = 1000
    frames = [{"cmd": "login", "user": "Rafaga"}]
    frames += [{"cmd": "broadcast", "msg": f"r{i}"} for i in range(n)]
    frames += [{"cmd": "users"}, {"cmd": "nope"}, {"cmd": "ping", "data": "end"}]
    hostile.send_raw(b"".join(json.dumps(f).encode() + b"\n" for f in frames))
    for i in range(n):
        frame = await arena.watcher.expect("broadcast", **{"from": "Rafaga"})
        assert frame["msg"] == f"r{i}"
    await hostile.expect("history")
    await hostile.expect("users")
    # Answers come at once, the echoes of the broadcasts once committed:
    # each stream in its own order.
    got = [await hostile.frame() for _ in range(n + 3)]
    echoes = [f for f in got if f["cmd"] == "broadcast"]
    assert [f["msg"] for f in echoes] == [f"r{i}" for i in range(n)]
    rest = [f for f in got if f["cmd"] != "broadcast"]
    # The login's member list comes at the end of the turn, like the echoes.
    answers = [f for f in rest if f["cmd"] != "users"]
    assert len(rest) == 3 and answers[0]["code"] == "unknown_cmd"
    assert answers[1] == {"cmd": "pong", "data": "end"}
    await arena.alive()


@pytest_twisted.ensureDeferred
async def test_many_plain_lines_in_one_packet(arena):
    hostile = await arena.client()
    hostile.send_raw(b"Rafaga: 0\n" + b"".join(b"%d\n" % i for i in range(1, 300)))
    for i in range(300):
        frame = await arena.watcher.expect("broadcast", **{"from": "Rafaga"})
        assert frame["msg"] == str(i)
    await arena.alive()


# -- numbers ---------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_huge_integers(arena):
    hostile = await arena.user("Hostile")
    big = "9" * 4000  # under Python's 4300-digit conversion limit
    hostile.send_raw(b'{"cmd": "ping", "data": ' + big.encode() + b"}\n")
    assert await hostile.frame() == {"cmd": "pong", "data": int(big)}
    lines = [
        b'{"cmd": "ping", "data": ' + b"9" * 5000 + b"}",  # over it: not parseable
        b'{"cmd": "ping", "data": -' + b"9" * 50_000 + b"}",
    ]
    hostile.send_raw(b"\n".join(lines) + b"\n")
    assert [f["code"] for f in await errors(hostile, 2)] == ["bad_json", "bad_json"]
    lines = [
        b'{"cmd": "ping", "data": 1e400}',
        b'{"cmd": "ping", "data": -1e99999}',
        b'{"cmd": "broadcast", "msg": ' + b"9" * 4000 + b"}",
        b'{"cmd": "message", "to": 1e400, "msg": "x"}',
        b'{"cmd": ' + b"1" * 100 + b"}",
        b'{"cmd": "login", "user": "x", "features": [' + b"1" * 100 + b"]}",
    ]
    hostile.send_raw(b"\n".join(lines) + b"\n")
    assert {f["code"] for f in await errors(hostile, len(lines))} == {"bad_request"}
    hostile.send_raw(b'{"cmd": "ping", "data": [-0, 1E+2, 1e-400, 0.1]}\n')
    assert (await hostile.frame())["data"] == [0, 100.0, 0.0, 0.1]
    await arena.alive()


# -- connections that misbehave -------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_client_that_never_reads_is_dropped(make_arena):
    a = await make_arena(max_output=65_536)
    slow = a.raw_socket(rcvbuf=4096)
    slow.sendall(b'{"cmd": "login", "user": "Slow"}\n')
    await a.watcher.expect("users", list=["Watcher", "Speaker", "Slow"])
    big = "z" * 32_000
    left = False
    for _ in range(2_000):  # ~64 MB at most; it takes a few MB in practice
        a.speaker.send(cmd="broadcast", msg=big)
        while True:
            frame = await a.watcher.frame()
            if frame["cmd"] == "system" and frame["event"] == "leave":
                assert frame["users"] == ["Slow"]
                left = True
            if frame["cmd"] == "broadcast":
                break
        if left:
            break
    assert left, "the client that never reads was never dropped"
    assert a.server.hub.find("Slow") is None
    await a.alive()
    # The name is free again.
    again = await a.client()
    await again.login("Slow")


@pytest_twisted.ensureDeferred
async def test_a_silent_connection_harms_nobody(arena):
    silent = arena.raw_socket(rcvbuf=4096)
    for _ in range(20):
        arena.speaker.send(cmd="broadcast", msg="w" * 10_000)
    await arena.alive()
    silent.sendall(b'{"cmd": "login", "user": "Tarde"}\n')
    await arena.watcher.expect("system", event="join", users=["Tarde"])


@pytest_twisted.ensureDeferred
async def test_quit_from_a_client_that_never_reads(arena):
    slow = arena.raw_socket(rcvbuf=4096)
    slow.sendall(b"Slow\n")
    await arena.watcher.expect("users", list=["Watcher", "Speaker", "Slow"])
    (proto,) = [p for p in arena.server.factory.connections if p.session and p.session.name == "Slow"]
    for _ in range(2_000):
        if not proto._writable:
            break
        arena.speaker.send(cmd="broadcast", msg="q" * 32_000)
        await arena.watcher.expect("broadcast", **{"from": "Speaker"})
    assert not proto._writable, "never paused"
    slow.sendall(b"/quit\n")
    await arena.watcher.expect("system", event="leave", users=["Slow"], timeout=1.5)


@pytest_twisted.ensureDeferred
async def test_connection_churn(arena):
    """Many connections opened and dropped, half-way through a line or not."""
    for i in range(100):
        sock = arena.raw_socket()
        if i % 3 == 0:
            sock.sendall(b'{"cmd": "login", "us')
        elif i % 3 == 1:
            sock.sendall(b'{"cmd": "login", "user": "Churn%d"}\n' % i)
        if i % 2:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.close()
    await arena.alive()
    for _ in range(200):
        if len(arena.server.factory.connections) == 2:
            break
        await sleep(0.01)
    assert arena.server.hub.users() == ("Watcher", "Speaker")


@pytest_twisted.ensureDeferred
async def test_login_storm_in_a_large_room(arena):
    """More than 50 members: presence is gathered per window, and every newcomer
    still gets its `users` frame."""
    n = 60
    clients = [await arena.client() for _ in range(n)]
    for i, client in enumerate(clients):
        client.send(cmd="login", user=f"s{i}")
    for i, client in enumerate(clients):
        assert (await client.frame())["cmd"] == "history"
        users = await client.expect("users")
        assert f"s{i}" in users["list"]
    everyone = {"Watcher", "Speaker"} | {f"s{i}" for i in range(n)}
    for _ in range(2 * n):  # bounded: at most one users frame per login
        users = await arena.watcher.expect("users")
        if set(users["list"]) == everyone:
            break
    assert set(users["list"]) == everyone and len(users["list"]) == len(everyone)
    assert users["list"][:2] == ["Watcher", "Speaker"]  # in the order they came online
    await arena.alive()


# -- fuzzing through StringTransport --------------------------------------------------------


def _strict(line: bytes) -> Any:
    def refuse(name: str) -> Any:
        raise ValueError(name)

    return json.loads(line.decode("utf-8"), parse_constant=refuse)


class Fuzz:
    def __init__(self) -> None:
        self.clock = MemoryReactorClock()
        self.factory = ChatFactory(
            Hub(self.clock, history_size=5), self.clock, Limits(rate_limit=0, max_line=4096)
        )
        self.other = self.connect()
        self.other.dataReceived(b'{"cmd": "login", "user": "Other"}\n')
        self.transport = StringTransport()
        self.protocol = self.factory.buildProtocol(None)
        self.protocol.makeConnection(self.transport)

    def connect(self) -> Any:
        protocol = self.factory.buildProtocol(None)
        protocol.makeConnection(StringTransport())
        return protocol

    def feed(self, data: bytes) -> list[bytes]:
        self.protocol.dataReceived(data)
        self.clock.advance(0)
        out = self.transport.value()
        self.transport.clear()
        return out.splitlines()


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
    | st.sampled_from(["\ud800", "a\udfffb", "Other", "general", "cocina", "x" * 40]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
commands = st.sampled_from(
    ["login", "broadcast", "message", "users", "typing", "join", "leave", "rooms", "ping", "x", ""]
)
fields = st.sampled_from(["user", "msg", "to", "room", "data", "features", "from", "cmd"])
frames = st.builds(
    lambda cmd, extra: {**extra, "cmd": cmd} if cmd is not None else extra,
    st.none() | commands | json_values,
    st.dictionaries(fields, json_values, max_size=4),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(frames, min_size=1, max_size=8), st.booleans())
def test_fuzz_json_frames(frames_in, logged_in):
    fuzz = Fuzz()
    first = b'{"cmd": "login", "user": "Fuzz"}\n' if logged_in else b"{}\n"
    fuzz.feed(first)
    for frame in frames_in:
        for line in fuzz.feed(json.dumps(frame).encode() + b"\n"):
            out = _strict(line)
            assert isinstance(out, dict) and isinstance(out["cmd"], str), out
    assert not fuzz.transport.disconnecting
    reply = fuzz.feed(b'{"cmd": "ping", "data": "end"}\n')
    assert _strict(reply[-1]) == {"cmd": "pong", "data": "end"}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.binary(max_size=300), min_size=1, max_size=6), st.booleans())
def test_fuzz_raw_bytes(chunks, json_mode):
    fuzz = Fuzz()
    fuzz.feed(b"{}\n" if json_mode else b"Fuzz\n")
    for chunk in chunks:
        for line in fuzz.feed(chunk):
            if json_mode:
                assert isinstance(_strict(line), dict)
            else:
                line.decode("utf-8")
    assert not fuzz.transport.disconnecting
    fuzz.feed(b"\n")  # end whatever line the chunks left open
    fuzz.feed(b'{"cmd": "ping"}\n' if json_mode else b"/users\n")


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=200))
def test_fuzz_text_relayed_exactly(text):
    """Any text without lone surrogates comes back exactly, in JSON and in history."""
    fuzz = Fuzz()
    fuzz.feed(b'{"cmd": "login", "user": "Fuzz"}\n')
    (line,) = fuzz.feed(json.dumps({"cmd": "broadcast", "msg": text}).encode() + b"\n")
    assert _strict(line)["msg"] == text
