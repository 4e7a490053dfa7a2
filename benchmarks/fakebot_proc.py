"""The tests' fake Telegram Bot API (tests/bridge/fakebot.py) as a process of
its own, for the cluster benchmark's Telegram failover (benchmarks run from
a checkout, where ``tests`` is importable).

Run as ``python -m benchmarks.fakebot_proc``. It prints ``port N`` once it
listens, then ``call METHOD OUTCOME`` for every Bot API call it answers, as
they come; on standard input it takes ``say TEXT`` (a Telegram user posts
TEXT in the group) and ``quit``.
"""

from __future__ import annotations

import sys
from typing import Any

from twisted.internet import reactor, stdio
from twisted.internet.task import LoopingCall
from twisted.protocols.basic import LineReceiver

from tests.bridge.fakebot import FakeBotAPI

USER = FakeBotAPI.user(42, "Luis")


class Control(LineReceiver):
    delimiter = b"\n"

    def __init__(self, fake: FakeBotAPI) -> None:
        self.fake = fake

    def lineReceived(self, line: bytes) -> None:
        cmd, _, arg = line.decode().partition(" ")
        if cmd == "say":
            self.fake.say(USER, arg)
        elif cmd == "quit":
            reactor.stop()  # type: ignore[attr-defined]

    def connectionLost(self, reason: Any = None) -> None:
        if reactor.running:  # type: ignore[attr-defined]
            reactor.stop()  # type: ignore[attr-defined]


def main() -> None:
    fake = FakeBotAPI(reactor)
    fake.start()
    print(f"port {fake.port_number}", flush=True)
    shown = 0

    def report() -> None:
        # The fake records every call; they are passed on as they come.
        nonlocal shown
        for method, _, outcome in fake.calls[shown:]:
            sys.stdout.write(f"call {method} {outcome}\n")
        if len(fake.calls) > shown:
            sys.stdout.flush()
        shown = len(fake.calls)

    LoopingCall(report).start(0.005)
    stdio.StandardIO(Control(fake))
    reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
