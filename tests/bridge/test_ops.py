"""What an operator sees of the bridge: the chat-id hint in the log, and its metrics."""

from __future__ import annotations

from typing import Any

import pytest_twisted
from twisted.logger import LogLevel, formatEvent, globalLogPublisher

from chatserv import logs
from chatserv.metrics import MetricsService
from tests.bridge.fakebot import FakeBotAPI
from tests.bridge.test_faults import wait_for
from tests.test_metrics import scrape, value

LUIS = FakeBotAPI.user(42, "Luis")
OTHER = -1009999999


@pytest_twisted.ensureDeferred
async def test_messages_from_another_chat_are_logged_once_at_the_default_level(rig):
    """docs/TELEGRAM.md tells operators to find their chat id in this line."""
    seen: list[dict[str, Any]] = []
    before = logs.level()
    logs.set_level(logs.DEFAULT_LEVEL)
    globalLogPublisher.addObserver(seen.append)
    try:
        await rig.start()
        for text in ("uno", "dos", "tres"):
            rig.fake.say(LUIS, text, chat=FakeBotAPI.chat(OTHER))
        ana = await rig.client("Ana")
        rig.fake.say(LUIS, "en el grupo")
        await ana.expect("broadcast", msg="en el grupo")
    finally:
        globalLogPublisher.removeObserver(seen.append)
        logs.set_level(before)
    hints = [e for e in seen if formatEvent(e) == f"ignoring a message from chat {OTHER}"]
    assert len(hints) == 1
    assert hints[0]["log_level"] == LogLevel.info


@pytest_twisted.ensureDeferred
async def test_bridge_metrics(rig):
    from twisted.internet import reactor

    rig.fake.fail("sendMessage", "429", retry_after=1)
    bridge = await rig.start()
    service = MetricsService("tcp:0:interface=127.0.0.1", reactor, rig.server, bridge)
    service.startService()
    try:
        port = (await service.listening).getHost().port
        ana = await rig.client("Ana")
        ana.send(cmd="broadcast", msg="hola")
        await wait_for(lambda: bridge.api_calls["retry_after"] == 1)
        during = await scrape(port)
        assert value(during, "chatserv_bridge_queue_lines") == 1  # waiting out the 429
        assert value(during, "chatserv_telegram_api_calls_total", outcome="retry_after") == 1
        assert value(during, "chatserv_telegram_flood_wait_seconds_total") == 1
        assert value(during, "chatserv_sessions", dialect="bridge") == 1  # the bridge's own user
        await rig.fake.wait_sent(1)
        await wait_for(lambda: not bridge.outbox.entries)
        after = await scrape(port)
        assert value(after, "chatserv_bridge_queue_lines") == 0
        assert value(after, "chatserv_telegram_api_calls_total", outcome="ok") == 1
        assert value(after, "chatserv_telegram_api_calls_total", outcome="error") == 0
    finally:
        await service.stopService()
