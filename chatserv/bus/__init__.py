"""The bus between cluster nodes: publish/subscribe plus the few shared keys
the cluster needs, behind an interface of ours.

:class:`Bus` is all :mod:`chatserv.cluster_redis` may ask of Redis, so the
same cluster code runs on the real server (:class:`chatserv.bus.redis.RedisBus`,
txredisapi) and, in tests, on :class:`chatserv.bus.memory.MemoryBus`, which
can drop, duplicate and delay notices. The bus is a doorbell: what is
published may be lost (a reconnect, a full buffer), and the cluster never
relies on one notice arriving; what must last is in the database.

Every operation returns a Deferred; while the bus is not connected they fail
with :class:`BusUnavailable` at once rather than queueing, because the
cluster re-asserts its whole state when the bus is back (``on_ready(True)``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit


class BusUnavailable(Exception):
    """The bus is not connected; nothing was sent."""


class Bus(Protocol):
    """Pub/sub on one channel, and shared keys; see the module docstring."""

    #: Connected for commands and subscribed to the channel.
    ready: bool

    def start(
        self, channel: str, on_message: Callable[[str], None], on_ready: Callable[[bool], None]
    ) -> None:
        """Connect (and keep reconnecting, with back-off) and subscribe to
        *channel*: every message published on it, by any client including
        this one, is handed to *on_message*. *on_ready* is called with True
        each time the bus becomes usable (connected and subscribed: after a
        reconnect the subscriber has missed what was published meanwhile)
        and with False when it stops being so."""

    def stop(self) -> Any:
        """Disconnect for good; may return a Deferred."""

    def publish(self, channel: str, data: str, *, now: bool = False) -> Any:
        """Publish *data* on *channel*; *now*: hand it to the network at once
        rather than with the rest of the turn's output (what other nodes
        wait for, before this node's own long work)."""

    def set(self, key: str, value: str, *, px: int | None = None, nx: bool = False) -> Any:
        """Fires with True if set (False: *nx* and the key existed)."""

    def get(self, key: str) -> Any:
        """Fires with the value, or None."""

    def pexpire(self, key: str, ms: int) -> Any:
        """Fires with True if the key existed."""

    def delete(self, *keys: str) -> Any: ...

    def delete_if(self, key: str, value: str) -> Any:
        """Delete *key* only while it holds *value* (atomically); fires with True if deleted."""

    def exists(self, key: str) -> Any:
        """Fires with True if *key* exists."""

    def hset(self, key: str, mapping: dict[str, str]) -> Any: ...

    def hdel(self, key: str, fields: Iterable[str]) -> Any: ...

    def replace_hash(self, key: str, mapping: dict[str, str]) -> Any:
        """Make the hash *key* hold exactly *mapping*, atomically (nobody
        reads it half written)."""

    def hgetall(self, key: str) -> Any:
        """Fires with a dict (empty when the key does not exist)."""

    def sadd(self, key: str, members: Iterable[str]) -> Any: ...

    def srem(self, key: str, members: Iterable[str]) -> Any: ...

    def smembers(self, key: str) -> Any:
        """Fires with a set."""

    def counter_add(self, key: str, delta: int, px: int | None = None) -> Any:
        """Add *delta* to the counter *key* (missing: 0), atomically; with
        *px*, it then expires *px* ms from now, else its expiry stays; a
        counter that falls to 0 or below is deleted. Fires with the new value."""

    def counter_read(self, key: str) -> Any:
        """Fires with (value, ms left to live) of the counter *key*: (0, -2)
        when it does not exist, ms -1 when it has no expiry."""


def parse_url(url: str) -> tuple[str, int, int, str | None]:
    """``redis://[:password@]host[:port][/db]`` -> (host, port, db, password);
    ValueError with a sentence for anything else.

    Here, not in :mod:`.redis`: importing txredisapi installs the default
    reactor, and the options check the URL before the reactor is chosen
    (the Telegram bridge installs asyncio's when twistd is given no ``-r``)."""
    parts = urlsplit(url)
    if parts.scheme != "redis":
        raise ValueError(f"{url!r} is not a redis://host:port/db URL")
    if not parts.hostname:
        raise ValueError(f"{url!r} names no host")
    path = parts.path.strip("/")
    try:
        db = int(path) if path else 0
        port = parts.port or 6379
    except ValueError:
        raise ValueError(f"{url!r}: the port and the database must be numbers") from None
    password = unquote(parts.password) if parts.password else None
    return parts.hostname, port, db, password
