"""The cluster as a service of the application: built from the options,
joined when the application starts, left cleanly when it stops."""

from __future__ import annotations

from typing import Any

from twisted.application.service import Service

from ..bus.redis import RedisBus
from ..storage import Storage
from .cluster import RedisCluster
from .ids import BlockIds


def redis_cluster(url: str, name: str, db: str, store: Storage, reactor: Any) -> RedisCluster:
    """A node of the cluster *name* over the Redis at *url*, whose stream
    is *store*'s (the database *db*). Blocking: start-up only (it reserves
    the first block of message ids and reads the stream's position)."""
    ids = BlockIds(db, reactor)
    return RedisCluster(
        RedisBus(url, reactor), reactor, store.events_after, store.position_now(), ids, name=name
    )


class ClusterService(Service):
    name = "cluster"  # type: ignore[assignment]

    def __init__(self, cluster: RedisCluster) -> None:
        self.cluster = cluster

    def startService(self) -> None:
        super().startService()
        self.cluster.start()

    def stopService(self) -> Any:
        super().stopService()
        ids = self.cluster.ids

        def closed(result: object) -> object:
            if isinstance(ids, BlockIds):
                ids.close()
            return result

        return self.cluster.stop().addBoth(closed)
