"""The log: levels, and a bounded number of lines however many clients misbehave."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from twisted.internet.error import ConnectionAborted
from twisted.internet.task import Clock
from twisted.logger import LogLevel, formatEvent, globalLogPublisher

from chatserv import logs
from tests.protocol_support import World


@pytest.fixture
def events() -> Iterator[list[dict[str, Any]]]:
    """chatserv's log events, at the default level (restored afterwards)."""
    captured: list[dict[str, Any]] = []

    def observe(event: dict[str, Any]) -> None:
        if event.get("log_namespace", "").startswith("chatserv"):
            captured.append(event)

    before = logs.level()
    logs.set_level(logs.DEFAULT_LEVEL)
    globalLogPublisher.addObserver(observe)
    yield captured
    globalLogPublisher.removeObserver(observe)
    logs.set_level(before)


def texts(events: list[dict[str, Any]]) -> list[str]:
    return [formatEvent(e) for e in events]


def test_level_drops_events_below_it(events):
    seen: list[dict[str, Any]] = []
    log = logs.Logger(observer=seen.append)
    log.debug("detail")
    log.info("news")
    assert [e["log_format"] for e in seen] == ["news"]
    logs.set_level("debug")
    log.debug("detail")
    logs.set_level("error")
    log.warn("warning")
    log.error("error")
    assert [e["log_format"] for e in seen] == ["news", "detail", "error"]
    assert seen[0]["log_namespace"] == __name__  # still the calling module


def test_throttle_writes_a_budget_then_one_summary():
    clock = Clock()
    seen: list[dict[str, Any]] = []
    throttle = logs.LogBudget(clock, logs.Logger(observer=seen.append), interval=60, burst=3)
    for i in range(3):
        throttle.line("logins", "10.0.0.9", "early {i}", i=i)
    assert not clock.getDelayedCalls()  # under budget: no timer
    clock.advance(60)  # the interval ends by itself
    seen.clear()
    for i in range(10):
        throttle.line("logins", f"10.0.0.{i % 4}", "login {i}", i=i)
    assert [formatEvent(e) for e in seen] == ["login 0", "login 1", "login 2"]
    clock.advance(60)
    assert formatEvent(seen[-1]) == "logins: 7 more in the last 60 s, from 4 addresses"
    assert len(seen) == 4
    clock.advance(600)  # nothing left out: no summary, no timer
    assert len(seen) == 4 and not clock.getDelayedCalls()
    throttle.line("logins", "x", "login again")  # a new interval, a new budget
    assert formatEvent(seen[-1]) == "login again"


def test_tally_is_only_a_summary():
    clock = Clock()
    seen: list[dict[str, Any]] = []
    throttle = logs.LogBudget(clock, logs.Logger(observer=seen.append), interval=10)
    for i in range(500):
        throttle.tally("rate-limited lines", f"peer{i % 2}")
    assert seen == []
    clock.advance(10)
    assert [formatEvent(e) for e in seen] == ["rate-limited lines: 500 in the last 10 s, from 2 addresses"]
    assert seen[0]["log_level"] == LogLevel.warn


def test_a_login_is_logged_once_and_connections_not_at_all(events):
    world = World()
    ana = world.user("Ana")
    ana.raw(b"")
    ana.lose()
    assert texts(events) == ["Ana logged in from 127.0.0.1:40000", "Ana logged out (127.0.0.1:40000)"]


def test_connection_churn_writes_a_bounded_log(events):
    """An attacker logging in and out in a loop, and flooding past the rate
    limit: a bounded number of lines, then one summary per kind."""
    world = World(rate_limit=1.0, rate_burst=2)
    budget = world.factory.log_budget.burst
    for i in range(3 * budget):
        conn = world.user(f"bot{i}")
        conn.lose()
    flooder = world.user("flood")
    for _ in range(1000):
        flooder.send(cmd="ping")
    lines = texts(events)
    assert len(lines) == 2 * budget, lines[-3:]
    world.clock.advance(world.factory.log_budget.interval)
    summaries = texts(events)[2 * budget :]
    assert sorted(summaries) == sorted(
        [
            f"logins: {2 * budget + 1} more in the last 60 s, from 1 address",
            f"logouts: {2 * budget} more in the last 60 s, from 1 address",
            "rate-limited lines: 999 in the last 60 s, from 1 address",
        ]
    )
    assert world.factory.stats.rate_limited == 999


def test_slow_consumer_drop_is_counted_and_logged(events):
    world = World(max_output=10_000)
    ana, luis = world.user("Ana"), world.user("Luis")
    world.settle(ana, luis)
    luis.protocol.pauseProducing()
    for _ in range(4):
        ana.send(cmd="broadcast", msg="x" * 3000)
    world.clock.advance(0)
    assert luis.transport.disconnected
    luis.lose(ConnectionAborted())
    assert world.factory.stats.slow_dropped == 1
    dropped = [t for t in texts(events) if t.startswith("dropping Luis")]
    assert len(dropped) == 1 and "bytes of unread output" in dropped[0]


def test_the_bounded_log_file_cannot_deadlock_on_a_logging_signal_handler(tmp_path):
    """SIGTERM arriving mid-write used to hang twistd for good: Twisted's
    Python-level lock can be interrupted between taking its inner lock and
    recording its owner, and the handler's own log line then waits on it."""
    import threading

    from twisted.logger import LogLevel

    from chatserv.logs import bounded_observer

    observer = bounded_observer({"CHATSERV_LOG_FILE": str(tmp_path / "chat.log")})

    def event(text: str) -> dict:
        return {"log_format": text, "log_level": LogLevel.info, "log_time": 0.0, "log_namespace": "t"}

    observer(event("first"))  # the lock exists from the first write on
    lock = observer.__dict__["_threadable_lock"]
    # Atomic in C: there is no moment at which it is held but has no owner.
    assert type(lock) is type(threading.RLock())
    # A nested write from the same thread (a signal handler's) goes through.
    with lock:
        observer(event("from a handler"))
    text = (tmp_path / "chat.log").read_text()
    assert "first" in text and "from a handler" in text

