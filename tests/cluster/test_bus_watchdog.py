"""The Redis bus's reply watchdog (chatserv.bus.redis): a connection is
given up when Redis says nothing while a reply is awaited, never because the
node's own reactor was too busy to read (a login storm once dropped a
healthy connection that way, and the node was taken for dead)."""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock

from chatserv.bus.redis import REPLY_TIMEOUT, WATCH_EVERY, RedisBus


class FakeTransport:
    aborted = 0

    def abortConnection(self) -> None:
        self.aborted += 1


class FakeCommands:
    """What the watchdog reads of txredisapi's protocol."""

    def __init__(self) -> None:
        self.reads = 0
        self.transport = FakeTransport()
        self.replyQueue: Any = type("Q", (), {"waiting": []})()


def watched() -> tuple[RedisBus, FakeCommands, Clock]:
    clock = Clock()
    bus = RedisBus("redis://127.0.0.1:1/0", clock)
    commands = FakeCommands()
    bus._commands = commands  # type: ignore[assignment]
    return bus, commands, clock


def tick(bus: RedisBus, clock: Clock, seconds: float = WATCH_EVERY) -> None:
    clock.advance(seconds)
    bus._watch()


def test_silence_while_a_reply_is_awaited_drops_the_connection():
    bus, commands, clock = watched()
    commands.replyQueue.waiting = [object()]
    for _ in range(int(REPLY_TIMEOUT / WATCH_EVERY) + 1):
        tick(bus, clock)
    assert commands.transport.aborted == 1


def test_replies_arriving_slowly_keep_the_connection():
    bus, commands, clock = watched()
    commands.replyQueue.waiting = [object()]
    for _ in range(int(REPLY_TIMEOUT / WATCH_EVERY) * 3):
        commands.reads += 1  # late, but Redis is answering
        tick(bus, clock)
    assert commands.transport.aborted == 0


def test_a_busy_reactor_is_not_taken_for_a_silent_redis():
    bus, commands, clock = watched()
    commands.replyQueue.waiting = [object()]
    # The watchdog itself runs seconds late: the reactor was busy, and what
    # Redis sent meanwhile is still unread; the count starts again.
    for _ in range(4):
        tick(bus, clock, REPLY_TIMEOUT + 1)
    assert commands.transport.aborted == 0


def test_nothing_awaited_is_no_silence():
    bus, commands, clock = watched()
    for _ in range(int(REPLY_TIMEOUT / WATCH_EVERY) * 3):
        tick(bus, clock)
    assert commands.transport.aborted == 0
