"""Composition: makeService builds every part and hands it in."""

from __future__ import annotations

import pytest_twisted

from chatserv.hashing import HashPool
from chatserv.protocol import Limits
from chatserv.service import ChatServer, Listener, ServerConfig, makeService


@pytest_twisted.ensureDeferred
async def test_every_part_is_built_in_make_service_and_stops_with_the_application(tmp_path):
    from twisted.internet import reactor

    config = ServerConfig(
        listen=["tcp:0:interface=127.0.0.1", "tcp:0:interface=127.0.0.1"],
        db=str(tmp_path / "chat.sqlite3"),
        limits=Limits(rate_limit=0),
    )
    app = makeService(config, reactor)
    services = list(app)
    hashing = next(s for s in services if isinstance(s, HashPool))
    server = next(s for s in services if isinstance(s, ChatServer))
    # One service per --listen, all on one factory; the accounts hash in the
    # application's pool, and the factory was handed its storage.
    listeners = [s for s in server if isinstance(s, Listener)]
    assert len(listeners) == 2 and {id(s.factory) for s in listeners} == {id(server.factory)}
    assert server.factory.accounts is not None and server.factory.accounts.hashes is hashing.queue
    assert server.factory.history is server.hub.store
    app.startService()
    try:
        ports = await server.listening
        assert len({p.getHost().port for p in ports}) == 2
        assert hashing.pool.started
    finally:
        await app.stopService()
    assert not hashing.pool.started and server.ports == []
