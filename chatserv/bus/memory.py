"""An in-memory :class:`chatserv.bus.Bus` for tests: one :class:`MemoryRedis`
shared by several :class:`MemoryBus` clients, on a (fake) clock.

Its pub/sub is as unreliable as a test asks: each notice to each subscriber
may be dropped, duplicated or delayed (``drop``, ``duplicate``, ``delay``,
decided by a seeded :class:`random.Random`), and a client can be cut off
and reconnected (:meth:`MemoryBus.disconnect`, :meth:`MemoryBus.connect`).
Key operations are immediate and exact, as Redis's are.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from collections.abc import Set as AbstractSet
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime

from . import BusUnavailable


class MemoryRedis:
    """The shared state of every :class:`MemoryBus`: keys and subscribers."""

    def __init__(
        self,
        clock: IReactorTime,
        rng: random.Random | None = None,
        drop: float = 0.0,
        duplicate: float = 0.0,
        delay: float = 0.0,
    ) -> None:
        self.clock = clock
        self.rng = rng if rng is not None else random.Random(0)
        #: Chance that a notice to one subscriber is lost, or sent twice;
        #: and the longest random delay of one (seconds).
        self.drop, self.duplicate, self.delay = drop, duplicate, delay
        self.data: dict[str, Any] = {}
        self.expiry: dict[str, float] = {}
        self.subscribers: list[MemoryBus] = []
        self.published = 0

    def _live(self, key: str) -> Any:
        due = self.expiry.get(key)
        if due is not None and due <= self.clock.seconds():
            self.data.pop(key, None)
            self.expiry.pop(key, None)
        return self.data.get(key)

    def publish(self, channel: str, data: str) -> int:
        self.published += 1
        for bus in list(self.subscribers):
            if bus.channel != channel:
                continue
            copies = 0 if self.rng.random() < self.drop else 1
            if copies and self.rng.random() < self.duplicate:
                copies = 2
            for _ in range(copies):
                wait = self.rng.random() * self.delay if self.delay else 0.0
                self.clock.callLater(wait, bus._hear, data, bus.generation)
        return len(self.subscribers)


class MemoryBus:
    """One node's client of a :class:`MemoryRedis`."""

    def __init__(self, redis: MemoryRedis) -> None:
        self.redis = redis
        self.ready = False
        self.channel = ""
        #: Bumped at each disconnect: notices in flight to an older connection are lost.
        self.generation = 0
        self._on_message: Callable[[str], None] = lambda data: None
        self._on_ready: Callable[[bool], None] = lambda ready: None

    def start(
        self, channel: str, on_message: Callable[[str], None], on_ready: Callable[[bool], None]
    ) -> None:
        self.channel, self._on_message, self._on_ready = channel, on_message, on_ready
        self.connect()

    def connect(self) -> None:
        if not self.ready:
            self.ready = True
            self.redis.subscribers.append(self)
            self._on_ready(True)

    def disconnect(self) -> None:
        if self.ready:
            self.ready = False
            self.generation += 1
            self.redis.subscribers.remove(self)
            self._on_ready(False)

    def stop(self) -> None:
        self.disconnect()

    def _hear(self, data: str, generation: int) -> None:
        if self.ready and generation == self.generation:
            self._on_message(data)

    def _do(self, fn: Callable[[], Any]) -> Deferred[Any]:
        if not self.ready:
            return fail(BusUnavailable("memory bus disconnected"))
        return succeed(fn())

    # -- commands -------------------------------------------------------------------

    def publish(self, channel: str, data: str, *, now: bool = False) -> Deferred[Any]:
        return self._do(lambda: self.redis.publish(channel, data))

    def set(self, key: str, value: str, *, px: int | None = None, nx: bool = False) -> Deferred[bool]:
        def run() -> bool:
            if nx and self.redis._live(key) is not None:
                return False
            self.redis.data[key] = value
            if px is not None:
                self.redis.expiry[key] = self.redis.clock.seconds() + px / 1000
            else:
                self.redis.expiry.pop(key, None)
            return True

        return self._do(run)

    def get(self, key: str) -> Deferred[Any]:
        return self._do(lambda: self.redis._live(key))

    def pexpire(self, key: str, ms: int) -> Deferred[bool]:
        def run() -> bool:
            if self.redis._live(key) is None:
                return False
            self.redis.expiry[key] = self.redis.clock.seconds() + ms / 1000
            return True

        return self._do(run)

    def delete(self, *keys: str) -> Deferred[Any]:
        def run() -> int:
            gone = 0
            for key in keys:
                if self.redis._live(key) is not None:
                    gone += 1
                self.redis.data.pop(key, None)
                self.redis.expiry.pop(key, None)
            return gone

        return self._do(run)

    def delete_if(self, key: str, value: str) -> Deferred[bool]:
        def run() -> bool:
            if self.redis._live(key) == value:
                del self.redis.data[key]
                self.redis.expiry.pop(key, None)
                return True
            return False

        return self._do(run)

    def counter_add(self, key: str, delta: int, px: int | None = None) -> Deferred[int]:
        def run() -> int:
            n = int(self.redis._live(key) or 0) + delta
            if n <= 0:
                self.redis.data.pop(key, None)
                self.redis.expiry.pop(key, None)
                return n
            self.redis.data[key] = str(n)
            if px is not None:
                self.redis.expiry[key] = self.redis.clock.seconds() + px / 1000
            return n

        return self._do(run)

    def counter_read(self, key: str) -> Deferred[tuple[int, int]]:
        def run() -> tuple[int, int]:
            value = self.redis._live(key)
            if value is None:
                return 0, -2
            due = self.redis.expiry.get(key)
            left = -1 if due is None else int((due - self.redis.clock.seconds()) * 1000)
            return int(value), left

        return self._do(run)

    def exists(self, key: str) -> Deferred[bool]:
        return self._do(lambda: self.redis._live(key) is not None)

    def _container(self, key: str, kind: type) -> Any:
        found = self.redis._live(key)
        if found is None:
            found = self.redis.data[key] = kind()
        return found

    def hset(self, key: str, mapping: dict[str, str]) -> Deferred[Any]:
        return self._do(lambda: self._container(key, dict).update(mapping))

    def hdel(self, key: str, fields: Iterable[str]) -> Deferred[Any]:
        def run() -> None:
            found = self.redis._live(key)
            if found is not None:
                for f in fields:
                    found.pop(f, None)
                if not found:
                    del self.redis.data[key]

        return self._do(run)

    def replace_hash(self, key: str, mapping: dict[str, str]) -> Deferred[Any]:
        def run() -> None:
            self.redis.data.pop(key, None)
            self.redis.expiry.pop(key, None)
            if mapping:
                self.redis.data[key] = dict(mapping)

        return self._do(run)

    def hgetall(self, key: str) -> Deferred[dict[str, str]]:
        return self._do(lambda: dict(self.redis._live(key) or {}))

    def sadd(self, key: str, members: Iterable[str]) -> Deferred[Any]:
        return self._do(lambda: self._container(key, set).update(members))

    def srem(self, key: str, members: Iterable[str]) -> Deferred[Any]:
        def run() -> None:
            found = self.redis._live(key)
            if found is not None:
                found.difference_update(members)
                if not found:
                    del self.redis.data[key]

        return self._do(run)

    def smembers(self, key: str) -> Deferred[AbstractSet[str]]:
        return self._do(lambda: set(self.redis._live(key) or ()))
