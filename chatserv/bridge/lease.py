"""Which node of a cluster runs the Telegram bridge: a leader lease in Redis.

Telegram lets one client poll a bot at a time (a second ``getUpdates`` ends
the first with 409 Conflict), so in a cluster exactly one node bridges. Every
node given ``--telegram-chat`` runs a :class:`Lease`; the one holding it is
the leader and runs the bridge, the others stand by and try to take it.

The lease is one Redis key, ``{cluster}:telegram:{bot id}:leader``, holding
``"{term}:{node}"`` with a time to live:

* **acquire** is ``SET key value NX PX ttl``, in a Lua script that also
  advances the **fencing term** ``…:term`` (never below *floor*, the highest
  term the shared database has seen, so a Redis that lost its data cannot
  hand out an old term again). Every state write of a leader carries its
  term, and the database refuses the writes of any term but the newest
  (:mod:`.pgstate`): a leader that lost the lease without noticing (a long
  pause, a partition) cannot move the offset or send the outbox.
* **renew** and **release** are compare-and-set scripts: only the holder of
  the current value extends or deletes the key.

Timing (defaults): the leader renews every 2 s a lease of 10 s, and counts
itself leader only until ``ttl - margin`` after the last renewal it *sent*
was confirmed, so it steps down before any other node can take the key.
Stand-by nodes try every 0.5 s. A leader that dies is replaced once its key
expires: at most ``ttl + retry`` (10.5 s) later, plus the bridge's start.
A leader that stops cleanly deletes the key: replaced within ``retry``.

Everything here takes time from an ``IReactorTime``, so the tests run it on
``MemoryReactorClock`` with :class:`MemoryLeaseStore`; :class:`RedisLeaseStore`
is the same contract on txredisapi.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall

from ..logs import Logger

log = Logger()


class LeaseStore(Protocol):
    """Where the lease lives. Each call is atomic on the store's side."""

    def acquire(self, key: str, node: str, ttl_ms: int, floor: int = 0) -> Deferred[int | None]:
        """Take *key* for *node* if nobody holds it: the new term (above
        *floor* and every earlier term of *key*), or None if it is held."""

    def renew(self, key: str, holder: str, ttl_ms: int) -> Deferred[bool]:
        """Extend *key* to *ttl_ms* from now if it still holds *holder*."""

    def release(self, key: str, holder: str) -> Deferred[bool]:
        """Delete *key* if it still holds *holder*."""


def holder_value(term: int, node: str) -> str:
    """What the lease key holds while *node* leads in *term*."""
    return f"{term}:{node}"


def lease_key(cluster_name: str, bot: str | int) -> str:
    """The lease key of one bot in one cluster (the term key is this + ``:term``)."""
    return f"{cluster_name}:telegram:{bot}:leader"


def term_key(key: str) -> str:
    return key.rsplit(":", 1)[0] + ":term"


# -- the Redis implementation ------------------------------------------------

# KEYS[1] lease, KEYS[2] term counter; ARGV node, ttl ms, floor.
_ACQUIRE = """
local term = tonumber(redis.call('GET', KEYS[2]) or '0') + 1
local floor = tonumber(ARGV[3])
if term <= floor then term = floor + 1 end
if not redis.call('SET', KEYS[1], term .. ':' .. ARGV[1], 'NX', 'PX', ARGV[2]) then
  return false
end
redis.call('SET', KEYS[2], term)
return term
"""
# KEYS[1] lease; ARGV holder, ttl ms.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class RedisLeaseStore:
    """:class:`LeaseStore` on a txredisapi connection (anything with ``eval``).

    Scripts go by ``EVAL`` every time: they are a few hundred bytes, sent
    once a second or two, and EVAL cannot fail the way EVALSHA does after
    Redis restarts with an empty script cache.
    """

    def __init__(self, redis: Any) -> None:
        self.redis = redis

    def acquire(self, key: str, node: str, ttl_ms: int, floor: int = 0) -> Deferred[int | None]:
        d = self.redis.eval(_ACQUIRE, [key, term_key(key)], [node, ttl_ms, floor])
        return d.addCallback(lambda term: int(term) if term is not None else None)  # type: ignore[no-any-return]

    def renew(self, key: str, holder: str, ttl_ms: int) -> Deferred[bool]:
        d = self.redis.eval(_RENEW, [key], [holder, ttl_ms])
        return d.addCallback(lambda n: bool(n))  # type: ignore[no-any-return]

    def release(self, key: str, holder: str) -> Deferred[bool]:
        d = self.redis.eval(_RELEASE, [key], [holder])
        return d.addCallback(lambda n: bool(n))  # type: ignore[no-any-return]


def connect_redis(url: str, reactor: Any = None) -> Any:
    """A txredisapi lazy connection to ``redis://host:port/db`` (reconnects by itself)."""
    from urllib.parse import urlsplit

    try:
        import txredisapi
    except ImportError as e:
        raise RuntimeError("the cluster needs txredisapi: pip install 'chatserv[cluster]'") from e
    parts = urlsplit(url)
    if parts.scheme != "redis":
        raise ValueError(f"not a redis:// URL: {url}")
    db = int(parts.path.strip("/") or 0)
    return txredisapi.lazyConnection(
        host=parts.hostname or "127.0.0.1",
        port=parts.port or 6379,
        dbid=db,
        password=parts.password,
        connectTimeout=5,
        replyTimeout=5,
    )


# -- the fake -------------------------------------------------------------------


class MemoryLeaseStore:
    """:class:`LeaseStore` in memory, on *clock*: keys expire like Redis's.

    ``down = True`` makes every call fail, like an unreachable Redis, and
    ``hang = True`` leaves every call unanswered; ``calls`` counts them.
    """

    def __init__(self, clock: Any) -> None:
        self.clock = clock
        self.keys: dict[str, tuple[str, float]] = {}
        self.terms: dict[str, int] = {}
        self.down = False
        self.hang = False
        self.calls = 0

    def _get(self, key: str) -> str | None:
        entry = self.keys.get(key)
        if entry is None:
            return None
        if entry[1] <= self.clock.seconds():
            del self.keys[key]
            return None
        return entry[0]

    def _call(self, result: Any) -> Deferred[Any]:
        self.calls += 1
        if self.hang:
            return Deferred()
        if self.down:
            return Deferred.fromCoroutine(_raise(ConnectionError("the fake Redis is down")))
        return succeed(result)

    def acquire(self, key: str, node: str, ttl_ms: int, floor: int = 0) -> Deferred[int | None]:
        if self.down or self.hang:
            return self._call(None)
        if self._get(key) is not None:
            return self._call(None)
        term = max(self.terms.get(key, 0), floor) + 1
        self.terms[key] = term
        self.keys[key] = (holder_value(term, node), self.clock.seconds() + ttl_ms / 1000)
        return self._call(term)

    def renew(self, key: str, holder: str, ttl_ms: int) -> Deferred[bool]:
        if self.down or self.hang:
            return self._call(False)
        if self._get(key) != holder:
            return self._call(False)
        self.keys[key] = (holder, self.clock.seconds() + ttl_ms / 1000)
        return self._call(True)

    def release(self, key: str, holder: str) -> Deferred[bool]:
        if self.down or self.hang:
            return self._call(False)
        if self._get(key) != holder:
            return self._call(False)
        del self.keys[key]
        return self._call(True)


async def _raise(error: Exception) -> Any:
    raise error


# -- the state machine ------------------------------------------------------------


@dataclass(frozen=True)
class LeaseTiming:
    #: Life of the key without renewal: how long a dead leader blocks takeover.
    ttl: float = 10.0
    #: How often the leader renews.
    renew_every: float = 2.0
    #: How often a stand-by node tries to take the lease.
    retry_every: float = 0.5
    #: The leader steps down this long before its key could expire, so two
    #: nodes never both believe they lead (covers clock rate drift and the
    #: renewal's own round trip).
    margin: float = 1.0
    #: After losing the lease to a 409 or a fencing refusal, wait this long
    #: before trying again, so two pollers do not take turns forever.
    cooldown: float = 10.0
    #: A call to the store not answered by then counts as failed (a Redis
    #: that is not answering must not hold the election up).
    call_timeout: float = 3.0


class Lease:
    """One node's part in the election of *key*.

    ``on_elected(term)`` is called when this node becomes leader, and
    ``on_lost(reason)`` when it stops being one (expiry, the key taken,
    :meth:`lose`, or :meth:`stop`). Both are plain calls, never overlapping:
    ``on_lost`` always follows its ``on_elected``.
    """

    def __init__(
        self,
        store: LeaseStore,
        key: str,
        clock: Any,
        on_elected: Callable[[int], None],
        on_lost: Callable[[str], None],
        node: str | None = None,
        timing: LeaseTiming = LeaseTiming(),
    ) -> None:
        self.store = store
        self.key = key
        self.clock = clock
        self.on_elected = on_elected
        self.on_lost = on_lost
        self.node = node or uuid.uuid4().hex[:12]
        self.timing = timing
        #: The current term while leader, else None.
        self.term: int | None = None
        #: The highest term this node knows the database has seen.
        self.floor = 0
        #: Until when this node may act as leader (clock seconds).
        self.deadline = 0.0
        self.running = False
        self._call: IDelayedCall | None = None
        self._expiry: IDelayedCall | None = None
        self._busy = False
        self._not_before = 0.0

    @property
    def leader(self) -> bool:
        return self.term is not None and self.clock.seconds() < self.deadline

    @property
    def holder(self) -> str | None:
        return holder_value(self.term, self.node) if self.term is not None else None

    def start(self) -> None:
        self.running = True
        self._schedule(0)

    def stop(self) -> Deferred[None]:
        """Stop taking part; a leader steps down and deletes its key, so
        another node takes over within ``retry_every``."""
        self.running = False
        self._cancel(self._call)
        holder = self.holder
        self._step_down("stopping")
        if holder is None:
            return succeed(None)
        d = self.store.release(self.key, holder)
        d.addErrback(lambda f: log.warn("could not release the Telegram lease: {e}", e=f.getErrorMessage()))
        return d.addCallback(lambda _: None)

    def lose(self, reason: str, floor: int = 0) -> None:
        """Leadership is lost for a reason found elsewhere: Telegram's 409
        Conflict, or the database refusing this term (*floor* is then the
        term it holds). The key is released; this node waits ``cooldown``
        before trying again."""
        self.floor = max(self.floor, floor)
        holder = self.holder
        if holder is None:
            return
        self._step_down(reason)
        self._not_before = self.clock.seconds() + self.timing.cooldown
        self.store.release(self.key, holder).addErrback(lambda _: None)
        self._reschedule(self.timing.cooldown)

    # -- internals ------------------------------------------------------------

    @staticmethod
    def _cancel(call: IDelayedCall | None) -> None:
        if call is not None and call.active():
            call.cancel()

    def _schedule(self, delay: float) -> None:
        if self.running:
            self._call = self.clock.callLater(delay, self._tick)

    def _reschedule(self, delay: float) -> None:
        self._cancel(self._call)
        self._schedule(delay)

    def _tick(self) -> None:
        self._call = None
        if not self.running:
            return
        if self._busy:
            # A call is still out (a slow Redis): never two at once.
            self._schedule(self.timing.retry_every)
            return
        if self.term is None:
            if self.clock.seconds() < self._not_before:
                self._schedule(self._not_before - self.clock.seconds())
                return
            self._attempt()
        else:
            self._renew()

    def _ttl_ms(self) -> int:
        return int(self.timing.ttl * 1000)

    def _attempt(self) -> None:
        self._busy = True
        sent = self.clock.seconds()
        d = self.store.acquire(self.key, self.node, self._ttl_ms(), self.floor)
        d.addTimeout(self.timing.call_timeout, self.clock)
        d.addCallbacks(lambda term: self._acquired(term, sent), self._failed)
        d.addBoth(self._done)

    def _acquired(self, term: int | None, sent: float) -> None:
        if term is None or not self.running:
            if term is not None:
                # Stopped meanwhile: give it straight back.
                self.store.release(self.key, holder_value(term, self.node)).addErrback(lambda _: None)
            return
        self.term = term
        self.floor = max(self.floor, term)
        self._extend(sent)
        log.info("this node now runs the Telegram bridge (term {term})", term=term)
        self.on_elected(term)

    def _renew(self) -> None:
        holder = self.holder
        assert holder is not None
        self._busy = True
        sent = self.clock.seconds()
        d = self.store.renew(self.key, holder, self._ttl_ms())
        d.addTimeout(self.timing.call_timeout, self.clock)
        d.addCallbacks(lambda ok: self._renewed(ok, holder, sent), self._failed)
        d.addBoth(self._done)

    def _renewed(self, ok: bool, holder: str, sent: float) -> None:
        if self.holder != holder:
            return  # lost meanwhile
        if ok:
            self._extend(sent)
        else:
            self._step_down("another node holds the Telegram lease")

    def _extend(self, sent: float) -> None:
        # From when the request left, not when the answer came: Redis set
        # the expiry somewhere in between.
        self.deadline = sent + self.timing.ttl - self.timing.margin
        self._cancel(self._expiry)
        self._expiry = self.clock.callLater(self.deadline - self.clock.seconds(), self._expired)

    def _expired(self) -> None:
        self._expiry = None
        if self.term is not None:
            self._step_down("the Telegram lease could not be renewed in time")

    def _failed(self, failure: Any) -> None:
        # Redis unreachable: a leader keeps leading until its deadline (the
        # expiry timer), a stand-by node keeps trying.
        log.debug("Telegram lease: {error}", error=failure.getErrorMessage())

    def _done(self, _: object) -> None:
        self._busy = False
        if self._call is None:
            self._schedule(self.timing.renew_every if self.term is not None else self.timing.retry_every)

    def _step_down(self, reason: str) -> None:
        self._cancel(self._expiry)
        self._expiry = None
        if self.term is None:
            return
        term, self.term = self.term, None
        self.deadline = 0.0
        log.info(
            "this node stops running the Telegram bridge (term {term}): {reason}", term=term, reason=reason
        )
        self.on_lost(reason)
