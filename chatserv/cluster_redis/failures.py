"""Failed-login counts shared by every node of the cluster
(:class:`chatserv.accounts.SharedFailures`): one Redis counter per kind and
key, ``PREFIX:fail:KIND:KEY``, incremented (INCRBY) and given the kind's
forget time (PEXPIRE) at each failure, atomically. The time of the last
failure is read back from the counter's time left to live (it is renewed at
each failure), so one key holds all a :class:`chatserv.accounts.Throttle`
entry does, and Redis forgets it when the throttle would."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

from ..accounts import Throttle
from ..bus import Bus


class RedisFailures:
    def __init__(self, bus: Bus, prefix: str, clock: IReactorTime) -> None:
        self.bus = bus
        self.prefix = prefix
        self.clock = clock

    def _key(self, kind: str, key: str) -> str:
        return f"{self.prefix}:fail:{kind}:{key}"

    def failures(self, kind: str, key: str) -> Deferred[int]:
        d: Deferred[Any] = self.bus.counter_read(self._key(kind, key))
        return d.addCallback(lambda found: found[0])

    def wait(self, kind: str, key: str, rules: Throttle) -> Deferred[float]:
        def after(found: tuple[int, int]) -> float:
            failures, left_ms = found
            now = self.clock.seconds()
            last = now if left_ms < 0 else now - (rules.forget - left_ms / 1000)
            return rules.wait_after(failures, last, now)

        d: Deferred[Any] = self.bus.counter_read(self._key(kind, key))
        return d.addCallback(after)

    def failure(self, kind: str, key: str, rules: Throttle) -> None:
        ms = max(1, int(rules.forget * 1000))
        self.bus.counter_add(self._key(kind, key), 1, ms).addErrback(_ignore)

    def forgive(self, kind: str, key: str) -> None:
        self.bus.counter_add(self._key(kind, key), -1).addErrback(_ignore)

    def reset(self, kind: str, key: str) -> None:
        self.bus.delete(self._key(kind, key)).addErrback(_ignore)


def _ignore(failure: Any) -> None:
    return None  # Redis away: the node's own counts still hold
