from __future__ import annotations

import pytest_twisted

from tests.support import LineClient, connect, start_server


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
