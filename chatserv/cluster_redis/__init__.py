"""A chat over several nodes, with Redis as the doorbell and PostgreSQL as
the truth (issue 9; docs/CLUSTER.md): :class:`RedisCluster` and its parts."""

from .cluster import RedisCluster
from .sequencer import Sequencer

__all__ = ["RedisCluster", "Sequencer"]
