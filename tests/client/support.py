"""Helpers for the client tests: a real, restartable chat server on loopback
and polling waits that keep the reactor (and so Tk) turning."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from chatserv.client.model import ModelObserver
from tests.support import TestServer


def fast_retry(attempt: int) -> float:
    """Reconnect quickly in tests; the real policy is exponential back-off."""
    return 0.3


#: The one server harness (tests/support.py): the real service on a temporary
#: database, started again on the same port and database after ``stop()``.
RestartableServer = TestServer


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
