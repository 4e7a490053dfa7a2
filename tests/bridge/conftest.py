"""Fixtures for the bridge tests: the fake Bot API and a chat server with a
bridge pointed at it, with rates fast enough for tests."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from typing import Any

import pytest
import pytest_twisted

from chatserv.bridge import BridgeConfig, TelegramBridge
from chatserv.service import ChatServer
from tests.bridge.fakebot import GROUP, TOKEN, FakeBotAPI
from tests.support import LineClient, connect, start_server

pytest.importorskip("telegram")

if os.environ.get("BRIDGE_DEBUG"):
    # BRIDGE_DEBUG=1 pytest -s tests/bridge: the bridge's log on stderr.
    from twisted.logger import globalLogPublisher, textFileLogObserver

    globalLogPublisher.addObserver(textFileLogObserver(sys.stderr))

FAST = dict(
    group_rate=(20, 1.0),
    group_burst=3,
    global_rate=(30, 1.0),
    poll_timeout=1.0,
    backoff_initial=0.05,
    backoff_max=0.5,
    http_timeout=5.0,
)


def reactor() -> Any:
    from twisted.internet import reactor as r

    return r


@pytest_twisted.async_yield_fixture
async def fakebot():
    fake = FakeBotAPI(reactor())
    fake.start()
    yield fake
    await fake.stop()


@dataclass
class Rig:
    """A chat server, its bridge, and the chat clients of one test."""

    fake: FakeBotAPI
    tmp_path: Any
    server: ChatServer | None = None
    bridge: TelegramBridge | None = None
    clients: list[LineClient] = field(default_factory=list)

    def config(self, **overrides: Any) -> BridgeConfig:
        options: dict[str, Any] = dict(FAST)
        options.update(overrides)
        options.setdefault("state_path", str(self.tmp_path / "bridge.sqlite3"))
        return BridgeConfig(chat_id=GROUP, token=TOKEN, api_url=self.fake.url, **options)

    async def start(self, wait: bool = True, **overrides: Any) -> TelegramBridge:
        """Start the server (once) and a new bridge on it."""
        if self.server is None:
            self.server = await start_server()
        self.bridge = TelegramBridge(self.config(**overrides), self.server.hub, reactor())
        self.bridge.startService()
        if wait:
            await self.bridge.ready
        return self.bridge

    async def stop_bridge(self) -> None:
        if self.bridge is not None and self.bridge.running:
            await self.bridge.stopService()

    async def client(self, name: str | None = None) -> LineClient:
        assert self.server is not None
        client = await connect(self.server)
        self.clients.append(client)
        if name is not None:
            await client.login(name)
        return client

    async def close(self) -> None:
        for client in self.clients:
            client.close()
        await self.stop_bridge()
        if self.server is not None:
            await self.server.stopService()


@pytest_twisted.async_yield_fixture
async def rig(fakebot, tmp_path):
    r = Rig(fakebot, tmp_path)
    yield r
    await r.close()
