"""The real ``twistd -n -r asyncio chatserv --telegram-chat ...`` as a
subprocess, bridged to the fake Bot API that runs in the test's reactor.

The fake needs the reactor running while the server talks to it, so the
subprocess is driven with ``spawnProcess`` rather than blocking reads.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import ProcessProtocol

from tests.bridge.fakebot import GROUP, TOKEN, FakeBotAPI
from tests.bridge.test_faults import wait_for
from tests.support import LineClient

pytestmark = pytest.mark.slow

TWISTD = str(Path(sys.executable).parent / "twistd")
LUIS = FakeBotAPI.user(42, "Luis")


class Output(ProcessProtocol):
    def __init__(self) -> None:
        self.data = b""
        #: the exit code, or the negated signal that ended the process
        self.ended: defer.Deferred[int] = defer.Deferred()

    def outReceived(self, data: bytes) -> None:
        self.data += data

    errReceived = outReceived

    def processEnded(self, reason: Any) -> None:
        code = reason.value.exitCode
        self.ended.callback(code if code is not None else -reason.value.signal)

    @property
    def text(self) -> str:
        return self.data.decode("utf-8", "replace")


def spawn(args: list[str], cwd: Path, token: str | None = TOKEN) -> Output:
    from twisted.internet import reactor

    env = {k: v for k, v in os.environ.items() if k != "TELEGRAM_BOT_TOKEN"}
    env["PYTHONUNBUFFERED"] = "1"
    if token is not None:
        env["TELEGRAM_BOT_TOKEN"] = token
    out = Output()
    reactor.spawnProcess(out, TWISTD, [TWISTD, "-n", *args], env=env, path=str(cwd))
    return out


@pytest.mark.parametrize("reactor_args", [["-r", "asyncio"], []], ids=["-r asyncio", "no -r"])
@pytest_twisted.ensureDeferred
async def test_twistd_relays_both_ways(fakebot, tmp_path, reactor_args):
    """Also without ``-r``: with no reactor chosen the bridge installs asyncio's."""
    from twisted.internet import reactor

    out = spawn(
        [
            *reactor_args,
            "--pidfile=",
            "chatserv",
            "--listen",
            "tcp:0:interface=127.0.0.1",
            "--db",
            "chat.sqlite3",
            "--telegram-chat",
            str(GROUP),
            "--telegram-api-url",
            fakebot.url,
            "--telegram-state",
            "bridge.sqlite3",
        ],
        tmp_path,
    )
    try:
        listening = r"listening on .*port=(\d+)"
        await wait_for(lambda: re.search(listening, out.text) or out.ended.called, 20)
        match = re.search(listening, out.text)
        assert match, out.text
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", int(match.group(1)))
        ana = await connectProtocol(endpoint, LineClient())
        await ana.login("Ana")
        await wait_for(lambda: fakebot.count("getUpdates") > 0, 20)

        ana.send(cmd="broadcast", msg="hola <Telegram>")
        await fakebot.wait_sent(1, timeout=20)
        assert fakebot.sent[0].text == "<b>Ana</b>: hola &lt;Telegram&gt;"

        fakebot.say(LUIS, "hola, chat")
        frame = await ana.expect("broadcast", **{"from": "Luis (TG)"}, timeout=20)
        assert frame["msg"] == "hola, chat"
        ana.close()
    finally:
        if not out.ended.called:
            os.kill(out.transport.pid, signal.SIGTERM)
        started = time.monotonic()
        code = await out.ended
    # twistd ends itself with the signal that stopped it, after a clean shutdown
    assert code in (0, -signal.SIGTERM), out.text
    assert "Server Shut Down." in out.text
    assert time.monotonic() - started < 10
    assert "Telegram bot @chatserv_bridge_bot is up" in out.text
    assert "reactor class: twisted.internet.asyncioreactor.AsyncioSelectorReactor" in out.text
    assert TOKEN not in out.text and TOKEN.split(":")[1] not in out.text


@pytest_twisted.ensureDeferred
async def test_twistd_with_another_reactor_says_so(tmp_path):
    out = spawn(
        [
            "-r",
            "poll",
            "--pidfile=",
            "chatserv",
            "--db",
            ":memory:",
            "--listen",
            "tcp:0",
            "--telegram-chat",
            str(GROUP),
        ],
        tmp_path,
    )
    code = await out.ended
    assert code != 0
    lines = [line for line in out.text.splitlines() if line.strip()]
    assert len(lines) == 1, out.text
    assert "asyncio reactor" in lines[0] and "twistd -n -r asyncio" in lines[0]


@pytest_twisted.ensureDeferred
async def test_twistd_without_a_token_says_so(tmp_path):
    out = spawn(
        ["-r", "asyncio", "--pidfile=", "chatserv", "--telegram-chat", str(GROUP)], tmp_path, token=None
    )
    code = await out.ended
    assert code != 0
    assert "TELEGRAM_BOT_TOKEN" in out.text
