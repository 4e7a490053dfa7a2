"""Plain counters the server keeps for its metrics, with no dependency.

The hot path only adds to integers owned by the component that counts (the
hub, the connection factory, the store); ``chatserv.metrics`` turns them into
Prometheus families when ``/metrics`` is scraped. Nothing here is locked:
every count is written and read on the reactor thread.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from dataclasses import dataclass, field


class Histogram:
    """Counts of observations per bucket (upper bounds, inclusive) and their sum."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def cumulative(self) -> list[tuple[str, int]]:
        """``(le, count)`` pairs as Prometheus wants them, ending with ``+Inf``."""
        out: list[tuple[str, int]] = []
        total = 0
        for bound, count in zip((*map(repr, map(float, self.bounds)), "+Inf"), self.counts, strict=True):
            total += count
            out.append((bound, total))
        return out


@dataclass(slots=True)
class HubStats:
    """What the hub counts: sessions, messages in, and deliveries out.

    Plain slotted integers, not a Counter: an attribute add costs a quarter
    of a Counter's on the path every message takes.
    """

    logins: int = 0
    logouts: int = 0
    #: Messages accepted.
    received_room: int = 0
    received_private: int = 0
    #: Events handed to participants, added once per event by its number of recipients.
    delivered_room: int = 0
    delivered_private: int = 0
    delivered_presence: int = 0
    delivered_typing: int = 0


@dataclass
class ConnectionStats:
    """What the connections count (kept by their factory)."""

    accepted: int = 0
    refused: int = 0
    slow_dropped: int = 0
    rate_limited: int = 0
    #: Error frames sent, by code.
    errors: Counter[str] = field(default_factory=Counter)
