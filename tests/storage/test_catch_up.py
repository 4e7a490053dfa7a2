"""Catching up over the wire on a real server: ``pos`` on every message frame,
``history`` with ``after``, and ``cid`` resends, on both databases."""

from __future__ import annotations

import pytest_twisted

from tests.storage.test_history import page
from tests.support import LineClient


async def post(client: LineClient, texts: list[str], room: str | None = None) -> list[dict]:
    """Broadcast *texts*; return the sender's echoes."""
    for text in texts:
        client.send(cmd="broadcast", msg=text, **({"room": room} if room else {}))
    return [await client.expect("broadcast", msg=text) for text in texts]


async def page_after(client: LineClient, after: int, limit: int = 200, **request) -> list[dict]:
    """Every item after position *after*, paging forward (corrections dropped)."""
    return [e for e in await catch_up(client, after, limit, **request) if "cmd" not in e]


async def catch_up(client: LineClient, after: int, limit: int = 200, **request) -> list[dict]:
    """Items and corrections after position *after*, paging forward, in
    position order (the next page starts after the highest pos of the last)."""
    events: list[dict] = []
    while True:
        answer = await page(client, after=after, limit=limit, **request)
        got = sorted(answer["items"] + answer["corrections"], key=lambda e: e["pos"])
        assert all(e["pos"] > after for e in got)
        events += got
        if not answer["more"]:
            return events
        after = got[-1]["pos"]


@pytest_twisted.ensureDeferred
async def test_a_client_that_reconnects_pages_what_it_missed_with_after(durable):
    srv = await durable()
    ana, luis = await srv.client(), await srv.client()
    await ana.login("Ana")
    await luis.login("Luis")
    seen = await post(ana, ["uno", "dos"])
    assert [e["pos"] for e in seen] == [1, 2]
    last = (await luis.expect("broadcast", msg="dos"))["pos"]
    luis.close()
    await luis.closed
    missed = await post(ana, [f"m{i}" for i in range(7)])
    # A correction takes a position too, and says so.
    ana.send(cmd="edit", id=seen[0]["id"], msg="uno bis")
    edited = await ana.expect("edited")
    assert edited["pos"] == missed[-1]["pos"] + 1
    # The server restarts meanwhile: positions go on from the database.
    await srv.stop()
    srv = await durable()
    ana, luis = await srv.client(), await srv.client()
    history, _ = await ana.login("Ana")
    assert [i["pos"] for i in history["items"]] == [1, 2] + [e["pos"] for e in missed]
    await luis.login("Luis")
    events = await catch_up(luis, last, limit=3)
    # The edit of a message Luis had is among what he missed, in its place.
    assert [e.get("cmd", "item") for e in events] == ["item"] * 7 + ["edited"]
    assert events[-1] == {k: v for k, v in edited.items()}
    got = events[:7]
    assert [i["msg"] for i in got] == [f"m{i}" for i in range(7)]
    assert [i["pos"] for i in got] == [e["pos"] for e in missed]
    [after_restart] = await post(ana, ["tres"])
    assert after_restart["pos"] == edited["pos"] + 1
    answer = await page(luis, after=got[-1]["pos"])
    assert [i["msg"] for i in answer["items"]] == ["tres"] and answer["more"] is False
    answer = await page(luis, after=after_restart["pos"])
    assert answer["items"] == [] and answer["more"] is False


@pytest_twisted.ensureDeferred
async def test_after_in_rooms_and_private_conversations_keeps_their_rules(durable):
    srv = await durable()
    ana, luis = await srv.client(), await srv.client()
    await ana.login("Ana", features=["sent"])
    await luis.login("Luis")
    ana.send(cmd="join", room="Cine")
    await ana.expect("users", room="Cine")
    await post(ana, ["en cine"], room="Cine")
    ana.send(cmd="message", to="Luis", msg="antes")
    before = await ana.expect("sent")
    await luis.expect("private")
    await post(ana, ["en general"])
    # Only rooms one is in, only one's own conversations.
    luis.send(cmd="history", room="Cine", after=0)
    assert (await luis.expect("error"))["code"] == "not_in_room"
    assert [i["msg"] for i in await page_after(luis, 0)] == ["en general"]
    assert [i["msg"] for i in await page_after(luis, 0, **{"with": "Ana"})] == ["antes"]
    # Ana leaves and a guest takes her name: it does not read her conversation.
    ana.close()
    await ana.closed
    impostor = await srv.client()
    await impostor.login("Ana")
    assert await page_after(impostor, 0, **{"with": "Luis"}) == []
    luis.send(cmd="message", to="Ana", msg="después")
    after = await impostor.expect("private")
    assert after["pos"] > before["pos"]
    assert [i["msg"] for i in await page_after(impostor, 0, **{"with": "Luis"})] == ["después"]
    # Requests that cannot be answered.
    for bad in ({"after": -1}, {"after": "3"}, {"after": True}, {"after": 1, "before": 5}):
        luis.send(cmd="history", **bad)
        assert (await luis.expect("error"))["code"] == "bad_request", bad


@pytest_twisted.ensureDeferred
async def test_a_resent_cid_is_stored_once_and_confirmed_again(durable):
    srv = await durable()
    ana, luis = await srv.client(), await srv.client()
    await ana.login("Ana")
    await luis.login("Luis")
    ana.send(cmd="broadcast", msg="hola", cid="a-1")
    echo = await ana.expect("broadcast")
    assert echo["cid"] == "a-1" and echo["msg"] == "hola"
    other = await luis.expect("broadcast")
    assert "cid" not in other and other["id"] == echo["id"] and other["pos"] == echo["pos"]
    # The resend (same node: the hub remembers it) goes to Ana only.
    ana.send(cmd="broadcast", msg="hola", cid="a-1")
    assert await ana.expect("broadcast") == echo
    # A private message with a cid is confirmed with `sent`, asked for or not.
    ana.send(cmd="message", to="Luis", msg="psst", cid="a-2")
    sent = await ana.expect("sent")
    assert sent["cid"] == "a-2" and sent["to"] == "Luis"
    private = await luis.expect("private")
    assert "cid" not in private and private["pos"] == sent["pos"]
    assert await luis.quiet(0.2) == []
    # After a restart only the database knows: the same answers again.
    await srv.stop()
    srv = await durable()
    ana, luis = await srv.client(), await srv.client()
    await ana.login("Ana")
    await luis.login("Luis")
    ana.send(cmd="message", to="Luis", msg="psst", cid="a-2")
    assert await ana.expect("sent") == sent
    ana.send(cmd="broadcast", msg="hola", cid="a-1")
    again = await ana.expect("broadcast")
    assert again == echo
    assert await luis.quiet(0.3) == []
    items = (await page(luis, after=0))["items"]
    assert [i["msg"] for i in items] == ["hola"]
    for bad in ("", "x" * 65, "ñ", "a\nb", 5):
        ana.send(cmd="broadcast", msg="hola", cid=bad)
        assert (await ana.expect("error"))["code"] == "bad_request", bad


@pytest_twisted.ensureDeferred
async def test_a_resend_is_confirmed_when_the_room_or_the_recipient_is_gone(durable):
    srv = await durable()
    ana, luis = await srv.client(), await srv.client()
    await ana.login("Ana")
    await luis.login("Luis")
    ana.send(cmd="join", room="Cine")
    await ana.expect("users", room="Cine")
    ana.send(cmd="broadcast", room="Cine", msg="en cine", cid="r-1")
    echo = await ana.expect("broadcast")
    ana.send(cmd="message", to="Luis", msg="psst", cid="r-2")
    sent = await ana.expect("sent")
    # The same server remembers: Ana has left the room, Luis has gone.
    ana.send(cmd="leave", room="Cine")
    await ana.expect("left")
    luis.close()
    await luis.closed
    ana.send(cmd="broadcast", room="Cine", msg="en cine", cid="r-1")
    assert await ana.expect("broadcast") == echo
    ana.send(cmd="message", to="Luis", msg="psst", cid="r-2")
    assert await ana.expect("sent") == sent
    # After a restart only the database knows.
    await srv.stop()
    srv = await durable()
    ana = await srv.client()
    await ana.login("Ana")
    ana.send(cmd="broadcast", room="Cine", msg="en cine", cid="r-1")
    assert await ana.expect("broadcast") == echo
    ana.send(cmd="message", to="Luis", msg="psst", cid="r-2")
    assert await ana.expect("sent") == sent
    # A cid nobody stored is refused as any message would be.
    ana.send(cmd="message", to="Luis", msg="psst", cid="r-3")
    refusal = await ana.expect("error")
    assert refusal["code"] == "no_such_user" and refusal["ref"] == "message"
    ana.send(cmd="broadcast", room="Cine", msg="hola", cid="r-4")
    assert (await ana.expect("error"))["code"] == "not_in_room"
