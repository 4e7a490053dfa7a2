"""The bus over Redis, with txredisapi (>= 1.6) on any reactor.

Two connections, each a :class:`twisted.application.internet.ClientService`
that reconnects with exponential back-off (0.2 s doubling to 5 s): one for
commands and publishing, one that only listens, since a subscribed Redis
connection may issue no other command. Each reconnect of the subscriber
subscribes again. The bus is *ready* while both are up and subscribed;
each change is reported to ``on_ready`` (see :class:`chatserv.bus.Bus`).

A Redis that stops answering is treated as lost (the connection is aborted
and made again) when a reply has been awaited while *nothing at all* arrived
on the connection for :data:`REPLY_TIMEOUT` seconds, counted in watchdog
ticks that ran on time: a node whose reactor is saturated (a login storm)
reads its replies late, but reads them, and must not drop a healthy
connection for it (txredisapi's own reply timeout did, and the node was then
taken for dead). The subscription has none (it is quiet between messages),
which is why the cluster checks that its own heartbeats come back through it
(see chatserv.cluster_redis).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from collections.abc import Set as AbstractSet
from typing import Any

import txredisapi
from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet.abstract import FileDescriptor
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import Factory
from twisted.internet.task import LoopingCall

from ..logs import Logger
from . import BusUnavailable, parse_url  # parse_url: kept there, see its docstring

log = Logger()

#: Seconds of silence while a reply is awaited before the connection is given up.
REPLY_TIMEOUT = 5.0
#: Seconds between the watchdog's looks; a look later than twice this means
#: the reactor was busy, and restarts the count.
WATCH_EVERY = 1.0

_REPLACE_HASH = """
redis.call('DEL', KEYS[1])
for i = 1, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
return 1
"""
_COUNTER_ADD = """
local n = redis.call('INCRBY', KEYS[1], ARGV[1])
if n <= 0 then redis.call('DEL', KEYS[1]) return n end
if ARGV[2] ~= '' then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return n
"""
_COUNTER_READ = """
local v = redis.call('GET', KEYS[1])
if not v then return {0, -2} end
return {tonumber(v), redis.call('PTTL', KEYS[1])}
"""
_DELETE_IF = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class _Factory(Factory):
    """What txredisapi's protocol expects of its factory, no more: the
    reconnecting is ClientService's."""

    isLazy = False

    def __init__(self, make: Callable[[], txredisapi.BaseRedisProtocol]) -> None:
        self.make = make

    def buildProtocol(self, addr: Any) -> txredisapi.BaseRedisProtocol:
        protocol = self.make()
        protocol.factory = self
        return protocol

    def stopTrying(self) -> None:
        pass  # a wrong password: ClientService retries, and the log says why

    def connectionError(self, why: str) -> None:
        log.error("redis: {why}", why=why)


class _Commands(txredisapi.RedisProtocol):
    on_lost: Callable[[], None] = staticmethod(lambda: None)
    #: How many reads the connection has had (the watchdog's sign of life).
    reads = 0

    def dataReceived(self, data: bytes, unpause: bool = False) -> None:
        self.reads += 1
        super().dataReceived(data, unpause)

    def connectionLost(self, why: Any) -> None:
        super().connectionLost(why)
        self.on_lost()


class _Subscriber(txredisapi.SubscriberProtocol):
    on_lost: Callable[[], None] = staticmethod(lambda: None)
    on_message: Callable[[str], None] = staticmethod(lambda data: None)

    def messageReceived(self, pattern: Any, channel: Any, message: Any) -> None:
        self.on_message(message)

    def connectionLost(self, why: Any) -> None:
        super().connectionLost(why)
        self.on_lost()


def _write_now(protocol: Any) -> None:
    """Hand what *protocol*'s transport holds to the kernel now.

    A transport only queues what it is given; the bytes leave at the
    reactor's next poll. A commit's notice is what the other nodes wait for,
    and the turn that publishes it goes on to a long fan-out of its own (a
    room of thousands), so it goes out at once: the other nodes then send to
    their members while this one sends to its own. Whatever the socket does
    not take stays queued and leaves at the next poll as usual; an error is
    left for that poll to report (the transport stays registered for
    writing). Reads the transport's buffer attributes, which are Twisted's
    own (``FileDescriptor``, unchanged since Twisted 8): a transport without
    them is left alone."""
    transport = getattr(protocol, "transport", None)
    if (
        isinstance(transport, FileDescriptor)
        and transport.connected
        and not transport.disconnecting
        and (
            getattr(transport, "_tempDataLen", 0)
            or len(getattr(transport, "dataBuffer", b"")) > getattr(transport, "offset", 0)
        )
    ):
        transport.doWrite()


def _unwrapped(protocol: Any) -> Any:
    """The protocol itself, not ClientService's proxy of it (which is what
    ``prepareConnection`` is given, and which our connectionLost never sees)."""
    inner = protocol.__dict__.get("_protocol")
    return inner if inner is not None else protocol


class RedisBus:
    """:class:`chatserv.bus.Bus` over one Redis server."""

    def __init__(self, url: str, reactor: Any) -> None:
        self.host, self.port, self.db, self._password = parse_url(url)
        self.reactor = reactor
        self.ready = False
        self._commands: _Commands | None = None
        self._subscriber: _Subscriber | None = None
        self._services: list[ClientService] = []
        self._on_ready: Callable[[bool], None] = lambda ready: None
        self._on_message: Callable[[str], None] = lambda data: None
        self._channel = ""
        self._stopped = False
        self._watchdog: LoopingCall | None = None
        self._watched_at: float | None = None
        self._reads_seen = -1
        self._silent = 0

    def __repr__(self) -> str:
        return f"<RedisBus {self.host}:{self.port}/{self.db}>"

    # -- connections ------------------------------------------------------------

    def start(
        self, channel: str, on_message: Callable[[str], None], on_ready: Callable[[bool], None]
    ) -> None:
        self._channel, self._on_message, self._on_ready = channel, on_message, on_ready
        endpoint = TCP4ClientEndpoint(self.reactor, self.host, self.port, timeout=5)
        policy = backoffPolicy(initialDelay=0.2, maxDelay=5.0, factor=2.0)

        def commands() -> _Commands:
            protocol = _Commands(
                replyTimeout=None, password=self._password, dbid=self.db, convertNumbers=False
            )
            protocol.on_lost = lambda: self._lost(protocol)
            return protocol

        def subscriber() -> _Subscriber:
            # No dbid: pub/sub ignores the database, and a SELECT would be one
            # more command to wait for before the subscription.
            protocol = _Subscriber(password=self._password, convertNumbers=False)
            protocol.on_lost = lambda: self._lost(protocol)
            protocol.on_message = self._on_message
            return protocol

        self._services = [
            ClientService(
                endpoint, _Factory(commands), retryPolicy=policy, clock=self.reactor,
                prepareConnection=self._commands_up,
            ),
            ClientService(
                endpoint, _Factory(subscriber), retryPolicy=policy, clock=self.reactor,
                prepareConnection=self._subscriber_up,
            ),
        ]
        for service in self._services:
            service.startService()
        self._watchdog = LoopingCall(self._watch)
        self._watchdog.clock = self.reactor
        self._watchdog.start(WATCH_EVERY, now=False)

    def _watch(self) -> None:
        """Abort the command connection when Redis has said nothing for
        REPLY_TIMEOUT while a reply is awaited; see the module docstring."""
        now = self.reactor.seconds()
        late = self._watched_at is not None and now - self._watched_at > 2 * WATCH_EVERY
        self._watched_at = now
        protocol = self._commands
        if protocol is None or late or not protocol.replyQueue.waiting or protocol.reads != self._reads_seen:
            self._reads_seen = protocol.reads if protocol is not None else -1
            self._silent = 0
            return
        self._silent += 1
        if self._silent * WATCH_EVERY >= REPLY_TIMEOUT and protocol.transport is not None:
            log.warn("redis {host}:{port}: no reply for {s:g} s; reconnecting", host=self.host,
                     port=self.port, s=REPLY_TIMEOUT)
            self._silent = 0
            protocol.transport.abortConnection()

    def _commands_up(self, protocol: Any) -> Deferred[Any]:
        protocol = _unwrapped(protocol)

        def up(_: object) -> None:
            self._commands = protocol
            self._check()

        return protocol.whenConnected().addCallback(up)  # type: ignore[no-any-return]

    def _subscriber_up(self, protocol: Any) -> Deferred[Any]:
        protocol = _unwrapped(protocol)

        def up(_: object) -> None:
            self._subscriber = protocol
            self._check()

        d = protocol.whenConnected().addCallback(lambda _: protocol.subscribe(self._channel))
        return d.addCallback(up)  # type: ignore[no-any-return]

    def _lost(self, protocol: Any) -> None:
        if protocol is self._commands:
            self._commands = None
        elif protocol is self._subscriber:
            self._subscriber = None
        else:
            return
        self._check()

    def _check(self) -> None:
        ready = self._commands is not None and self._subscriber is not None and not self._stopped
        if ready != self.ready:
            self.ready = ready
            log.info(
                "redis {host}:{port}: {state}", host=self.host, port=self.port,
                state="connected and subscribed" if ready else "connection lost; reconnecting",
            )
            self._on_ready(ready)

    def stop(self) -> Deferred[Any]:
        self._stopped = True
        if self._watchdog is not None and self._watchdog.running:
            self._watchdog.stop()
        self._check()
        from twisted.internet.defer import DeferredList

        return DeferredList([service.stopService() for service in self._services])

    def resubscribe(self) -> None:
        """Drop the subscriber connection (it reconnects and subscribes
        again): for a subscription that has gone quiet while up."""
        if self._subscriber is not None and self._subscriber.transport is not None:
            self._subscriber.transport.abortConnection()

    # -- commands -----------------------------------------------------------------

    def _send(self, *command: Any) -> Deferred[Any]:
        """A command whose answer nobody waits for."""
        return self._run("execute_command", *command)

    def _run(self, method: str, *args: Any, **kwargs: Any) -> Deferred[Any]:
        protocol = self._commands
        if protocol is None:
            return fail(BusUnavailable(f"not connected to redis {self.host}:{self.port}"))
        try:
            return getattr(protocol, method)(*args, **kwargs)  # type: ignore[no-any-return]
        except txredisapi.ConnectionError as e:
            return fail(BusUnavailable(str(e)))

    def publish(self, channel: str, data: str, *, now: bool = False) -> Deferred[Any]:
        d = self._send("PUBLISH", channel, data)
        if now:
            _write_now(self._commands)
        return d

    def set(self, key: str, value: str, *, px: int | None = None, nx: bool = False) -> Deferred[bool]:
        d = self._run("set", key, value, pexpire=px, only_if_not_exists=nx)
        return d.addCallback(lambda reply: reply is not None and str(reply) == "OK")

    def get(self, key: str) -> Deferred[Any]:
        return self._run("get", key)

    def pexpire(self, key: str, ms: int) -> Deferred[bool]:
        return self._run("execute_command", "PEXPIRE", key, ms).addCallback(lambda n: bool(int(n)))

    def delete(self, *keys: str) -> Deferred[Any]:
        if not keys:
            return succeed(0)
        return self._run("execute_command", "DEL", *keys)

    def delete_if(self, key: str, value: str) -> Deferred[bool]:
        return self._run("eval", _DELETE_IF, [key], [value]).addCallback(lambda n: bool(int(n)))

    def exists(self, key: str) -> Deferred[bool]:
        return self._run("execute_command", "EXISTS", key).addCallback(lambda n: bool(int(n)))

    def hset(self, key: str, mapping: dict[str, str]) -> Deferred[Any]:
        if not mapping:
            return succeed(0)
        flat = [item for pair in mapping.items() for item in pair]
        return self._send("HSET", key, *flat)

    def hdel(self, key: str, fields: Iterable[str]) -> Deferred[Any]:
        fields = list(fields)
        if not fields:
            return succeed(0)
        return self._send("HDEL", key, *fields)

    def replace_hash(self, key: str, mapping: dict[str, str]) -> Deferred[Any]:
        flat = [item for pair in mapping.items() for item in pair]
        return self._run("eval", _REPLACE_HASH, [key], flat)

    def hgetall(self, key: str) -> Deferred[dict[str, str]]:
        return self._run("hgetall", key).addCallback(lambda reply: dict(reply or {}))

    def sadd(self, key: str, members: Iterable[str]) -> Deferred[Any]:
        members = list(members)
        if not members:
            return succeed(0)
        return self._send("SADD", key, *members)

    def srem(self, key: str, members: Iterable[str]) -> Deferred[Any]:
        members = list(members)
        if not members:
            return succeed(0)
        return self._send("SREM", key, *members)

    def smembers(self, key: str) -> Deferred[AbstractSet[str]]:
        return self._run("smembers", key).addCallback(lambda reply: set(reply or ()))

    def counter_add(self, key: str, delta: int, px: int | None = None) -> Deferred[int]:
        d = self._run("eval", _COUNTER_ADD, [key], [delta, "" if px is None else px])
        return d.addCallback(int)

    def counter_read(self, key: str) -> Deferred[tuple[int, int]]:
        d = self._run("eval", _COUNTER_READ, [key], [])
        return d.addCallback(lambda reply: (int(reply[0]), int(reply[1])))
