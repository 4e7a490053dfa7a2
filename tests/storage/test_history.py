"""Durable history: restarts, paging, privacy, rooms loaded from storage."""

from __future__ import annotations

import pytest_twisted

from tests.storage.support import DurableServer
from tests.support import LineClient


async def post(client: LineClient, n: int, prefix: str = "m", room: str | None = None) -> list[int]:
    """Send *n* broadcasts and wait for their echoes; return their ids."""
    for i in range(n):
        frame = {"cmd": "broadcast", "msg": f"{prefix}{i}"}
        if room is not None:
            frame["room"] = room
        client.send(**frame)
    ids = []
    while len(ids) < n:
        frame = await client.expect("broadcast")
        if frame["from"] and frame["msg"].startswith(prefix):
            ids.append(frame["id"])
    return ids


async def page(client: LineClient, **request) -> dict:
    client.send(cmd="history", **request)
    return await client.expect("history")


async def page_all(client: LineClient, limit: int = 200, **request) -> list[dict]:
    """Every item, paging backwards from the newest."""
    items: list[dict] = []
    before = None
    while True:
        extra = {"before": before} if before is not None else {}
        answer = await page(client, limit=limit, **request, **extra)
        items[:0] = answer["items"]
        if not answer["more"]:
            return items
        before = answer["items"][0]["id"]


@pytest_twisted.ensureDeferred
async def test_history_survives_a_restart(durable):
    srv = await durable(history=5)
    ana = await srv.client()
    await ana.login("Ana")
    luis = await srv.client()
    await luis.login("Luis")
    ids = await post(ana, 8)
    ana.send(cmd="message", to="Luis", msg="secreto")
    private = await luis.expect("private")
    await srv.stop()

    srv2 = await durable(history=5)
    ana = await srv2.client()
    history, _ = await ana.login("Ana")
    # Login history is the newest window, from storage.
    assert [i["id"] for i in history["items"]] == ids[-5:]
    assert [i["msg"] for i in history["items"]] == ["m3", "m4", "m5", "m6", "m7"]
    assert all(i["from"] == "Ana" and i["room"] == "general" for i in history["items"])
    # Ids go on growing: none is reused after a restart.
    new = await post(ana, 1, prefix="después")
    assert new[0] > private["id"] > ids[-1]


@pytest_twisted.ensureDeferred
async def test_paging_a_room(durable):
    srv = await durable(history=10)
    ana = await srv.client()
    await ana.login("Ana")
    ids = await post(ana, 120)
    newest = await page(ana)
    assert newest["room"] == "general" and newest["more"] is True
    assert [i["id"] for i in newest["items"]] == ids[-50:]  # the default page
    answer = await page(ana, room="GENERAL", before=ids[10], limit=5)
    assert [i["id"] for i in answer["items"]] == ids[5:10]
    assert answer["more"] is True
    first = await page(ana, before=ids[3], limit=5)
    assert [i["id"] for i in first["items"]] == ids[:3] and first["more"] is False
    assert [i["id"] for i in await page_all(ana, limit=7)] == ids
    item = newest["items"][0]
    assert set(item) >= {"id", "time", "ts", "room", "from", "msg"}
    # Oversized pages are cut to the bound.
    big = await page(ana, limit=10_000)
    assert len(big["items"]) == 120  # under 200, all of them
    await post(ana, 100)
    big = await page(ana, limit=10_000)
    assert len(big["items"]) == 200 and big["more"] is True


@pytest_twisted.ensureDeferred
async def test_history_request_errors(durable):
    srv = await durable()
    ana = await srv.client()
    ana.send(cmd="history")
    assert (await ana.frame())["code"] == "not_logged_in"
    await ana.login("Ana")
    for request, code in [
        ({"before": 0}, "bad_request"),
        ({"before": "5"}, "bad_request"),
        ({"limit": True}, "bad_request"),
        ({"limit": -1}, "bad_request"),
        ({"room": 5}, "bad_request"),
        ({"room": "general", "with": "Luis"}, "bad_request"),
        ({"room": "cine"}, "not_in_room"),
        ({"with": "tab\there"}, "bad_name"),
        ({"with": ""}, "bad_name"),
        ({"with": 5}, "bad_request"),
    ]:
        ana.send(cmd="history", **request)
        answer = await ana.frame()
        assert answer["cmd"] == "error" and answer["code"] == code, (request, answer)
        assert answer["ref"] == "history"


async def register_and_login(srv: DurableServer, name: str) -> LineClient:
    c = await srv.client()
    c.send(cmd="register", user=name, password="secreto123")
    assert (await c.frame())["cmd"] == "registered"
    c.send(cmd="login", user=name, password="secreto123")
    assert (await c.frame())["cmd"] == "history"
    return c


@pytest_twisted.ensureDeferred
async def test_private_history_is_for_its_two_participants_only(durable):
    srv = await durable()
    ana = await register_and_login(srv, "Ana")
    luis = await register_and_login(srv, "Luis")
    eva = await register_and_login(srv, "Eva")
    ana.send(cmd="message", to="Luis", msg="hola Luis")
    await luis.expect("private")
    luis.send(cmd="message", to="ana", msg="hola Ana")
    await ana.expect("private")
    eva.send(cmd="message", to="Luis", msg="soy Eva")
    await luis.expect("private", msg="soy Eva")

    answer = await page(ana, **{"with": "LUIS"})
    assert answer["with"] == "LUIS"
    assert [(i["from"], i["to"], i["msg"]) for i in answer["items"]] == [
        ("Ana", "Luis", "hola Luis"),
        ("Luis", "Ana", "hola Ana"),
    ]
    assert set(answer["items"][0]) >= {"id", "time", "ts", "from", "to", "msg"}
    # Luis sees the same conversation from his side.
    assert [i["msg"] for i in (await page(luis, **{"with": "Ana"}))["items"]] == ["hola Luis", "hola Ana"]
    # Eva only ever sees her own conversations.
    assert (await page(eva, **{"with": "Ana"}))["items"] == []
    assert [i["msg"] for i in (await page(eva, **{"with": "Luis"}))["items"]] == ["soy Eva"]
    # Private messages never show in a room.
    assert (await page(eva))["items"] == []

    # After a restart, an account still reads its conversation...
    await srv.stop()
    srv2 = await durable()
    ana = await srv2.client()
    ana.send(cmd="login", user="Ana", password="secreto123")
    await ana.expect("users")
    assert len((await page(ana, **{"with": "Luis"}))["items"]) == 2


@pytest_twisted.ensureDeferred
async def test_a_guest_name_does_not_inherit_the_previous_holders_private_history(durable):
    srv = await durable()
    guest = await srv.client()
    await guest.login("Pepe")
    luis = await srv.client()
    await luis.login("Luis")
    guest.send(cmd="message", to="Luis", msg="confidencial")
    await luis.expect("private")
    # Within its own session a guest pages its conversation.
    assert [i["msg"] for i in (await page(guest, **{"with": "Luis"}))["items"]] == ["confidencial"]
    guest.close()
    await guest.closed
    impostor = await srv.client()
    await impostor.login("Pepe")
    assert (await page(impostor, **{"with": "Luis"}))["items"] == []


@pytest_twisted.ensureDeferred
async def test_joining_a_room_brings_its_stored_history(durable):
    srv = await durable()
    ana = await srv.client()
    await ana.login("Ana")
    ana.send(cmd="join", room="Cine")
    assert (await ana.expect("history", room="Cine"))["items"] == []
    ids = await post(ana, 3, prefix="peli", room="cine")
    ana.send(cmd="leave", room="cine")
    await ana.expect("left")
    # The room is empty, so the server dropped it from memory.
    assert srv.server.hub.room("cine") is None
    ana.send(cmd="join", room="CINE")
    history = await ana.expect("history")
    assert history["room"] == "Cine"
    assert [i["id"] for i in history["items"]] == ids
    await srv.stop()

    srv2 = await durable()
    luis = await srv2.client()
    await luis.login("Luis")
    luis.send(cmd="join", room="cine")
    history = await luis.expect("history")
    assert [i["msg"] for i in history["items"]] == ["peli0", "peli1", "peli2"]
    users = await luis.expect("users", room="Cine")
    assert users["list"] == ["Luis"]
    # The stored window and new messages line up.
    new = await post(luis, 1, prefix="nueva", room="cine")
    assert new[0] > ids[-1]
    assert [i["id"] for i in (await page(luis, room="cine"))["items"]] == [*ids, *new]


@pytest_twisted.ensureDeferred
async def test_two_members_joining_an_unloaded_room_at_once(durable):
    srv = await durable(history=3)
    ana = await srv.client()
    await ana.login("Ana")
    ana.send(cmd="join", room="sala")
    await ana.expect("history", room="sala")
    ids = await post(ana, 5, room="sala")
    ana.send(cmd="leave", room="sala")
    await ana.expect("left")
    luis = await srv.client()
    await luis.login("Luis")
    # Both ask before either load has finished.
    ana.send(cmd="join", room="sala")
    luis.send(cmd="join", room="sala")
    for c in (ana, luis):
        history = await c.expect("history", room="sala")
        assert [i["id"] for i in history["items"]] == ids[-3:]
    assert [m.id for m in srv.server.hub.recent("sala")] == ids[-3:]


class Silent:
    """An in-process participant (as the Telegram bridge is) that keeps what it gets."""

    def __init__(self) -> None:
        self.messages: list = []

    def receive_message(self, message) -> None:
        self.messages.append(message)

    def receive_presence(self, change) -> None:
        pass

    def receive_typing(self, typing) -> None:
        pass

    def receive_correction(self, correction) -> None:
        pass


@pytest_twisted.ensureDeferred
async def test_private_history_with_an_in_process_participant(durable):
    srv = await durable()
    hub = srv.server.hub
    bridge = Silent()
    hub.login(bridge, "Luis (TG)", trusted=True)
    ana = await srv.client()
    await ana.login("Ana")
    ana.send(cmd="message", to="Luis (TG)", msg="hola Telegram")
    while not bridge.messages:
        await ana.quiet(0.01)
    answer = await page(ana, **{"with": "luis (tg)"})
    items = [(i["from"], i["to"], i["msg"]) for i in answer["items"]]
    assert items == [("Ana", "Luis (TG)", "hola Telegram")]
