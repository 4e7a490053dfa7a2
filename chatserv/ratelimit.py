"""A token bucket that needs no timer: it refills lazily from the clock it is given."""

from __future__ import annotations

from collections.abc import Callable


class TokenBucket:
    """Allow *rate* events per second on average, with bursts of up to *burst*."""

    __slots__ = ("rate", "burst", "_tokens", "_stamp", "_now")

    def __init__(self, rate: float, burst: int, now: Callable[[], float]) -> None:
        self.rate = rate
        self.burst = float(max(burst, 1))
        self._now = now
        self._tokens = self.burst
        self._stamp = now()

    def allow(self) -> bool:
        """Take one token if there is one; return whether the event may go ahead."""
        if self.rate <= 0:
            return True
        now = self._now()
        tokens = self._tokens + (now - self._stamp) * self.rate
        self._stamp = now
        if tokens > self.burst:
            tokens = self.burst
        if tokens < 1.0:
            self._tokens = tokens
            return False
        self._tokens = tokens - 1.0
        return True
