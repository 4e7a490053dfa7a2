"""``--metrics``: the server's figures in Prometheus text format at ``/metrics``.

Exposition is ``prometheus_client``'s: its Twisted resource
(``prometheus_client.twisted.MetricsResource``) on a private registry. Nothing
is counted through the library on the hot path. The hub, the connection
factory, the store, the accounts and the bridge keep plain integers
(:mod:`chatserv.stats`), added to once per message, batch or event rather
than per delivery; :class:`ServerCollector` reads them when ``/metrics`` is
scraped. That read runs on the reactor thread (the resource serves from the
reactor's thread pool), so it never races the code that counts.

docs/OPERATIONS.md lists the families and what to alert on.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort
from twisted.internet.threads import blockingCallFromThread
from twisted.python.threadable import isInIOThread
from twisted.web.resource import Resource
from twisted.web.server import Site

from . import __version__
from .hashing import HIGH, LOW
from .logs import Logger
from .stats import Histogram

log = Logger()


def _histogram(name: str, doc: str, hist: Histogram) -> HistogramMetricFamily:
    return HistogramMetricFamily(name, doc, buckets=hist.cumulative(), sum_value=hist.sum)


def _counter(name: str, doc: str, label: str, counts: dict[str, Any]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=[label])
    for key, value in sorted(counts.items()):
        family.add_metric([key], value)
    return family


class ServerCollector(Collector):
    """Reads the running server's counts into metric families, on the reactor thread."""

    def __init__(self, reactor: Any, server: Any, bridge: Any = None) -> None:
        self.reactor = reactor
        self.server = server
        self.bridge = bridge

    def collect(self) -> Iterable[Metric]:
        if isInIOThread():
            return self.families()
        return blockingCallFromThread(self.reactor, self.families)  # type: ignore[no-any-return]

    def families(self) -> list[Metric]:
        return list(self._families())

    def _families(self) -> Iterator[Metric]:
        factory, hub = self.server.factory, self.server.hub
        conn = factory.stats
        info = GaugeMetricFamily("chatserv_info", "chatserv's version.", labels=["version"])
        info.add_metric([__version__], 1)
        yield info
        yield GaugeMetricFamily(
            "chatserv_connections_open", "Client connections open now.", value=len(factory.connections)
        )
        yield CounterMetricFamily(
            "chatserv_connections_accepted", "Client connections accepted.", value=conn.accepted
        )
        yield CounterMetricFamily(
            "chatserv_connections_refused",
            "Client connections refused: --max-connections or --max-per-address reached.",
            value=conn.refused,
        )
        dialects = {"json": 0, "plain": 0}
        for protocol in factory.connections:
            if protocol.session is not None:
                dialects["plain" if protocol.plain else "json"] += 1
        dialects["bridge"] = max(0, len(hub.sessions) - dialects["json"] - dialects["plain"])
        sessions = GaugeMetricFamily(
            "chatserv_sessions", "Logged-in sessions, by dialect.", labels=["dialect"]
        )
        for dialect, n in dialects.items():
            sessions.add_metric([dialect], n)
        yield sessions
        yield CounterMetricFamily("chatserv_logins", "Sessions started.", value=hub.stats.logins)
        yield CounterMetricFamily("chatserv_logouts", "Sessions ended.", value=hub.stats.logouts)
        yield _counter(
            "chatserv_messages_received", "Chat messages accepted, by kind.", "kind",
            {"room": hub.stats.received_room, "private": hub.stats.received_private},
        )
        yield _counter(
            "chatserv_deliveries",
            "Events handed to recipients (one per recipient), by kind.",
            "kind",
            {
                "room": hub.stats.delivered_room,
                "private": hub.stats.delivered_private,
                "presence": hub.stats.delivered_presence,
                "typing": hub.stats.delivered_typing,
            },
        )
        yield CounterMetricFamily(
            "chatserv_slow_consumers_dropped",
            "Connections dropped for not reading their output (--max-output).",
            value=conn.slow_dropped,
        )
        yield CounterMetricFamily(
            "chatserv_rate_limited_lines", "Lines refused by the rate limit.", value=conn.rate_limited
        )
        yield _counter("chatserv_errors", "Error frames sent to clients, by code.", "code", conn.errors)
        store = factory.history
        if store is not None:
            latency, sizes = store.commit_stats
            yield _histogram(
                "chatserv_storage_commit_seconds", "Time to commit one batch of messages.", latency
            )
            yield _histogram("chatserv_storage_batch_messages", "Messages per committed batch.", sizes)
            yield GaugeMetricFamily(
                "chatserv_storage_backlog_messages",
                "Messages accepted and not yet committed.",
                value=store.backlog,
            )
            yield GaugeMetricFamily(
                "chatserv_storage_backlog_bytes",
                "What the uncommitted messages weigh against the storage backlog bound.",
                value=store.backlog_bytes,
            )
            yield GaugeMetricFamily(
                "chatserv_storage_backlog_limit_bytes",
                "The storage backlog bound: past it, messages are refused with server_busy.",
                value=store.max_backlog,
            )
            yield CounterMetricFamily(
                "chatserv_storage_committed_messages", "Messages committed.", value=store.stored
            )
        accounts = factory.accounts
        if accounts is not None:
            hashes = accounts.hashes
            queue = GaugeMetricFamily(
                "chatserv_accounts_hash_queue",
                "Password hashes waiting for a hashing thread: logins first, then registrations.",
                labels=["priority"],
            )
            queue.add_metric(["login"], hashes.waiting_at(HIGH))
            queue.add_metric(["register"], hashes.waiting_at(LOW))
            yield queue
            yield GaugeMetricFamily(
                "chatserv_accounts_hashing", "Password hashes running now.", value=hashes.running
            )
        bridge = self.bridge
        if bridge is not None:
            yield GaugeMetricFamily(
                "chatserv_bridge_queue_lines", "Chat lines waiting for Telegram.", value=bridge.queue_depth()
            )
            yield _counter(
                "chatserv_telegram_api_calls",
                "Telegram sendMessage calls, by outcome (ok, error, retry_after).",
                "outcome",
                {"ok": 0, "error": 0, "retry_after": 0, **bridge.api_calls},
            )
            yield CounterMetricFamily(
                "chatserv_telegram_flood_wait_seconds",
                "Seconds Telegram's flood control (429) asked the bridge to wait.",
                value=bridge.flood_wait_seconds,
            )


class _QuietSite(Site):
    """A scrape every few seconds is not worth a log line."""

    noisy = False

    def log(self, request: Any) -> None:
        pass


def registry_for(reactor: Any, server: Any, bridge: Any = None) -> CollectorRegistry:
    """A registry with the server's families and the process's (CPU, memory, open files)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ServerCollector(reactor, server, bridge))
    ProcessCollector(registry=registry)
    return registry


class MetricsService(Service):
    """Serves ``/metrics`` on *description* (a strports string) while running.

    ``listening`` fires with the bound port, which is how tests learn it.
    """

    name = "metrics"  # type: ignore[assignment]

    def __init__(self, description: str, reactor: Any, server: Any, bridge: Any = None) -> None:
        self.description = description
        self.reactor = reactor
        self.registry = registry_for(reactor, server, bridge)
        self.port: IListeningPort | None = None
        self.listening: Deferred[IListeningPort] = Deferred()

    def startService(self) -> None:
        # Imported here: the module picks the reactor up when imported, which
        # must happen after twistd has installed the one it runs.
        from prometheus_client.twisted import MetricsResource

        from .service import cannot_listen

        super().startService()
        root = Resource()
        root.putChild(b"metrics", MetricsResource(registry=self.registry))
        failures: list[Any] = []
        d = serverFromString(self.reactor, self.description).listen(_QuietSite(root))
        d.addCallbacks(self._listening, failures.append)
        if failures:
            cannot_listen(self.description, failures[0].value, doing="serve metrics on")

    def _listening(self, port: IListeningPort) -> None:
        self.port = port
        log.info("metrics at http://{address.host}:{address.port}/metrics", address=port.getHost())
        self.listening.callback(port)

    def stopService(self) -> Deferred[Any] | None:
        super().stopService()
        port, self.port = self.port, None
        return port.stopListening() if port is not None else None  # type: ignore[return-value]
