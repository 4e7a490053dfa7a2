"""The bridge built by ``makeService`` beside a server with durable storage:
after a full restart, replies and edits still name their original's id."""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted

from chatserv.protocol import Limits
from chatserv.service import ServerConfig, makeService
from tests.bridge.conftest import FAST
from tests.bridge.fakebot import GROUP, TOKEN, FakeBotAPI
from tests.bridge.test_faults import wait_delivered
from tests.support import connect

pytest.importorskip("chatserv.storage")

LUIS = FakeBotAPI.user(42, "Luis")


class App:
    def __init__(self, fake: FakeBotAPI, tmp_path: Any) -> None:
        from chatserv.bridge import BridgeConfig

        self.config = ServerConfig(
            listen=["tcp:0:interface=127.0.0.1"],
            limits=Limits(rate_limit=0),
            db=str(tmp_path / "chat.sqlite3"),
            telegram=BridgeConfig(
                chat_id=GROUP,
                token=TOKEN,
                api_url=fake.url,
                state_path=str(tmp_path / "bridge.sqlite3"),
                **FAST,
            ),
        )
        self.fake = fake
        self.app: Any = None
        self.clients: list[Any] = []

    async def start(self) -> App:
        from twisted.internet import reactor

        self.app = makeService(self.config, reactor)
        self.server = self.app.getServiceNamed("chat-server")
        self.bridge = self.app.getServiceNamed("telegram-bridge")
        self.app.startService()
        await self.server.listening
        await self.bridge.ready
        return self

    async def client(self, name: str) -> Any:
        client = await connect(self.server)
        self.clients.append(client)
        await client.login(name)
        return client

    async def stop(self) -> None:
        for client in self.clients:
            client.close()
        self.clients = []
        await self.app.stopService()


@pytest_twisted.ensureDeferred
async def test_full_restart_with_storage_keeps_ids(fakebot, tmp_path):
    app = await App(fakebot, tmp_path).start()
    try:
        ana = await app.client("Ana")
        ana.send(cmd="broadcast", msg="¿quién viene?")
        asked = await ana.expect("broadcast", msg="¿quién viene?")
        await wait_delivered(app, 1)
        bot_message = fakebot.sent[0].message
        said = fakebot.say(LUIS, "yo")
        luis_frame = await ana.expect("broadcast", msg="yo")
        await app.stop()

        await app.start()
        bea = await app.client("Bea")
        fakebot.say(LUIS, "y yo también", reply_to=bot_message)
        frame = await bea.expect("broadcast", **{"from": "Luis (TG)"})
        assert frame["reply_to"] == {"id": asked["id"], "from": "Ana", "msg": "¿quién viene?"}
        # An edit in Telegram corrects the stored message, found in the
        # database after the restart.
        fakebot.edit(said, "yo, seguro")
        frame = await bea.expect("edited", **{"from": "Luis (TG)"})
        assert frame["id"] == luis_frame["id"] and frame["msg"] == "yo, seguro"
        # The stored history keeps the reference too.
        await app.stop()
        await app.start()
        cid = await connect(app.server)
        app.clients.append(cid)
        history, _ = await cid.login("Cid")
        replies = [item for item in history["items"] if "reply_to" in item]
        assert replies and replies[0]["reply_to"]["id"] == asked["id"]
        corrected = [item for item in history["items"] if item["id"] == luis_frame["id"]]
        assert corrected[0]["msg"] == "yo, seguro" and "edited" in corrected[0]
    finally:
        await app.stop()


@pytest_twisted.ensureDeferred
async def test_updates_offered_again_are_stored_once(fakebot, tmp_path):
    """The bridge lost its offset (its state file is gone) and Telegram
    offers an update it relayed again: relayed with the same cid, the
    database recognises it and the chat keeps it once; the bridge maps the
    Telegram message to the stored one (a reply to it names that), and the
    batch does not wait for a commit that never comes."""
    from twisted.logger import LogLevel, formatEvent, globalLogPublisher

    warnings: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        if event.get("log_level") in (LogLevel.warn, LogLevel.error, LogLevel.critical):
            warnings.append(formatEvent(event))

    app = await App(fakebot, tmp_path).start()
    globalLogPublisher.addObserver(observe)
    try:
        ana = await app.client("Ana")
        hola = fakebot.say(LUIS, "hola")
        first = await ana.expect("broadcast", msg="hola")
        await app.stop()
        (tmp_path / "bridge.sqlite3").unlink()
        fakebot.unconfirm_all()

        await app.start()
        bea = await app.client("Bea")
        fakebot.say(LUIS, "otra", reply_to=hola)
        frame = await bea.expect("broadcast", **{"from": "Luis (TG)"})
        assert frame["msg"] == "otra" and frame["reply_to"]["id"] == first["id"]
        history = await app.server.hub.store.room_page("general", None, 50)
        assert [m.text for m in history if m.sender == "Luis (TG)"] == ["hola", "otra"]
        assert not [w for w in warnings if "not committed" in w], warnings
    finally:
        globalLogPublisher.removeObserver(observe)
        await app.stop()
