"""The Telegram bridge on a node of a cluster: it bridges only while it leads.

Every node given ``--telegram-chat`` runs a :class:`ClusteredBridge`. It takes
part in the election (:mod:`.lease`); the node that wins starts a
:class:`~.service.TelegramBridge` whose state is the shared PostgreSQL one
(:mod:`.pgstate`), fenced by the term it won; the others stand by with no
bridge at all: no hub session, no polling, no sending. So there is never a
second ``Telegram (TG)`` in the chat, and nothing to hand over but the state.

When the leader loses the lease (it stops, dies, cannot renew in time, gets a
409 Conflict from Telegram, or the database refuses its term) its bridge is
stopped; the node that takes over loads the offset, the id map and the queue
from the database, queues what the rooms said while nobody bridged them
(:meth:`~.service.TelegramBridge._missed_lines`), and polls from the saved offset.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, ensureDeferred, succeed

from ..hub import Hub
from ..logs import Logger
from ..storage import MessageStore
from .config import BridgeConfig
from .lease import Lease, LeaseStore, LeaseTiming, RedisLeaseStore, connect_redis, lease_key
from .pgstate import PostgresBackend
from .service import TelegramBridge
from .state import StateBackend

log = Logger()


class ClusteredBridge(Service):
    """The bridge service of one node of a cluster; see the module docstring.

    *lease_store* is injected by tests (a :class:`~.lease.MemoryLeaseStore`);
    by default it is Redis at ``config.cluster_url``.
    """

    name = "telegram-bridge"  # type: ignore[assignment]

    def __init__(
        self,
        config: BridgeConfig,
        hub: Hub,
        reactor: Any,
        store: MessageStore | None = None,
        lease_store: LeaseStore | None = None,
        timing: LeaseTiming | None = None,
        node: str | None = None,
        backend: Callable[[str, str, int], StateBackend] = PostgresBackend,
    ) -> None:
        assert config.cluster_url is not None and config.db_url is not None
        self.config = config
        self.hub = hub
        self.reactor = reactor
        self.store = store
        self.lease_store = lease_store
        self.timing = timing if timing is not None else LeaseTiming()
        self.node = node
        #: Makes the state backend of one term: ``(db url, bridge key, term)``.
        self.backend = backend
        self.redis: Any = None
        self.lease: Lease | None = None
        #: The bridge while this node leads, else None.
        self.active: TelegramBridge | None = None
        #: Fires when the last bridge this node ran has stopped.
        self._stopped: Deferred[None] = succeed(None)
        #: Terms this node has led, in order (tests and the log read them).
        self.terms: list[int] = []
        self._elected_waiters: list[Deferred[TelegramBridge]] = []
        # The names stay reserved on a stand-by node too.
        hub.reserve_suffix(config.marker)

    @property
    def state_key(self) -> str:
        return f"{self.config.cluster_name}:{self.config.bot_id}"

    # -- service ------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        if self.lease_store is None:
            assert self.config.cluster_url is not None
            # A connection of its own, not the cluster bus's: twistd stops the
            # node's services side by side (MultiService waits for none before
            # the next), so the bus may be closed by the time this service has
            # stopped its bridge and deletes the key, and a clean stop would
            # hand over after the key's expiry (10 s) instead of at once.
            self.redis = connect_redis(self.config.cluster_url, self.reactor)
            self.lease_store = RedisLeaseStore(self.redis)
        self.lease = Lease(
            self.lease_store,
            lease_key(self.config.cluster_name, self.config.bot_id),
            self.reactor,
            self._elected,
            self._lost,
            node=self.node,
            timing=self.timing,
        )
        log.info("Telegram bridge: standing by for the lease {key}", key=self.lease.key)
        self.lease.start()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return ensureDeferred(self._stop())

    async def _stop(self) -> None:
        # The bridge first (it finishes a send in flight and writes its
        # state), then the lease: deleting the key lets the next node in.
        bridge, self.active = self.active, None
        if bridge is not None:
            self._stopped = bridge.stopService()
        await self._stopped
        if self.lease is not None:
            await self.lease.stop()
        if self.redis is not None:
            redis, self.redis = self.redis, None
            try:
                await redis.disconnect()
            except Exception:
                pass

    # -- the lease's calls -------------------------------------------------------

    def _elected(self, term: int) -> None:
        # A bridge of an earlier term may still be stopping (finishing a
        # send): the new one starts after it, so the two never overlap.
        self.terms.append(term)
        d = self._stopped
        d.addCallback(lambda _: self._start_bridge(term))

    def _start_bridge(self, term: int) -> None:
        lease = self.lease
        if lease is None or lease.term != term or not self.running:
            return  # lost again, or stopped, meanwhile
        assert self.config.db_url is not None
        bridge = TelegramBridge(
            self.config,
            self.hub,
            self.reactor,
            self.store,
            backend=self.backend(self.config.db_url, self.state_key, term),
            on_lost=self._give_up,
            catch_up=True,
        )
        self.active = bridge
        bridge.startService()
        waiters, self._elected_waiters = self._elected_waiters, []
        for waiter in waiters:
            waiter.callback(bridge)

    def _give_up(self, reason: str, term: int) -> None:
        """The bridge found it must not lead (409, fenced, state unusable)."""
        if self.lease is not None:
            self.lease.lose(reason, floor=term)

    def _lost(self, reason: str) -> None:
        bridge, self.active = self.active, None
        if bridge is not None:
            self._stopped = bridge.stopService()

    # -- for tests and metrics -----------------------------------------------------

    def elected(self) -> Deferred[TelegramBridge]:
        """Fires with the bridge once this node runs one."""
        if self.active is not None:
            return succeed(self.active)
        d: Deferred[TelegramBridge] = Deferred()
        self._elected_waiters.append(d)
        return d

    def queue_depth(self) -> int:
        return self.active.queue_depth() if self.active is not None else 0

    @property
    def api_calls(self) -> Any:
        from collections import Counter

        return self.active.api_calls if self.active is not None else Counter()

    @property
    def flood_wait_seconds(self) -> float:
        return self.active.flood_wait_seconds if self.active is not None else 0.0


def build_bridge(
    config: BridgeConfig, hub: Hub, reactor: Any, store: MessageStore | None = None
) -> TelegramBridge | ClusteredBridge:
    """The bridge service *config* asks for: one node's, or a cluster node's."""
    if config.cluster_url is not None:
        return ClusteredBridge(config, hub, reactor, store)
    return TelegramBridge(config, hub, reactor, store)
