"""Issue 11 item 7 on a database: retention, per-room caps, and joins of
stored rooms that are refused."""

from __future__ import annotations

import io
import sys

import pytest_twisted
from twisted.internet import defer
from twisted.internet.task import Clock

from chatserv import admin
from chatserv.events import ChatMessage
from chatserv.hub import MAX_ROOMS_PER_SESSION
from chatserv.names import name_key
from chatserv.storage import open_engine, open_store
from chatserv.storage.retention import DAY, RetentionService, prune
from tests.storage.support import DurableServer

NOW = 1_800_000_000.0


@pytest_twisted.async_yield_fixture
async def store(db_url):
    from twisted.internet import reactor

    s = open_store(db_url, reactor)
    yield s
    await s.close()


async def fill(store, *messages: ChatMessage) -> None:
    await defer.gatherResults([store.append(m) for m in messages])


def at(id_: int, age_days: float, room: str | None = "general", to: str | None = None) -> ChatMessage:
    return ChatMessage(id_, NOW - age_days * DAY, "Ana", f"m{id_}", room=room, recipient=to)


@pytest_twisted.ensureDeferred
async def test_prune_deletes_messages_older_than_the_cutoff_in_batches(store):
    old = [at(i, 10 - i * 0.01) for i in range(1, 8)] + [at(8, 9, room=None, to="Luis")]
    new = [at(20, 1), at(21, 0.5, room="cine"), at(22, 0.1, room=None, to="Luis")]
    await fill(store, *old, *new)
    deleted = await prune(store, NOW - 2 * DAY, batch=3)
    assert deleted == 8
    assert [m.id for m in await store.room_page("general", None, 50)] == [20]
    assert [m.id for m in await store.room_page("cine", None, 50)] == [21]
    assert [m.id for m in await store.private_page("Ana", "Luis", None, 50)] == [22]
    assert await prune(store, NOW - 2 * DAY) == 0


@pytest_twisted.ensureDeferred
async def test_room_caps_keep_the_newest_messages_of_that_room_only(store):
    await fill(store, *[at(i, 1, room="Cine") for i in range(1, 11)], *[at(i, 1) for i in range(11, 16)])
    await store.write(store.writer.set_room_cap, "CINE", 3)
    assert await store.write(store.writer.room_caps) == [(name_key("cine"), "CINE", 3)]
    assert await prune(store, None, batch=2) == 7
    assert [m.id for m in await store.room_page("cine", None, 50)] == [8, 9, 10]
    assert len(await store.room_page("general", None, 50)) == 5
    await store.write(store.writer.set_room_cap, "cine", 0)
    assert await store.write(store.writer.room_caps) == []


@pytest_twisted.ensureDeferred
async def test_the_service_prunes_at_start_and_every_interval(store):
    clock = Clock()
    clock.advance(NOW)
    await fill(store, at(1, 40), at(2, 20), at(3, 1))
    service = RetentionService(store, clock, retain_days=30, interval=600)
    service.startService()
    await service.running_prune
    assert [m.id for m in await store.room_page("general", None, 50)] == [2, 3]
    clock.advance(11 * DAY)  # message 2 is now 31 days old; the next run is due
    await service.running_prune
    assert [m.id for m in await store.room_page("general", None, 50)] == [3]
    await service.stopService()


@pytest_twisted.ensureDeferred
async def test_without_retain_days_nothing_is_deleted(store):
    clock = Clock()
    clock.advance(NOW)
    await fill(store, at(1, 4000), at(2, 1))
    service = RetentionService(store, clock)
    service.startService()
    await service.running_prune
    await service.stopService()
    assert [m.id for m in await store.room_page("general", None, 50)] == [1, 2]


@pytest_twisted.ensureDeferred
async def test_a_refused_join_of_a_stored_room_loads_and_creates_nothing(db_url):
    srv = DurableServer(db_url)
    srv.config.room_rate = 0  # this test is about the room cap
    await srv.start()
    try:
        ana = await srv.client()
        await ana.login("Ana")
        ana.send(cmd="join", room="vieja")
        await ana.expect("users", room="vieja")
        ana.send(cmd="broadcast", room="vieja", msg="guardado")
        await ana.expect("broadcast", room="vieja")
        ana.send(cmd="leave", room="vieja")
        await ana.expect("left")
        assert srv.server.hub.room("vieja") is None
        for i in range(MAX_ROOMS_PER_SESSION - 1):
            ana.send(cmd="join", room=f"r{i}")
        for i in range(MAX_ROOMS_PER_SESSION - 1):
            await ana.expect("users", room=f"r{i}")
        ana.send(cmd="join", room="vieja")
        error = await ana.expect("error")
        assert error["code"] == "bad_request" and error["ref"] == "join"
        assert srv.server.hub.room("vieja") is None
    finally:
        await srv.stop()


def test_admin_sets_and_lists_room_caps(db_url, capsys):
    def run(*args: str) -> tuple[int, str, str]:
        old, sys.stdin = sys.stdin, io.StringIO("")
        try:
            code = admin.main(["--db", db_url, *args])
        finally:
            sys.stdin = old
        out, err = capsys.readouterr()
        return code, out, err

    code, out, _ = run("set-room-cap", "Cine", "1000")
    assert code == 0 and "1000" in out
    code, out, _ = run("list-rooms")
    assert code == 0 and out.strip() == "Cine\t0 mensajes\tmáximo 1000"
    engine = open_engine(db_url)
    try:
        assert engine.room_caps() == [(name_key("cine"), "Cine", 1000)]
    finally:
        engine.close()
    assert run("set-room-cap", "Cine", "-1")[0] == 1
    assert run("set-room-cap", "dos palabras", "5")[0] == 1
    code, out, _ = run("set-room-cap", "cine", "0")
    assert code == 0
    assert run("list-rooms")[1].strip() == "(sin salas con mensajes)"


def test_retain_days_option():
    import pytest

    from chatserv.tap import Options

    def parse(*args: str) -> Options:
        options = Options()
        options.parseOptions(list(args))
        return options

    assert parse().config().retain_days is None
    assert parse("--retain-days", "30").config().retain_days == 30.0
    assert parse("--retain-days=0.5").config().retain_days == 0.5
    for bad in ("0", "-1", "x"):
        # One line naming the option, then exit (chatserv.tap.Options.parseOptions).
        with pytest.raises(SystemExit, match="^chatserv: --retain-days: "):
            parse("--retain-days", bad)


@pytest_twisted.ensureDeferred
async def test_the_server_runs_retention_on_its_database(db_url):
    from twisted.internet import reactor

    engine = open_engine(db_url)
    try:
        engine.migrate()
        engine.insert_messages([ChatMessage(2, reactor.seconds() - 3 * DAY, "Ana", "vieja", room="general")])
        engine.insert_messages([ChatMessage(3, reactor.seconds(), "Ana", "nueva", room="general")])
    finally:
        engine.close()
    srv = DurableServer(db_url)
    srv.config.retain_days = 2
    await srv.start()
    try:
        retention = srv.app.getServiceNamed("retention")
        await retention.running_prune
        assert [m.text for m in await srv.store.room_page("general", None, 50)] == ["nueva"]
    finally:
        await srv.stop()
