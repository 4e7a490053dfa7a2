"""A real chat service on a database, built the way twistd builds it."""

from __future__ import annotations

from typing import Any

from chatserv.protocol import Limits
from chatserv.service import ChatServer, ServerConfig, makeService
from tests.support import LineClient, connect


class DurableServer:
    """``makeService`` on *db_url*, listening on a loopback port; can be
    stopped and started again on the same database, as an operator would."""

    def __init__(
        self,
        db_url: str,
        history: int = 50,
        require_accounts: bool = False,
        listen: str = "tcp:0:interface=127.0.0.1",
        history_memory: int | None = None,
        **limits: Any,
    ) -> None:
        limits.setdefault("rate_limit", 0)
        self.config = ServerConfig(
            listen=[listen],
            history=history,
            limits=Limits(**limits),
            db=db_url,
            require_accounts=require_accounts,
        )
        if history_memory is not None:
            self.config.history_memory = history_memory
        self.app: Any = None
        self.server: ChatServer | None = None
        self.clients: list[LineClient] = []

    async def start(self) -> DurableServer:
        from twisted.internet import reactor

        self.app = makeService(self.config, reactor)
        self.server = self.app.getServiceNamed("chat-server")
        self.app.startService()
        await self.server.listening
        return self

    @property
    def store(self) -> Any:
        assert self.server is not None
        return self.server.factory.history

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.ports[0].getHost().port

    async def client(self) -> LineClient:
        assert self.server is not None
        client = await connect(self.server)
        self.clients.append(client)
        return client

    async def stop(self) -> None:
        for client in self.clients:
            client.close()
        for client in self.clients:
            if client.connected:
                await client.closed
        self.clients = []
        if self.app is not None:
            app, self.app = self.app, None
            await app.stopService()
