"""``--health``: ``GET /healthz`` over HTTP on loopback, against a real
PostgreSQL whose schema goes away under a running server, and against the
cluster seam's ``health_problems``."""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred

from chatserv.health import HealthService, NodeHealth
from chatserv.local import LocalCluster
from chatserv.service import ServerConfig, makeService
from tests.storage.conftest import PG_ADMIN_DSN, fresh_schema

LOOPBACK = "tcp:0:interface=127.0.0.1"


async def get(port: int, path: str = "/healthz") -> tuple[int, str]:
    from twisted.internet import reactor
    from twisted.web.client import Agent, readBody

    response = await Agent(reactor).request(b"GET", f"http://127.0.0.1:{port}{path}".encode())
    return response.code, (await readBody(response)).decode()


async def serve(check) -> tuple[HealthService, int]:
    from twisted.internet import reactor

    service = HealthService(LOOPBACK, reactor, check)
    service.startService()
    port = await service.listening
    return service, port.getHost().port


class Cluster(LocalCluster):
    """The local cluster with problems to report, as the Redis one would."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__()
        self.problems = problems

    def health_problems(self) -> list[str]:
        return list(self.problems)


@pytest_twisted.ensureDeferred
async def test_cluster_problems_make_it_503_and_their_end_200():
    from twisted.internet import reactor

    cluster = Cluster(["not connected to Redis", "not subscribed"])
    service, port = await serve(NodeHealth(reactor, None, cluster).problems)
    try:
        assert await get(port) == (503, "cluster: not connected to Redis\ncluster: not subscribed\n")
        cluster.problems = []
        assert await get(port) == (200, "ok\n")
        assert (await get(port, "/healthz/more"))[0] == 404
        assert (await get(port, "/other"))[0] == 404
    finally:
        await service.stopService()


class SilentStore:
    """A database that never answers (a wedged connection)."""

    def __init__(self) -> None:
        self.pings = 0

    def ping(self) -> Deferred[None]:
        self.pings += 1
        return Deferred()


@pytest_twisted.ensureDeferred
async def test_a_database_that_does_not_answer_is_a_problem_after_the_timeout():
    from twisted.internet import reactor

    store = SilentStore()
    health = NodeHealth(reactor, store, LocalCluster(), timeout=0.2)
    service, port = await serve(health.problems)
    try:
        from twisted.internet.defer import gatherResults

        # Two probes at once share one query.
        answers = await gatherResults([Deferred.fromCoroutine(get(port)) for _ in range(2)])
        assert answers == [(503, "database: no answer in 0.2 s\n")] * 2
        assert store.pings == 1
    finally:
        await service.stopService()


@pytest.fixture
def own_schema():
    """A PostgreSQL DSN on a fresh schema (the test may drop it), and its name."""
    with fresh_schema("chatserv_test") as pair:
        yield pair


@pytest_twisted.ensureDeferred
async def test_health_is_503_once_the_database_schema_is_gone(own_schema):
    import psycopg
    from twisted.internet import reactor

    url, schema = own_schema
    app = makeService(ServerConfig(listen=[LOOPBACK], db=url, health=LOOPBACK), reactor)
    app.startService()
    try:
        port = (await app.getServiceNamed("health").listening).getHost().port
        assert await get(port) == (200, "ok\n")
        with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")
        code, body = await get(port)
        assert code == 503
        assert body.startswith("database: ") and "messages" in body and body.count("\n") == 1
    finally:
        await app.stopService()
