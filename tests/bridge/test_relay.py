"""Both directions through the real python-telegram-bot and the fake Bot API."""

from __future__ import annotations

import pytest_twisted

from tests.bridge.fakebot import GROUP, FakeBotAPI
from tests.support import sleep

LUIS = FakeBotAPI.user(42, "Luis", "García", "luisg")
EVA = FakeBotAPI.user(43, "Eva")
PHOTO = [{"file_id": "f", "file_unique_id": "u", "width": 90, "height": 90}]


async def broadcast(client, **fields):
    """The next broadcast the client sees (skipping presence frames)."""
    return await client.expect("broadcast", **fields)


@pytest_twisted.ensureDeferred
async def test_chat_to_telegram_html_escaped(rig):
    await rig.start()
    ana = await rig.client("Ana")
    ana.send(cmd="broadcast", msg="1 < 2 & <b>no</b>\nsegunda línea")
    await rig.fake.wait_sent(1)
    (sent,) = rig.fake.sent
    assert sent.chat_id == GROUP
    assert sent.parse_mode == "HTML"
    assert sent.text == "<b>Ana</b>: 1 &lt; 2 &amp; &lt;b&gt;no&lt;/b&gt;\nsegunda línea"
    assert sent.plain == "Ana: 1 < 2 & <b>no</b>\nsegunda línea"


@pytest_twisted.ensureDeferred
async def test_other_rooms_and_private_messages_stay_in_the_chat(rig):
    await rig.start()
    ana = await rig.client("Ana")
    luis = await rig.client("Luis")
    ana.send(cmd="join", room="otra")
    await ana.expect("users", room="otra")
    ana.send(cmd="broadcast", room="otra", msg="no va a Telegram")
    ana.send(cmd="message", to="Luis", msg="secreto")
    await luis.expect("private")
    ana.send(cmd="broadcast", msg="sí va")
    await rig.fake.wait_sent(1)
    await sleep(0.1)
    assert rig.fake.group_plain() == ["Ana: sí va"]


@pytest_twisted.ensureDeferred
async def test_telegram_to_chat_and_users_list(rig):
    await rig.start()
    ana = await rig.client("Ana")
    rig.fake.say(LUIS, "hola desde Telegram\ncon dos líneas")
    users = await ana.expect("users")
    assert "Luis García (TG)" in users["list"]
    frame = await broadcast(ana)
    assert frame["from"] == "Luis García (TG)"
    assert frame["msg"] == "hola desde Telegram\ncon dos líneas"
    # The bridged name cannot be claimed by a client (it has a space).
    mallory = await rig.client()
    mallory.send(cmd="login", user="Luis García (TG)")
    error = await mallory.expect("error")
    assert error["code"] == "bad_name"
    # Nor imitated with look-alikes of the marker (issue 11): no space, a
    # Cyrillic Т, a Braille blank, a Hangul filler.
    for fake in ["LuisGarcía(TG)", "Luis(\u0422G)", "Luis\u2800(TG)", "Luis\u3164(TG)"]:
        mallory.send(cmd="login", user=fake)
        assert (await mallory.expect("error"))["code"] == "bad_name", fake
    # No echo: nothing from Telegram goes back.
    await sleep(0.2)
    assert rig.fake.sent == []


@pytest_twisted.ensureDeferred
async def test_placeholders(rig):
    await rig.start()
    ana = await rig.client("Ana")
    rig.fake.say(EVA, photo=PHOTO, caption="mi gato")
    rig.fake.say(EVA, voice={"file_id": "v", "file_unique_id": "v", "duration": 2})
    rig.fake.say(EVA, location={"latitude": 40.4168, "longitude": -3.7038})
    rig.fake.say(
        EVA,
        sticker={
            "file_id": "s",
            "file_unique_id": "s",
            "width": 1,
            "height": 1,
            "is_animated": False,
            "is_video": False,
            "type": "regular",
            "emoji": "👍",
        },
    )
    rig.fake.say(EVA, document={"file_id": "d", "file_unique_id": "d", "file_name": "acta.pdf"})
    got = [(await broadcast(ana))["msg"] for _ in range(5)]
    assert got == [
        "[foto] mi gato",
        "[audio de voz]",
        "[ubicación 40.41680,-3.70380]",
        "[sticker 👍]",
        "[documento acta.pdf]",
    ]


@pytest_twisted.ensureDeferred
async def test_replies_both_ways(rig):
    await rig.start()
    ana = await rig.client("Ana")
    ana.send(cmd="broadcast", msg="¿Vamos al cine esta noche?")
    original = await broadcast(ana)
    await rig.fake.wait_sent(1)
    bot_message = rig.fake.sent[0].message

    # A Telegram reply to a bridged chat message.
    rig.fake.say(LUIS, "¡Sí!", reply_to=bot_message)
    frame = await broadcast(ana, **{"from": "Luis García (TG)"})
    assert frame["reply_to"] == {"id": original["id"], "from": "Ana", "msg": "¿Vamos al cine esta noche?"}
    assert frame["msg"] == "¡Sí!"  # the quote is in reply_to, not in the text

    # A Telegram reply to a Telegram message.
    eva_message = rig.fake.say(EVA, "yo también voy")
    eva_frame = await broadcast(ana, **{"from": "Eva (TG)"})
    rig.fake.say(LUIS, "genial", reply_to=eva_message)
    frame = await broadcast(ana, **{"from": "Luis García (TG)"})
    assert frame["reply_to"] == {"id": eva_frame["id"], "from": "Eva (TG)", "msg": "yo también voy"}
    assert frame["msg"] == "genial"

    # A reply to something the bridge never saw still names who and what.
    stranger = rig.fake.message(EVA, "mensaje antiguo")
    rig.fake.say(LUIS, "eso", reply_to=stranger)
    frame = await broadcast(ana, **{"from": "Luis García (TG)"})
    assert frame["reply_to"] == {"from": "Eva (TG)", "msg": "mensaje antiguo"}


@pytest_twisted.ensureDeferred
async def test_telegram_edits_reach_the_chat_as_edited(rig):
    await rig.start()
    ana = await rig.client("Ana")
    message = rig.fake.say(LUIS, "a las 8")
    first = await broadcast(ana)
    rig.fake.edit(message, "a las 9")
    edited = await ana.expect("edited")
    assert (edited["id"], edited["from"], edited["msg"]) == (first["id"], "Luis García (TG)", "a las 9")
    ana.send(cmd="history", room="general")
    page = await ana.expect("history")
    assert page["items"][-1]["msg"] == "a las 9" and "edited" in page["items"][-1]
    # An edit of a message the bridge does not know is relayed as before:
    # a new message, marked.
    stranger = rig.fake.message(LUIS, "antiguo")
    rig.fake.edit(stranger, "antiguo, corregido")
    frame = await broadcast(ana)
    assert frame["msg"] == "(editado) antiguo, corregido" and "edit_of" not in frame


@pytest_twisted.ensureDeferred
async def test_other_chats_ignored_private_chats_answered_once(rig):
    await rig.start()
    ana = await rig.client("Ana")
    rig.fake.say(LUIS, "en otro grupo", chat=rig.fake.chat(-999, "otro"))
    private = rig.fake.chat(42)
    rig.fake.say(LUIS, "hola bot", chat=private)
    rig.fake.say(LUIS, "¿hola?", chat=private)
    rig.fake.say(EVA, "esto sí")
    frame = await broadcast(ana)
    assert frame["msg"] == "esto sí"
    await rig.fake.wait_sent(1)
    await sleep(0.2)
    (answer,) = rig.fake.sent
    assert answer.chat_id == 42 and answer.parse_mode is None
    assert "puente" in answer.plain and "\n" not in answer.plain
    assert [line for line in await ana.quiet(0.1) if b'"broadcast"' in line] == []


@pytest_twisted.ensureDeferred
async def test_users_command(rig):
    await rig.start()
    await rig.client("Ana")
    await rig.client("Bea")
    rig.fake.say(EVA, "hola")  # Eva is in the room too, but from Telegram
    rig.fake.say(LUIS, "/users@chatserv_bridge_bot")
    await rig.fake.wait_sent(1)
    assert rig.fake.group_plain() == ["En línea en el chat (2): Ana, Bea"]


@pytest_twisted.ensureDeferred
async def test_notices_when_enabled(rig):
    await rig.start(notices=True)
    ana = await rig.client("Ana")
    rig.fake.say(LUIS, "hola")  # a Telegram user joining is not announced back
    await broadcast(ana)
    bea = await rig.client("Bea")
    bea.close()
    await rig.fake.wait_sent(3)
    assert rig.fake.group_lines() == [
        "Ana se ha unido al chat",
        "Bea se ha unido al chat",
        "Bea ha abandonado el chat",
    ]


@pytest_twisted.ensureDeferred
async def test_no_notices_by_default_and_no_duplicates(rig):
    await rig.start()
    ana = await rig.client("Ana")
    for i in range(3):
        ana.send(cmd="broadcast", msg=f"m{i}")
    await rig.fake.wait_sent(1)
    await sleep(0.3)
    assert rig.fake.group_lines() == ["Ana: m0", "Ana: m1", "Ana: m2"]


@pytest_twisted.ensureDeferred
async def test_bridged_room_other_than_general(rig):
    await rig.start(room="telegram")
    ana = await rig.client("Ana")
    ana.send(cmd="join", room="telegram")
    await ana.expect("users", room="telegram")
    ana.send(cmd="broadcast", msg="en general")
    ana.send(cmd="broadcast", room="telegram", msg="en telegram")
    rig.fake.say(LUIS, "desde TG")
    frame = await broadcast(ana, **{"from": "Luis García (TG)"})
    assert frame["room"] == "telegram"
    await rig.fake.wait_sent(1)
    await sleep(0.1)
    assert rig.fake.group_lines() == ["Ana: en telegram"]


@pytest_twisted.ensureDeferred
async def test_private_messages_to_bridged_names_are_answered(rig):
    await rig.start()
    ana = await rig.client("Ana")
    rig.fake.say(LUIS, "hola")
    await broadcast(ana)
    ana.send(cmd="message", to="Luis García (TG)", msg="¿me oyes?")
    answer = await ana.expect("private", **{"from": "Luis García (TG)"})
    assert "Telegram" in answer["msg"]
    ana.send(cmd="message", to="Telegram (TG)", msg="¿y tú?")
    answer = await ana.expect("private", **{"from": "Telegram (TG)"})
    assert "puente" in answer["msg"]
    await sleep(0.1)
    assert rig.fake.sent == []


@pytest_twisted.ensureDeferred
async def test_update_numbering_restarted_by_telegram_is_followed(rig):
    from telegram import Update

    bridge = await rig.start()
    ana = await rig.client("Ana")
    rig.fake.say(LUIS, "antes del cambio")
    await broadcast(ana)
    assert bridge.state.offset >= 5000
    # After a week without updates Telegram numbers them afresh, lower.
    update = Update.de_json({"update_id": 7, "message": rig.fake.message(LUIS, "después")}, bridge.bot)
    await bridge._on_update(update, None)
    frame = await broadcast(ana)
    assert frame["msg"] == "después"
    assert bridge.state.offset == 7
