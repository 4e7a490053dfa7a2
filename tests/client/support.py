"""Helpers for the client tests: a real, restartable chat server on loopback
and polling waits that keep the reactor (and so Tk) turning."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from chatserv.client.model import ModelObserver
from chatserv.protocol import Limits
from chatserv.service import ChatServer, ServerConfig, build_server


def fast_retry(attempt: int) -> float:
    """Reconnect quickly in tests; the real policy is exponential back-off."""
    return 0.3


class RestartableServer:
    """The real chat service on 127.0.0.1, which can be stopped and started
    again on the same port, as an operator restarting it would."""

    def __init__(self) -> None:
        self.port = 0
        self.server: ChatServer | None = None

    async def start(self) -> None:
        from twisted.internet import reactor

        config = ServerConfig(
            listen=[f"tcp:{self.port}:interface=127.0.0.1"], limits=Limits(rate_limit=0)
        )
        self.server = build_server(config, reactor)
        self.server.startService()
        ports = await self.server.listening
        self.port = ports[0].getHost().port

    async def stop(self) -> None:
        if self.server is not None:
            server, self.server = self.server, None
            await server.stopService()


async def sleep(seconds: float) -> None:
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    await deferLater(reactor, seconds, lambda: None)


async def wait_for(predicate: Callable[[], Any], what: str, timeout: float = 10.0) -> Any:
    """Poll ``predicate`` until it returns something true; fail saying ``what``
    did not happen. Polling (not a fixed sleep) keeps the tests fast and
    tolerant of a slow CI machine; nothing here asserts on timing."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for: {what}")
        await sleep(0.02)


class FailureLog(ModelObserver):
    """Records the login failures a model reports."""

    def __init__(self) -> None:
        self.failures: list[str] = []

    def login_failed(self, message: str) -> None:
        self.failures.append(message)
