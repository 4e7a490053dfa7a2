from __future__ import annotations

import pytest_twisted

from tests.support import LineClient, TestServer, connect, start_server


@pytest_twisted.async_yield_fixture
async def service():
    """A factory of real services (``makeService`` on a temporary SQLite
    database, on loopback), each with its options; all stopped after the test."""
    started: list[TestServer] = []

    async def start(**options) -> TestServer:
        srv = await start_server(**options)
        started.append(srv)
        return srv

    yield start
    for srv in started:
        await srv.stop()


@pytest_twisted.async_yield_fixture
async def server():
    """A real chat server on a loopback port, rate limit off."""
    srv = await start_server()
    yield srv
    await srv.stopService()


@pytest_twisted.async_yield_fixture
async def clients(server):
    """A factory of connected clients, all closed after the test."""
    made: list[LineClient] = []

    async def make() -> LineClient:
        client = await connect(server)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()
    for client in made:
        if client.connected:
            await client.closed
