"""Both directions through the real python-telegram-bot and the fake Bot API."""

from __future__ import annotations

import pytest_twisted

from tests.bridge.fakebot import FakeBotAPI
from tests.support import sleep

LUIS = FakeBotAPI.user(42, "Luis", "García", "luisg")


@pytest_twisted.ensureDeferred
async def test_chat_to_telegram_html_escaped(rig):
    await rig.start()
    ana = await rig.client("Ana")
    ana.send(cmd="broadcast", msg="1 < 2 & <b>no</b>\nsegunda línea")
    await rig.fake.wait_sent(1)
    (sent,) = rig.fake.sent
    assert sent.parse_mode == "HTML"
    assert sent.text == "<b>Ana</b>: 1 &lt; 2 &amp; &lt;b&gt;no&lt;/b&gt;\nsegunda línea"
    assert sent.plain == "Ana: 1 < 2 & <b>no</b>\nsegunda línea"


@pytest_twisted.ensureDeferred
async def test_telegram_to_chat(rig):
    await rig.start()
    ana = await rig.client("Ana")
    rig.fake.say(LUIS, "hola desde Telegram")
    frame = await ana.expect("broadcast")
    assert frame["from"] == "Luis García (TG)"
    assert frame["msg"] == "hola desde Telegram"
    await sleep(0.1)
    assert rig.fake.sent == []
