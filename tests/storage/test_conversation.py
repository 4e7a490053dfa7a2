"""Replies, edits and deletes over the wire, on both engines (docs/PROTOCOL.md,
"Replies, edits and deletes")."""

from __future__ import annotations

from typing import Any

import pytest_twisted

from chatserv.hub import QUOTE_LENGTH
from tests.support import LineClient, sleep


async def said(client: LineClient, text: str, **extra: Any) -> dict:
    client.send(cmd="broadcast", msg=text, **extra)
    return await client.expect("broadcast", msg=text)


async def error(client: LineClient, ref: str) -> dict:
    frame = await client.expect("error")
    assert frame["ref"] == ref, frame
    return frame


async def nothing_relayed(sender: LineClient, *others: LineClient) -> list[dict]:
    """Every frame the clients got before a barrier message from *sender*
    (which the server relays after everything *sender* sent before it)."""
    sender.send(cmd="broadcast", msg="barrera")
    seen = []
    for client in (sender, *others):
        while (frame := await client.frame())["cmd"] != "broadcast" or frame["msg"] != "barrera":
            seen.append(frame)
    return seen


@pytest_twisted.ensureDeferred
async def test_a_room_reply_quotes_its_original(durable):
    srv = await durable()
    ana, luis = await srv.client(), await srv.client()
    await ana.login("Ana")
    await luis.login("Luis")
    long = "¿Vamos al cine esta noche a ver la película nueva de la que todos hablan?\nsegunda línea"
    original = await said(ana, long)
    await luis.expect("broadcast", id=original["id"])
    luis.send(cmd="broadcast", msg="¡Sí!", reply_to=original["id"])
    for client in (ana, luis):
        reply = await client.expect("broadcast", msg="¡Sí!")
        quoted = reply["reply_to"]
        assert quoted["id"] == original["id"] and quoted["from"] == "Ana"
        assert quoted["msg"] == long[:QUOTE_LENGTH].rstrip() + "…"
    page = await _page(ana, room="general")
    assert page["items"][-1]["reply_to"] == quoted


@pytest_twisted.ensureDeferred
async def test_replies_to_what_the_sender_cannot_see_are_refused_and_not_relayed(durable):
    srv = await durable()
    ana, luis, eva = await srv.client(), await srv.client(), await srv.client()
    await ana.login("Ana")
    await luis.login("Luis")
    await eva.login("Eva")
    ana.send(cmd="join", room="cine")
    await ana.expect("users", room="cine")
    in_cine = await said(ana, "solo para cine", room="cine")
    ana.send(cmd="message", to="Luis", msg="secreto entre Ana y Luis")
    private = await luis.expect("private")
    in_general = await said(ana, "en general")

    # Unknown id; a room Eva is not in; someone else's private conversation.
    for wanted in (999_999, in_cine["id"], private["id"]):
        eva.send(cmd="broadcast", msg="cotilleo", reply_to=wanted)
        assert (await error(eva, "broadcast"))["code"] == "no_such_message"
        eva.send(cmd="message", to="Ana", msg="cotilleo", reply_to=wanted)
        assert (await error(eva, "message"))["code"] == "no_such_message"
    # Another room than the one replied in, even one the sender is in.
    ana.send(cmd="broadcast", msg="cruzado", reply_to=in_general["id"], room="cine")
    assert (await error(ana, "broadcast"))["code"] == "no_such_message"
    # A room message quoted into a private conversation, and the reverse.
    ana.send(cmd="message", to="Luis", msg="cruzado", reply_to=in_general["id"])
    assert (await error(ana, "message"))["code"] == "no_such_message"
    ana.send(cmd="broadcast", msg="cruzado", reply_to=private["id"])
    assert (await error(ana, "broadcast"))["code"] == "no_such_message"
    # Not an id at all.
    eva.send(cmd="broadcast", msg="x", reply_to="1")
    assert (await error(eva, "broadcast"))["code"] == "bad_request"
    seen = await nothing_relayed(eva, ana, luis)
    assert not [
        f for f in seen if f["cmd"] in ("broadcast", "private") and f["msg"] in ("cotilleo", "cruzado")
    ]


@pytest_twisted.ensureDeferred
async def test_private_replies_stay_in_their_conversation(durable):
    srv = await durable()
    ana, luis = await srv.client(), await srv.client()
    await ana.login("Ana")
    await luis.login("Luis")
    ana.send(cmd="message", to="Luis", msg="¿Vienes mañana?")
    asked = await luis.expect("private")
    luis.send(cmd="message", to="Ana", msg="sí", reply_to=asked["id"])
    answer = await ana.expect("private", msg="sí")
    assert answer["reply_to"] == {"id": asked["id"], "from": "Ana", "msg": "¿Vienes mañana?"}
    page = await _page(ana, **{"with": "Luis"})
    assert page["items"][-1]["reply_to"]["id"] == asked["id"]

    # A guest who later takes the name Luis cannot quote Luis's earlier
    # private conversation: it is not in its private history.
    luis.close()
    await luis.closed
    impostor = await srv.client()
    await impostor.login("Luis")
    impostor.send(cmd="message", to="Ana", msg="¿qué me dijiste?", reply_to=asked["id"])
    assert (await error(impostor, "message"))["code"] == "no_such_message"
    impostor.send(cmd="edit", id=answer["id"], msg="he cambiado de idea")
    assert (await error(impostor, "edit"))["code"] == "no_such_message"
    assert not [line for line in await ana.quiet(0.1) if b"private" in line]


@pytest_twisted.ensureDeferred
async def test_edit_and_delete_in_a_room(durable):
    srv = await durable()
    ana, luis = await srv.client(), await srv.client()
    await ana.login("Ana")
    await luis.login("Luis")
    ana.send(cmd="join", room="cine")
    await ana.expect("users", room="cine")
    first = await said(ana, "hola a todso")
    await luis.expect("broadcast", id=first["id"])

    luis.send(cmd="edit", id=first["id"], msg="te lo cambio")
    assert (await error(luis, "edit"))["code"] == "not_your_message"
    luis.send(cmd="delete", id=first["id"])
    assert (await error(luis, "delete"))["code"] == "not_your_message"

    ana.send(cmd="edit", id=first["id"], msg="hola a todos")
    for client in (ana, luis):
        edited = await client.expect("edited")
        assert {k: edited[k] for k in ("id", "room", "from", "msg")} == {
            "id": first["id"],
            "room": "general",
            "from": "Ana",
            "msg": "hola a todos",
        }
        assert set(edited) == {"cmd", "id", "pos", "time", "ts", "room", "from", "msg"}
    item = (await _page(luis, room="general"))["items"][-1]
    assert item["msg"] == "hola a todos" and item["edited"] == edited["ts"]

    ana.send(cmd="delete", id=first["id"])
    for client in (ana, luis):
        deleted = await client.expect("deleted")
        assert {k: deleted[k] for k in ("id", "room", "from")} == {
            "id": first["id"],
            "room": "general",
            "from": "Ana",
        }
        assert "msg" not in deleted
    item = (await _page(luis, room="general"))["items"][-1]
    assert item["id"] == first["id"] and item["msg"] == "" and item["deleted"] == deleted["ts"]

    for cmd, extra in (("edit", {"msg": "otra vez"}), ("delete", {})):
        ana.send(cmd=cmd, id=first["id"], **extra)
        assert (await error(ana, cmd))["code"] == "message_deleted"
    luis.send(cmd="broadcast", msg="¿qué decías?", reply_to=first["id"])
    assert (await error(luis, "broadcast"))["code"] == "message_deleted"
    ana.send(cmd="edit", id=999_999, msg="x")
    assert (await error(ana, "edit"))["code"] == "no_such_message"
    ana.send(cmd="edit", msg="x")
    assert (await error(ana, "edit"))["code"] == "bad_request"

    # The database keeps every version; the login window shows the result.
    versions = srv.store.reader.versions(first["id"])
    assert [text for _, text in versions] == ["hola a todso", "hola a todos", None]
    eva = await srv.client()
    history, _ = await eva.login("Eva")
    assert history["items"][-1]["deleted"] and history["items"][-1]["msg"] == ""


@pytest_twisted.ensureDeferred
async def test_edits_reach_only_those_who_can_read_the_message(durable):
    srv = await durable()
    ana, luis, eva = await srv.client(), await srv.client(), await srv.client()
    await ana.login("Ana")
    await luis.login("Luis")
    await eva.login("Eva")
    for client in (ana, luis):
        client.send(cmd="join", room="cine")
        await client.expect("users", room="cine")
    in_cine = await said(ana, "a las ocho", room="cine")
    ana.send(cmd="message", to="Luis", msg="te espero")
    private = await luis.expect("private")
    ana.send(cmd="edit", id=in_cine["id"], msg="a las nueve")
    ana.send(cmd="edit", id=private["id"], msg="te espero dentro")
    for client in (ana, luis):
        assert (await client.expect("edited", id=in_cine["id"]))["room"] == "cine"
        edited = await client.expect("edited", id=private["id"])
        assert edited["to"] == "Luis" and "room" not in edited
    seen = await nothing_relayed(ana, eva)
    assert not [f for f in seen if f["cmd"] == "edited"]
    eva.send(cmd="delete", id=private["id"])
    assert (await error(eva, "delete"))["code"] == "no_such_message"
    item = (await _page(luis, **{"with": "Ana"}))["items"][-1]
    assert item["msg"] == "te espero dentro" and "edited" in item


@pytest_twisted.ensureDeferred
async def test_older_messages_are_corrected_through_storage_and_stay_corrected(durable, db_url):
    srv = await durable(history=2)
    ana = await srv.client()
    await ana.login("Ana")
    old = await said(ana, "viejo")
    for text in ("uno", "dos", "tres"):
        await said(ana, text)
    assert old["id"] not in [m.id for m in srv.server.hub.recent()]
    ana.send(cmd="edit", id=old["id"], msg="viejo corregido")
    assert (await ana.expect("edited"))["id"] == old["id"]
    ana.send(cmd="broadcast", msg="sobre lo viejo", reply_to=old["id"])
    reply = await ana.expect("broadcast", msg="sobre lo viejo")
    assert reply["reply_to"]["msg"] == "viejo corregido"
    ana.send(cmd="edit", id=reply["id"], msg="sobre lo viejo, corregido")
    await ana.expect("edited")
    await srv.stop()

    again = await durable(history=2)
    client = await again.client()
    history, _ = await client.login("Luis")
    assert history["items"][-1]["msg"] == "sobre lo viejo, corregido" and "edited" in history["items"][-1]
    items = (await _page(client, room="general"))["items"]
    assert items[0]["msg"] == "viejo corregido" and "edited" in items[0]


@pytest_twisted.ensureDeferred
async def test_plain_text_replies_edits_and_ids(durable):
    srv = await durable()
    ana = await srv.client()
    await ana.login("Ana")
    nc = await srv.client()
    nc.send_raw(b"Luis\n")
    await nc.quiet(0.2)
    first = await said(ana, "¿Vamos al cine?")
    assert (await nc.line()).decode() == "Ana: ¿Vamos al cine?"  # no ids by default
    nc.send_raw(b"/ids on\n")
    assert b"mensaje" in await nc.line()
    second = await said(ana, "o al teatro")
    assert (await nc.line()).decode() == f"[#{second['id']}] Ana: o al teatro"
    nc.send_raw(f"/re {first['id']} ¡al cine!\n".encode())
    reply = await ana.expect("broadcast", msg="¡al cine!")
    assert reply["reply_to"] == {"id": first["id"], "from": "Ana", "msg": "¿Vamos al cine?"}
    assert (await nc.line()).decode() == "> Ana: ¿Vamos al cine?"
    assert (await nc.line()).decode() == f"[#{reply['id']}] Luis: ¡al cine!"
    ana.send(cmd="edit", id=second["id"], msg="o al museo")
    assert (await nc.line()).decode() == f"* Ana ha editado #{second['id']}: o al museo"
    nc.send_raw(b"/ids off\n")
    await nc.line()
    ana.send(cmd="delete", id=second["id"])
    assert (await nc.line()).decode() == "* Ana ha borrado un mensaje."
    ana.send(cmd="broadcast", msg="vale", reply_to=reply["id"])
    assert (await nc.line()).decode() == "> Luis: ¡al cine!"
    assert (await nc.line()).decode() == "Ana: vale"
    nc.send_raw(f"/edit {reply['id']} ¡al cine, sí!\n".encode())
    assert (await nc.line()).decode() == "* Luis ha editado: ¡al cine, sí!"
    for bad in (b"/re 12\n", b"/re x hola\n", b"/ids maybe\n", b"/del\n"):
        nc.send_raw(bad)
        assert (await nc.line()).startswith(b"* error bad_request"), bad
    nc.send_raw(f"/del {first['id']}\n".encode())
    assert (await nc.line()).decode().startswith("* error not_your_message")

    # A plain client logging in later reads the history as it is now.
    later = await srv.client()
    later.send_raw(b"Eva\n")
    lines = []
    while not (line := (await later.line()).decode()).startswith("* En línea"):
        lines.append(line)
    history = [line.split("] ", 1)[1] if line.startswith("[") else line for line in lines[1:]]
    assert history == [
        "Ana: ¿Vamos al cine?",
        "Ana: (borrado)",
        "> Ana: ¿Vamos al cine?",
        "Luis (editado): ¡al cine, sí!",
        "> Luis: ¡al cine!",
        "Ana: vale",
    ]
    await sleep(0)


async def _page(client: LineClient, **request: Any) -> dict:
    client.send(cmd="history", **request)
    return await client.expect("history")
