"""The rooms contract of issue 4, over real sockets on a durable server."""

from __future__ import annotations

import pytest_twisted

from tests.support import LineClient


async def online(srv, *names: str) -> list[LineClient]:
    clients = []
    for name in names:
        c = await srv.client()
        await c.login(name)
        clients.append(c)
    for c in clients[:-1]:  # the last one got the full list with its login
        await c.expect("users", list=list(names))
    return clients


async def barrier(*clients: LineClient) -> None:
    """Returns once every client has read everything sent to it before now."""
    for c in clients:
        c.send(cmd="ping", data="barrier")
        await c.expect("pong", data="barrier")


async def frames_until_barrier(c: LineClient) -> list[dict]:
    c.send(cmd="ping", data="fin")
    got = []
    while (frame := await c.frame())["cmd"] != "pong":
        got.append(frame)
    return got


@pytest_twisted.ensureDeferred
async def test_join_answers_history_then_users_and_tells_the_members(durable):
    srv = await durable()
    ana, luis, eva = await online(srv, "Ana", "Luis", "Eva")
    ana.send(cmd="join", room="Cine")
    history = await ana.frame()
    assert history == {"cmd": "history", "room": "Cine", "items": []}
    users = await ana.frame()
    assert users == {"cmd": "users", "room": "Cine", "list": ["Ana"]}

    luis.send(cmd="join", room="cine")
    assert (await luis.frame())["cmd"] == "history"
    assert (await luis.frame()) == {"cmd": "users", "room": "Cine", "list": ["Ana", "Luis"]}
    notice = await ana.expect("system", room="Cine")
    assert notice["event"] == "join" and notice["users"] == ["Luis"]
    assert "Luis" in notice["msg"] and "unido" in notice["msg"]
    assert (await ana.expect("users", room="Cine"))["list"] == ["Ana", "Luis"]
    # Eva, not a member, hears nothing of it.
    assert [f for f in await frames_until_barrier(eva) if f.get("room") == "Cine"] == []


@pytest_twisted.ensureDeferred
async def test_leave_answers_left_and_tells_the_members(durable):
    srv = await durable()
    ana, luis = await online(srv, "Ana", "Luis")
    for c in (ana, luis):
        c.send(cmd="join", room="cine")
        await c.expect("history", room="cine")
    await ana.expect("users", room="cine", list=["Ana", "Luis"])
    luis.send(cmd="leave", room="CINE")
    assert await luis.expect("left") == {"cmd": "left", "room": "cine"}
    notice = await ana.expect("system", room="cine")
    assert notice["event"] == "leave" and notice["users"] == ["Luis"]
    assert "Luis" in notice["msg"] and "abandonado" in notice["msg"]
    assert (await ana.expect("users", room="cine"))["list"] == ["Ana"]
    # Leaving again, or leaving general, is not_in_room.
    luis.send(cmd="leave", room="cine")
    assert (await luis.frame())["code"] == "not_in_room"
    luis.send(cmd="leave", room="general")
    assert (await luis.frame())["code"] == "not_in_room"


@pytest_twisted.ensureDeferred
async def test_rooms_lists_names_and_member_counts(durable):
    srv = await durable()
    ana, luis = await online(srv, "Ana", "Luis")
    ana.send(cmd="join", room="cine")
    await ana.expect("users", room="cine")
    ana.send(cmd="rooms")
    answer = await ana.expect("rooms")
    assert sorted(answer["list"], key=lambda r: r["name"]) == [
        {"name": "cine", "members": 1},
        {"name": "general", "members": 2},
    ]


@pytest_twisted.ensureDeferred
async def test_broadcast_to_a_room_reaches_only_its_members(durable):
    srv = await durable()
    ana, luis, eva = await online(srv, "Ana", "Luis", "Eva")
    for c in (ana, luis):
        c.send(cmd="join", room="cine")
        await c.expect("history", room="cine")
    await barrier(ana, luis, eva)
    ana.send(cmd="broadcast", room="CINE", msg="¿vamos?")
    for c in (ana, luis):
        frame = await c.expect("broadcast")
        assert frame["room"] == "cine" and frame["from"] == "Ana" and frame["msg"] == "¿vamos?"
    assert [f for f in await frames_until_barrier(eva) if f["cmd"] == "broadcast"] == []
    # From a non-member: not_in_room; to a room that does not exist: the same.
    eva.send(cmd="broadcast", room="cine", msg="hola")
    assert (await eva.frame())["code"] == "not_in_room"
    eva.send(cmd="broadcast", room="nadie", msg="hola")
    assert (await eva.frame())["code"] == "not_in_room"
    # Without a room it goes to general, as in seed 000.
    eva.send(cmd="broadcast", msg="a todos")
    for c in (ana, luis, eva):
        frame = await c.expect("broadcast", msg="a todos")
        assert frame["room"] == "general"


@pytest_twisted.ensureDeferred
async def test_typing_and_users_are_scoped_to_the_room(durable):
    srv = await durable()
    ana, luis, eva = await online(srv, "Ana", "Luis", "Eva")
    for c in (ana, luis):
        c.send(cmd="join", room="cine")
        await c.expect("history", room="cine")
    await ana.expect("users", room="cine", list=["Ana", "Luis"])
    await barrier(ana, luis, eva)
    ana.send(cmd="typing", room="cine")
    assert await luis.expect("typing") == {"cmd": "typing", "user": "Ana", "room": "cine"}
    assert [f for f in await frames_until_barrier(eva) if f["cmd"] == "typing"] == []
    assert [f for f in await frames_until_barrier(ana) if f["cmd"] == "typing"] == []
    eva.send(cmd="typing", room="cine")
    assert (await eva.frame())["code"] == "not_in_room"
    # Who is in a room is for its members only; a room that does not exist
    # answers the same.
    eva.send(cmd="users", room="cine")
    assert (await eva.frame())["code"] == "not_in_room"
    eva.send(cmd="users", room="nadie")
    assert (await eva.frame())["code"] == "not_in_room"
    eva.send(cmd="users")
    assert (await eva.frame())["list"] == ["Ana", "Luis", "Eva"]


@pytest_twisted.ensureDeferred
async def test_room_names_are_validated_like_user_names(durable):
    srv = await durable()
    (ana,) = await online(srv, "Ana")
    for bad in ["", "dos palabras", "x" * 33, "tab\there"]:
        ana.send(cmd="join", room=bad)
        answer = await ana.frame()
        assert answer["code"] == "bad_name", (bad, answer)
    ana.send(cmd="join", room=7)
    assert (await ana.frame())["code"] == "bad_request"


@pytest_twisted.ensureDeferred
async def test_a_seed_000_client_only_ever_sees_general(durable):
    srv = await durable()
    old, = await online(srv, "Viejo")
    luis = await srv.client()
    await luis.login("Luis")
    await old.expect("users", list=["Viejo", "Luis"])
    luis.send(cmd="join", room="cine")
    await luis.expect("users", room="cine")
    luis.send(cmd="broadcast", room="cine", msg="privado de la sala")
    await luis.expect("broadcast", room="cine")
    luis.send(cmd="typing", room="cine")
    luis.send(cmd="leave", room="cine")
    await luis.expect("left")
    luis.send(cmd="broadcast", msg="en general")
    got = await frames_until_barrier(old)
    while not any(f.get("msg") == "en general" for f in got):
        got += await frames_until_barrier(old)
    assert all(f.get("room", "general") == "general" for f in got), got
    assert [f["cmd"] for f in got] == ["broadcast"]
