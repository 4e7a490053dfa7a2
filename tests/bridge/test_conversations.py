"""Replies, edits and deletes across the bridge, and several groups kept apart,
through the real python-telegram-bot and the fake Bot API."""

from __future__ import annotations

import pytest_twisted

from tests.bridge.fakebot import GROUP, FakeBotAPI
from tests.bridge.test_faults import wait_delivered, wait_for
from tests.support import sleep

LUIS = FakeBotAPI.user(42, "Luis")
EVA = FakeBotAPI.user(43, "Eva")
CINE = -1009999999999


@pytest_twisted.ensureDeferred
async def test_chat_replies_go_to_telegram_as_replies(rig):
    await rig.start()
    ana = await rig.client("Ana")
    tg_message = rig.fake.say(LUIS, "¿Quién viene al cine?")
    from_tg = await ana.expect("broadcast", msg="¿Quién viene al cine?")
    ana.send(cmd="broadcast", msg="¡yo!", reply_to=from_tg["id"])
    await ana.expect("broadcast", msg="¡yo!")
    await rig.fake.wait_sent(1)
    sent = rig.fake.sent[0]
    assert sent.plain == "Ana: ¡yo!"
    assert sent.message["reply_to_message"]["message_id"] == tg_message["message_id"]

    # A reply to a chat message relayed earlier answers the bot's message.
    ana.send(cmd="broadcast", msg="y otra cosa")
    await rig.fake.wait_sent(2)
    relayed = await ana.expect("broadcast", msg="y otra cosa")
    luis = await rig.client("Luis")
    luis.send(cmd="broadcast", msg="¿cuál?", reply_to=relayed["id"])
    await rig.fake.wait_sent(3)
    answered = rig.fake.sent[2].message["reply_to_message"]
    assert answered["message_id"] == rig.fake.sent[1].message["message_id"]
    assert rig.fake.sent[2].plain == "Luis: ¿cuál?"


@pytest_twisted.ensureDeferred
async def test_chat_edits_and_deletes_change_the_relayed_message(rig):
    await rig.start()
    ana = await rig.client("Ana")
    ana.send(cmd="broadcast", msg="a las 8")
    first = await ana.expect("broadcast", msg="a las 8")
    await wait_delivered(rig, 1)
    tg_id = rig.fake.sent[0].message["message_id"]
    ana.send(cmd="edit", id=first["id"], msg="a las 9")
    await rig.fake.wait_changed(1)
    assert rig.fake.edits == [(GROUP, tg_id, "Ana: a las 9")]
    ana.send(cmd="delete", id=first["id"])
    await rig.fake.wait_changed(2)
    assert rig.fake.deletions == [(GROUP, tg_id)]
    assert len(rig.fake.sent) == 1  # corrected in place, no new messages


@pytest_twisted.ensureDeferred
async def test_one_line_of_a_coalesced_message_is_edited_alone(rig):
    await rig.start()
    ana = await rig.client("Ana")
    await rig.fake.down()  # lines pile up and leave as one Telegram message
    for text in ("uno", "dos", "tres"):
        ana.send(cmd="broadcast", msg=text)
        await ana.expect("broadcast", msg=text)
    # Edited while still queued: the queued line changes, no edit call.
    ana.send(cmd="edit", id=(await _id_of(ana, "tres")), msg="tres, corregido")
    await ana.expect("edited")
    rig.fake.up()
    await wait_delivered(rig, 1)
    sent = rig.fake.sent[0]
    assert sent.plain == "Ana: uno\nAna: dos\nAna: tres, corregido"
    ana.send(cmd="edit", id=(await _id_of(ana, "dos")), msg="DOS")
    await rig.fake.wait_changed(1)
    assert rig.fake.edits[-1][2] == "Ana: uno\nAna: DOS\nAna: tres, corregido"
    ana.send(cmd="delete", id=(await _id_of(ana, "uno")))
    await rig.fake.wait_changed(2)
    assert rig.fake.edits[-1][2] == "Ana: DOS\nAna: tres, corregido"
    assert rig.fake.deletions == [] and len(rig.fake.sent) == 1


async def _id_of(client, text: str) -> int:
    client.send(cmd="history", room="general")
    page = await client.expect("history")
    return next(item["id"] for item in page["items"] if item["msg"] == text)


@pytest_twisted.ensureDeferred
async def test_two_groups_two_rooms_kept_apart(rig):
    await rig.start(more_chats=((CINE, "cine"),))
    ana = await rig.client("Ana")
    bea = await rig.client("Bea")
    bea.send(cmd="join", room="cine")
    await bea.expect("users", room="cine")

    ana.send(cmd="broadcast", msg="para el general")
    bea.send(cmd="broadcast", room="cine", msg="para el cine")
    await rig.fake.wait_sent(2)
    assert rig.fake.group_plain(GROUP) == ["Ana: para el general"]
    assert rig.fake.group_plain(CINE) == ["Bea: para el cine"]

    rig.fake.say(EVA, "desde el grupo de cine", chat=rig.fake.chat(CINE, "Cine"))
    frame = await bea.expect("broadcast", room="cine", msg="desde el grupo de cine")
    assert frame["from"] == "Eva (TG)"
    rig.fake.say(LUIS, "desde el grupo general")
    await ana.expect("broadcast", room="general", msg="desde el grupo general")
    await sleep(0.2)
    # Eva speaks in the cine room only (her session is in general too, as
    # every session is, but nothing of hers is posted there or reaches Group 1).
    assert "Eva (TG)" in rig.server.hub.users("cine")
    assert "Luis (TG)" not in rig.server.hub.users("cine")
    assert rig.fake.group_plain(GROUP) == ["Ana: para el general"]
    assert rig.fake.group_plain(CINE) == ["Bea: para el cine"]

    # Each group has its own pacing and queue: a flood in one does not hold
    # the other back.
    for i in range(8):
        ana.send(cmd="broadcast", msg=f"g{i}")
    for i in range(8):
        await ana.expect("broadcast", msg=f"g{i}")
    bea.send(cmd="broadcast", room="cine", msg="cine otra vez")
    await wait_for(lambda: "Bea: cine otra vez" in rig.fake.group_lines(CINE))
    assert not [line for line in rig.fake.group_lines(CINE) if line.startswith("Ana:")]
    assert not [line for line in rig.fake.group_lines(GROUP) if "cine" in line]
    groups = rig.bridge.groups
    assert groups[GROUP].outbox is not groups[CINE].outbox
    assert groups[GROUP].pacer is not groups[CINE].pacer


@pytest_twisted.ensureDeferred
async def test_users_command_answers_with_its_own_room(rig):
    await rig.start(more_chats=((CINE, "cine"),))
    bea = await rig.client("Bea")
    bea.send(cmd="join", room="cine")
    await bea.expect("users", room="cine")
    await rig.client("Ana")
    rig.fake.say(EVA, "/users", chat=rig.fake.chat(CINE, "Cine"))
    await wait_for(lambda: rig.fake.group_plain(CINE))
    (answer,) = rig.fake.group_plain(CINE)
    assert "Bea" in answer and "Ana" not in answer


@pytest_twisted.ensureDeferred
async def test_a_version_1_state_file_keeps_its_queue_for_the_first_group(tmp_path):
    import sqlite3

    from twisted.internet import reactor

    from chatserv.bridge.state import BridgeState

    path = str(tmp_path / "old.sqlite3")
    conn = sqlite3.connect(path)
    conn.executescript(
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
        "CREATE TABLE msgmap (n INTEGER NOT NULL, tg_chat INTEGER NOT NULL, tg_msg INTEGER NOT NULL,"
        " chat_id INTEGER, sender TEXT NOT NULL, excerpt TEXT NOT NULL, run TEXT NOT NULL);"
        "CREATE TABLE outbox (seq INTEGER PRIMARY KEY, chat_id INTEGER, sender TEXT, text TEXT NOT NULL);"
        "INSERT INTO outbox VALUES (7, 3, 'Ana', 'pendiente');"
        "PRAGMA user_version = 1;"
    )
    conn.commit()
    conn.close()
    state = BridgeState(path, reactor)
    queued = await state.open()
    assert [(tg_chat, e.seq, e.text, e.reply_tg) for tg_chat, e in queued] == [(None, 7, "pendiente", None)]
    await state.close()
