"""``--metrics``: a real server on a database, real clients, and ``/metrics``
scraped over HTTP while they talk."""

from __future__ import annotations

import pytest_twisted
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

from chatserv.metrics import MetricsService
from chatserv.protocol import Limits
from chatserv.service import ServerConfig, makeService
from tests.support import LineClient, sleep


async def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``/metrics`` as {(sample name, labels): value}, fetched over HTTP."""
    from twisted.internet import reactor
    from twisted.web.client import Agent, readBody

    response = await Agent(reactor).request(b"GET", f"http://127.0.0.1:{port}/metrics".encode())
    assert response.code == 200
    body = (await readBody(response)).decode()
    samples = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


@pytest_twisted.async_yield_fixture
async def served(tmp_path):
    """``makeService`` with a SQLite database and ``--metrics`` on loopback."""
    from twisted.internet import reactor

    config = ServerConfig(
        listen=["tcp:0:interface=127.0.0.1"],
        limits=Limits(rate_limit=1.0, rate_burst=5),
        db=str(tmp_path / "chat.sqlite3"),
        metrics="tcp:0:interface=127.0.0.1",
    )
    app = makeService(config, reactor)
    app.startService()
    server = app.getServiceNamed("chat-server")
    metrics: MetricsService = app.getServiceNamed("metrics")
    await server.listening
    port = (await metrics.listening).getHost().port
    clients: list[LineClient] = []

    async def client(name: str | None = None) -> LineClient:
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", server.ports[0].getHost().port)
        c = await connectProtocol(endpoint, LineClient())
        clients.append(c)
        if name is not None:
            await c.login(name)
        return c

    yield server, port, client
    for c in clients:
        c.close()
    await app.stopService()


@pytest_twisted.ensureDeferred
async def test_scrape_during_traffic(served):
    server, port, client = served
    before = await scrape(port)
    assert value(before, "chatserv_connections_open") == 0
    assert value(before, "chatserv_storage_commit_seconds_count") == 0

    ana = await client("Ana")
    bob = await client("Bob")
    pepe = await client()
    pepe.send_raw(b"Pepe: hola\n")
    await ana.expect("broadcast", msg="hola")
    ana.send(cmd="broadcast", msg="uno")
    ana.send(cmd="message", to="Bob", msg="privado")
    ana.send(cmd="nope")
    await bob.expect("private", msg="privado")
    await ana.expect("error", code="unknown_cmd")
    for i in range(8):  # with the login, more than the burst of 5 (refilling at 1 line/s)
        bob.send(cmd="ping", data=i)
    await bob.expect("error", code="rate_limited")

    during = await scrape(port)
    assert value(during, "chatserv_connections_open") == 3
    assert value(during, "chatserv_sessions", dialect="json") == 2
    assert value(during, "chatserv_sessions", dialect="plain") == 1
    assert value(during, "chatserv_logins_total") == 3
    assert value(during, "chatserv_messages_received_total", kind="room") == 2
    assert value(during, "chatserv_messages_received_total", kind="private") == 1
    # Two room messages to three members; the private one to Bob and Ana's copy.
    assert value(during, "chatserv_deliveries_total", kind="room") == 6
    assert value(during, "chatserv_deliveries_total", kind="private") == 2
    assert value(during, "chatserv_errors_total", code="unknown_cmd") == 1
    assert value(during, "chatserv_errors_total", code="rate_limited") >= 1
    assert value(during, "chatserv_rate_limited_lines_total") >= 1
    assert value(during, "chatserv_storage_committed_messages_total") == 3
    assert value(during, "chatserv_storage_batch_messages_sum") == 3
    batches = value(during, "chatserv_storage_commit_seconds_count")
    assert 1 <= batches <= 3
    assert value(during, "chatserv_storage_batch_messages_count") == batches
    assert value(during, "chatserv_storage_commit_seconds_bucket", le="+Inf") == batches
    assert value(during, "chatserv_storage_backlog_messages") == 0
    assert value(during, "chatserv_storage_backlog_bytes") == 0
    assert value(during, "chatserv_storage_backlog_limit_bytes") == server.factory.history.max_backlog
    assert value(during, "chatserv_accounts_hashing") == 0
    assert value(during, "chatserv_accounts_hash_queue", priority="login") == 0
    assert value(during, "chatserv_accounts_hash_queue", priority="register") == 0
    assert value(during, "process_open_fds") > 0

    bob.close()
    await bob.closed
    await sleep(0.1)
    after = await scrape(port)
    assert value(after, "chatserv_connections_open") == 2
    assert value(after, "chatserv_logouts_total") == 1
