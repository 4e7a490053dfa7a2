"""The Telegram bridge's leader failover between two real ``twistd -n
chatserv`` node processes of one cluster (the machine's Redis under a
cluster name of the test's own, a PostgreSQL schema of its own), both given
``--telegram-chat`` and the fake Bot API, which runs in this test's reactor.

The leader is stopped cleanly (SIGTERM) once and SIGKILLed once, mid
traffic both ways; every update fed to Telegram before and during each
failover is in the chat exactly once, and every chat line reaches Telegram
exactly once, in order. The takeover times (stop or kill -> the new
leader's first ``getUpdates``) are printed (``pytest -s``), never asserted.

Chat -> Telegram is at least once (docs/TELEGRAM.md): a kill in the instant
between Telegram accepting a message and the leader recording that it did
sends the line again. The test keeps that instant out of its kill, so it
cannot flake on it: Telegram refuses sends (500) from shortly before the
kill, and the kill waits until every line Telegram accepted is recorded as
sent in the shared state. The lines said meanwhile wait in the shared queue,
and those said while no node leads are found in the chat history.
"""

from __future__ import annotations

import re
import signal
import time
from collections.abc import Callable
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import threads

from tests.bridge.fakebot import GROUP, TOKEN, FakeBotAPI
from tests.cluster.test_failures import page_after
from tests.cluster.test_nodes import start_all
from tests.support import sleep

pytestmark = pytest.mark.slow
pytest.importorskip("telegram")  # the nodes' bridges need python-telegram-bot

LUIS = FakeBotAPI.user(42, "Luis")
LEADS = re.compile(r"this node now runs the Telegram bridge \(term (\d+)\)")


@pytest_twisted.async_yield_fixture
async def fakebot():
    from twisted.internet import reactor

    fake = FakeBotAPI(reactor)
    fake.start()
    yield fake
    await fake.stop()


def leads(node: Any) -> bool:
    """Whether *node*'s current run has won the lease (its log says so)."""
    return node.log.exists() and LEADS.search(node.log.read_text()) is not None


async def until(condition: Callable[[], Any], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await sleep(0.05)


def new_poller_after(fake: FakeBotAPI, since: float) -> float | None:
    """When the first getUpdates after *since* came from a connection not
    seen polling before it (the new leader), or None."""
    before = {port for at, port in fake.pollers if at < since}
    times = [at for at, port in fake.pollers if at >= since and port not in before]
    return min(times) if times else None


def _mapped(pg_url: str) -> set[str]:
    import psycopg

    with psycopg.connect(pg_url, autocommit=True) as conn:
        rows = conn.execute("SELECT excerpt FROM telegram_msgmap WHERE sender = 'Ana'").fetchall()
    return {row[0] for row in rows}


@pytest_twisted.ensureDeferred
async def test_telegram_leader_failover_between_real_nodes(
    nodes: Any, fakebot: FakeBotAPI, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from twisted.internet import reactor

    fake = fakebot
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", TOKEN)  # the node processes inherit it
    bridge = ("--telegram-chat", str(GROUP), "--telegram-api-url", fake.url)
    p, q = nodes(*bridge), nodes(*bridge)
    await start_all(p, q)
    await until(lambda: leads(p) or leads(q), 15, "a leader")
    first, second = (p, q) if leads(p) else (q, p)
    await until(lambda: fake.count("getUpdates") > 0, 15, "the leader's polling")
    assert not leads(second)

    # 1. A clean stop: u1 relayed (Telegram has its offset), u2 said while
    # the leader stops.
    fake.say(LUIS, "u1")
    u1 = fake.last_update_id
    await until(lambda: any(o > u1 for o in fake.offsets), 15, "u1 relayed")
    stopping = reactor.seconds()
    assert first.proc is not None
    first.proc.send_signal(signal.SIGTERM)
    fake.say(LUIS, "u2")
    await until(lambda: new_poller_after(fake, stopping) is not None, 15, "the takeover after SIGTERM")
    after_stop = new_poller_after(fake, stopping) - stopping  # type: ignore[operator]
    await until(lambda: first.proc.poll() is not None, 20, "the stopped node's exit")
    assert leads(second)

    # 2. The stopped node comes back, a stand-by now; Ana talks on it, and
    # Luis in Telegram, while the leader is SIGKILLed.
    await start_all(first)
    assert not leads(first)
    ana = await first.client()
    await ana.login("Ana")
    said: list[str] = []
    fed: list[str] = []

    async def talk() -> None:
        n = len(said) + 1
        fake.say(LUIS, f"t{n}")
        fed.append(f"t{n}")
        ana.send(cmd="broadcast", msg=f"c{n}")
        said.append(f"c{n}")
        await ana.expect("broadcast", msg=f"c{n}", timeout=10)
        await sleep(0.1)

    for _ in range(5):
        await talk()
    # Telegram refuses sends from now on: the lines queue in the shared
    # outbox. Once every line it did accept is recorded as sent, no send is
    # in that instant (see the module docstring); the kill may come.
    fake.fail("sendMessage", "500", times=100_000)
    accepted = {line.split(": ", 1)[1] for line in fake.group_lines()}
    for _ in range(3):
        await talk()
    for _ in range(100):  # bounded: 10 s
        if accepted <= await threads.deferToThread(_mapped, pg_url):
            break
        await sleep(0.1)
    else:
        raise AssertionError(f"lines accepted by Telegram never recorded as sent: {accepted}")
    killed = reactor.seconds()
    second.kill()
    fake.fail_clear()
    deadline = time.monotonic() + 20
    while not leads(first) and time.monotonic() < deadline:  # then 3 more rounds
        await talk()
        await sleep(0.3)
    assert leads(first), "the stand-by never took over"
    for _ in range(3):
        await talk()
    after_kill = new_poller_after(fake, killed)
    assert after_kill is not None
    after_kill -= killed

    # Everything arrives, once.
    await until(lambda: len(fake.group_lines()) >= len(said), 20, "every chat line in Telegram")
    await until(lambda: any(o > fake.last_update_id for o in fake.offsets), 20, "every update relayed")
    await sleep(0.5)
    relayed = [m["msg"] for m in await page_after(ana) if m["from"] == "Luis (TG)"]
    print(
        f"\nTelegram leader takeover between real nodes: {after_kill:.2f} s after SIGKILL, "
        f"{after_stop:.2f} s after SIGTERM ({len(fed)} updates, {len(said)} chat lines)"
    )
    assert relayed == ["u1", "u2", *fed]
    assert fake.group_lines() == [f"Ana: {line}" for line in said]
    # The dead node's sessions were reaped (5-7 s) before the new leader
    # logged its own in under the same names (10 s): each is there once.
    ana.send(cmd="users")
    users = await ana.expect("users")
    assert sorted(users["list"]) == ["Ana", "Luis (TG)", "Telegram (TG)"], users
    ana.close()
    first.proc.send_signal(signal.SIGTERM)
    await until(lambda: first.proc.poll() is not None, 20, "the last node's exit")
