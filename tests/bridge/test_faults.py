"""Rate limits, Telegram errors, outages and restarts: nothing lost, nothing
twice, order kept, and the chat keeps serving its clients meanwhile."""

from __future__ import annotations

import time
from typing import Any

import pytest_twisted
from twisted.logger import formatEvent, globalLogPublisher

from tests.bridge.fakebot import TOKEN, FakeBotAPI
from tests.support import sleep

LUIS = FakeBotAPI.user(42, "Luis")


async def wait_for(predicate: Any, timeout: float = 15.0, step: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await sleep(step)


async def wait_lines(fake: FakeBotAPI, count: int, timeout: float = 15.0) -> list[str]:
    await wait_for(lambda: len(fake.group_lines()) >= count, timeout)
    return fake.group_lines()


async def wait_delivered(rig: Any, count: int) -> None:
    """Until *count* messages reached the fake and the bridge has heard so:
    cutting Telegram off between the two would make the bridge send again
    (at-least-once; Telegram has no idempotency key)."""
    await rig.fake.wait_sent(count)
    await wait_for(lambda: not rig.bridge.outbox.entries)


async def round_trip(sender: Any, receiver: Any, text: str) -> float:
    """Seconds from one client's broadcast to another client receiving it."""
    start = time.monotonic()
    sender.send(cmd="broadcast", msg=text)
    await receiver.expect("broadcast", msg=text, timeout=2.0)
    return time.monotonic() - start


class LogCapture:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def __call__(self, event: dict[str, Any]) -> None:
        self.events.append(event)

    def text(self) -> str:
        out = []
        for event in self.events:
            out.append(formatEvent(event) or "")
            failure = event.get("log_failure")
            if failure is not None:
                out.append(failure.getTraceback())
            out.extend(repr(v) for v in event.values())
        return "\n".join(out)


@pytest_twisted.ensureDeferred
async def test_burst_of_200_is_coalesced_in_order_within_limits(rig):
    rig.fake.group_rate = (20, 1.0)  # the fake answers 429 if the bridge ever exceeds it
    await rig.start()
    ana = await rig.client("Ana")
    expected = []
    for chunk in range(20):
        for i in range(10):
            n = chunk * 10 + i
            text = f"mensaje {n:03d} " + "x" * (n % 50)
            expected.append(f"Ana: {text}")
            ana.send(cmd="broadcast", msg=text)
        await sleep(0.02)
    lines = await wait_lines(rig.fake, 200)
    assert lines == expected
    assert rig.fake.violations == 0
    assert all(len(s.plain.encode("utf-16-le")) // 2 <= 4096 for s in rig.fake.sent)
    assert len(rig.fake.sent) < 50  # coalesced, not one Telegram message per line


@pytest_twisted.ensureDeferred
async def test_long_message_is_split_without_loss(rig):
    await rig.start()
    ana = await rig.client("Ana")
    text = "".join(f"<{i}> & " for i in range(2000))
    ana.send(cmd="broadcast", msg=text)

    def joined() -> str:
        return "".join(p.removeprefix("Ana: ") for p in rig.fake.group_plain())

    await wait_for(lambda: len(joined()) >= len(text))
    parts = rig.fake.group_plain()
    assert len(parts) > 4
    assert all(p.startswith("Ana: ") for p in parts)
    assert joined() == text
    assert all(len(p.encode("utf-16-le")) // 2 <= 4096 for p in parts)


@pytest_twisted.ensureDeferred
async def test_429_storm_is_honoured(rig):
    # The bridge is set to send far faster than the fake allows (5/s), so
    # the fake floods it with 429s; every line must still arrive, once, in order.
    rig.fake.group_rate = (5, 1.0)
    await rig.start(group_rate=(100, 1.0), group_burst=100, global_rate=(100, 1.0))
    ana = await rig.client("Ana")
    bea = await rig.client("Bea")
    expected = []
    for i in range(40):
        expected.append(f"Ana: línea {i}")
        ana.send(cmd="broadcast", msg=f"línea {i}")
        await sleep(0.01)
    assert await round_trip(bea, ana, "¿seguimos?") < 0.5
    expected.append("Bea: ¿seguimos?")
    lines = await wait_lines(rig.fake, len(expected))
    assert lines == expected
    storms = [t for m, t, o in rig.fake.calls if m == "sendMessage" and o == "429"]
    assert storms, "the fake never pushed back"
    sends = [t for m, t, o in rig.fake.calls if m == "sendMessage"]
    for t in storms:
        later = [s for s in sends if s > t]
        if later:
            assert later[0] - t >= 0.99  # retry_after (1 s) honoured


@pytest_twisted.ensureDeferred
async def test_server_errors_and_dropped_connections_are_retried(rig):
    await rig.start()
    ana = await rig.client("Ana")
    rig.fake.fail("sendMessage", "500", times=2)
    rig.fake.fail("sendMessage", "drop", times=2)
    rig.fake.fail("sendMessage", "502", times=1)
    expected = []
    for i in range(5):
        expected.append(f"Ana: m{i}")
        ana.send(cmd="broadcast", msg=f"m{i}")
        await sleep(0.05)
    assert await wait_lines(rig.fake, 5) == expected
    await sleep(0.2)
    assert rig.fake.group_lines() == expected
    assert rig.fake.count("sendMessage", "500") == 2 and rig.fake.count("sendMessage", "drop") == 2


@pytest_twisted.ensureDeferred
async def test_outage_loses_nothing_and_the_chat_stays_responsive(rig):
    capture = LogCapture()
    globalLogPublisher.addObserver(capture)
    try:
        await rig.start()
        ana = await rig.client("Ana")
        bea = await rig.client("Bea")
        ana.send(cmd="broadcast", msg="antes")
        await wait_delivered(rig, 1)
        await rig.fake.down()
        rig.fake.say(LUIS, "escrito durante el corte")  # Telegram keeps it for us
        expected = ["Ana: antes"]
        slowest = 0.0
        for i in range(12):
            slowest = max(slowest, await round_trip(ana, bea, f"corte {i}"))
            expected.append(f"Ana: corte {i}")
            await sleep(0.25)
        assert slowest < 0.5, f"chat round trip took {slowest:.2f}s during the outage"
        rig.fake.up()
        frame = await ana.expect("broadcast", msg="escrito durante el corte", timeout=10)
        assert frame["from"] == "Luis (TG)"
        assert await wait_lines(rig.fake, len(expected)) == expected
        await sleep(0.2)
        assert rig.fake.group_lines() == expected
    finally:
        globalLogPublisher.removeObserver(capture)
    text = capture.text()
    assert "cannot reach Telegram" in text
    assert TOKEN not in text and TOKEN.split(":")[1] not in text


@pytest_twisted.ensureDeferred
async def test_queue_bound_drops_oldest_and_says_so(rig):
    capture = LogCapture()
    globalLogPublisher.addObserver(capture)
    try:
        await rig.start(queue_max=5)
        ana = await rig.client("Ana")
        await rig.fake.down()
        for i in range(8):
            ana.send(cmd="broadcast", msg=f"q{i}")
            await ana.expect("broadcast", msg=f"q{i}")
        rig.fake.up()
        lines = await wait_lines(rig.fake, 6)
        # The bridge logs the drop once Telegram has answered the send that
        # announced it, which may be after the fake has recorded its lines.
        await wait_for(lambda: "chat lines were dropped" in capture.text())
    finally:
        globalLogPublisher.removeObserver(capture)
    assert lines == [
        "[3 mensajes del chat no han llegado a Telegram: cola llena]",
        "Ana: q3",
        "Ana: q4",
        "Ana: q5",
        "Ana: q6",
        "Ana: q7",
    ]
    text = capture.text()
    assert "outbound queue is full" in text
    assert "3 chat lines were dropped" in text


@pytest_twisted.ensureDeferred
async def test_restart_keeps_offsets_map_and_queue(rig):
    await rig.start()
    ana = await rig.client("Ana")
    ana.send(cmd="broadcast", msg="pregunta")
    asked = await ana.expect("broadcast", msg="pregunta")
    await wait_delivered(rig, 1)
    bot_message = rig.fake.sent[0].message
    first = rig.fake.say(LUIS, "uno")
    first_update = rig.fake.last_update_id
    await ana.expect("broadcast", msg="uno")

    # Telegram goes away with lines still queued, then the bridge restarts.
    await rig.fake.down()
    ana.send(cmd="broadcast", msg="pendiente 1")
    ana.send(cmd="broadcast", msg="pendiente 2")
    await ana.expect("broadcast", msg="pendiente 2")
    await sleep(0.1)
    await rig.stop_bridge()
    rig.fake.up()
    # As if Telegram had never seen our confirmations: it offers "uno" again.
    rig.fake.unconfirm_all()
    rig.fake.say(LUIS, "dos")
    offsets_before = len(rig.fake.offsets)
    await rig.start()

    # The queue survived the restart.
    lines = await wait_lines(rig.fake, 3)
    assert lines == ["Ana: pregunta", "Ana: pendiente 1", "Ana: pendiente 2"]
    # The offset survived: "uno" is not relayed twice, "dos" arrives.
    frame = await ana.expect("broadcast", **{"from": "Luis (TG)"})
    assert frame["msg"] == "dos"
    assert rig.fake.offsets[offsets_before] == first_update + 1
    # The id map survived: a reply to the pre-restart message finds it
    # (same hub, so the id still names it).
    rig.fake.say(LUIS, "respuesta", reply_to=bot_message)
    frame = await ana.expect("broadcast", **{"from": "Luis (TG)"})
    assert frame["reply_to"] == {"id": asked["id"], "from": "Ana", "msg": "pregunta"}
    rig.fake.edit(first, "uno (corregido)")
    frame = await ana.expect("edited", **{"from": "Luis (TG)"})
    assert frame["msg"] == "uno (corregido)"
    await sleep(0.1)
    assert [f for f in await ana.quiet(0.05) if b'"msg":"uno"' in f] == []


@pytest_twisted.ensureDeferred
async def test_ids_from_a_previous_server_are_not_reused(rig):
    """Without durable storage a restarted server numbers messages from 1
    again: a reply to a message from before keeps who and what, not the id."""
    await rig.start()
    ana = await rig.client("Ana")
    ana.send(cmd="broadcast", msg="del servidor anterior")
    await rig.fake.wait_sent(1)
    bot_message = rig.fake.sent[0].message
    await rig.close()
    rig.server = None
    rig.clients = []
    await rig.start()
    bea = await rig.client("Bea")
    rig.fake.say(LUIS, "contesto", reply_to=bot_message)
    frame = await bea.expect("broadcast", **{"from": "Luis (TG)"})
    assert frame["reply_to"] == {"from": "Ana", "msg": "del servidor anterior"}


@pytest_twisted.ensureDeferred
async def test_updates_offered_again_are_relayed_once(rig):
    """If Telegram offers handled updates again (our confirmation got lost),
    the saved update id still keeps them out of the chat."""
    await rig.start()
    ana = await rig.client("Ana")
    rig.fake.say(LUIS, "una vez")
    await ana.expect("broadcast", msg="una vez")
    await sleep(0.05)
    await rig.stop_bridge()
    rig.fake.unconfirm_all()
    rig.fake.fail("getUpdates", "500")  # the start-up confirmation fails too
    rig.fake.say(LUIS, "nuevo")
    polls = len(rig.fake.offsets)
    await rig.start()
    frame = await ana.expect("broadcast", **{"from": "Luis (TG)"})
    assert frame["msg"] == "nuevo"
    assert 0 in rig.fake.offsets[polls:]  # PTB did fetch from the start again
    await sleep(0.1)
    assert [line for line in await ana.quiet(0.05) if b"una vez" in line] == []


@pytest_twisted.ensureDeferred
async def test_start_while_telegram_is_unreachable(rig):
    rig.fake.fail("getMe", "502", times=3)
    rig.fake.fail("deleteWebhook", "drop")  # PTB's bootstrap, between getMe and polling
    bridge = await rig.start(wait=False)
    ana = await rig.client("Ana")
    ana.send(cmd="broadcast", msg="mientras arranca")  # queued until Telegram answers
    await bridge.ready
    assert rig.fake.count("getMe") == 4
    assert rig.fake.count("deleteWebhook") == 2
    assert await wait_lines(rig.fake, 1) == ["Ana: mientras arranca"]


@pytest_twisted.ensureDeferred
async def test_a_refused_token_leaves_the_chat_running(rig):
    capture = LogCapture()
    globalLogPublisher.addObserver(capture)
    try:
        rig.fake.token = "999:another-token"
        await rig.start(wait=False)
        await wait_for(lambda: "refused the bot token" in capture.text())
        ana = await rig.client("Ana")
        bea = await rig.client("Bea")
        assert await round_trip(ana, bea, "seguimos") < 0.5
        await rig.stop_bridge()
    finally:
        globalLogPublisher.removeObserver(capture)
    assert TOKEN not in capture.text()
