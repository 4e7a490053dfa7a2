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


class Allowance:
    """A token bucket per key (a client address, say): *rate* per second, bursts of *burst*.

    Like :class:`TokenBucket` it needs no timer. Memory is bounded: past
    *max_keys* keys, the buckets touched longest ago are forgotten (which
    gives those keys a fresh burst; a server-wide allowance still holds).
    """

    __slots__ = ("rate", "burst", "max_keys", "_now", "_buckets")

    def __init__(self, rate: float, burst: int, now: Callable[[], float], max_keys: int = 100_000) -> None:
        self.rate = rate
        self.burst = float(max(burst, 1))
        self.max_keys = max_keys
        self._now = now
        #: key -> (tokens, when); the least recently touched first.
        self._buckets: dict[str, tuple[float, float]] = {}

    def _tokens(self, key: str, now: float) -> float:
        entry = self._buckets.get(key)
        if entry is None:
            return self.burst
        return min(self.burst, entry[0] + (now - entry[1]) * self.rate)

    def wait(self, key: str) -> float:
        """Seconds before *key* has a token; 0 if it has one now."""
        tokens = self._tokens(key, self._now())
        return 0.0 if tokens >= 1.0 else (1.0 - tokens) / self.rate

    def take(self, key: str) -> None:
        """Spend one of *key*'s tokens (call :meth:`wait` first)."""
        now = self._now()
        tokens = self._tokens(key, now) - 1.0
        self._buckets.pop(key, None)
        self._buckets[key] = (tokens, now)
        if len(self._buckets) > self.max_keys:
            for old in list(self._buckets)[: len(self._buckets) - self.max_keys]:
                del self._buckets[old]
