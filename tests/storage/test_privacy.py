"""A private message belongs to the sessions it was sent between, not to names.

Issue 11, item 1: delivery used to look the recipient (and, for ``sent``, the
sender) up by name after the commit, so whoever took a guest name while a
burst was being stored received the previous holder's messages.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest_twisted

from tests.storage.support import DurableServer
from tests.support import LineClient


@asynccontextmanager
async def writer_held(srv: DurableServer) -> AsyncIterator[None]:
    """Keep the store's writer thread busy, so that everything appended in the
    block is accepted but not yet committed (nor delivered) until it ends."""
    gate = threading.Event()
    # The writer pool has one thread: this job runs first and the commit of
    # whatever the hub appends meanwhile queues behind it.
    busy = srv.store._write(gate.wait, 20.0)
    try:
        yield
    finally:
        gate.set()
        await busy


async def left(watcher: LineClient, *names: str) -> None:
    """Wait until *watcher* has seen every one of *names* leave ``general``."""
    waiting = set(names)
    while waiting:
        frame = await watcher.expect("system", event="leave")
        waiting -= set(frame["users"])


async def until_mark(client: LineClient) -> list[dict]:
    """Every frame *client* receives up to the private message "marca"."""
    frames = []
    while True:
        frame = await client.frame()
        if frame.get("cmd") == "private" and frame.get("msg") == "marca":
            return frames
        frames.append(frame)


@pytest_twisted.ensureDeferred
async def test_a_name_taken_over_mid_burst_gets_none_of_the_old_sessions_messages(durable):
    srv = await durable()
    watcher = await srv.client()
    await watcher.login("Vigía")
    ana = await srv.client()
    await ana.login("Ana", features=["sent"])
    bob = await srv.client()
    await bob.login("Bob")

    async with writer_held(srv):
        for i in range(5):
            ana.send(cmd="message", to="Bob", msg=f"para el Bob de antes {i}")
        # A ping answered means the burst was read and accepted.
        ana.send(cmd="ping")
        await ana.expect("pong")
        ana.close()
        bob.close()
        await left(watcher, "Ana", "Bob")
        # Both names are taken again while the burst waits for its commit.
        new_bob = await srv.client()
        await new_bob.login("Bob")
        new_ana = await srv.client()
        await new_ana.login("Ana", features=["sent"])

    # Messages are committed and delivered in order: anything of the burst
    # would reach a new holder before these marks do.
    watcher.send(cmd="message", to="Bob", msg="marca")
    watcher.send(cmd="message", to="Ana", msg="marca")
    for client in (new_bob, new_ana):
        got = await until_mark(client)
        assert [f for f in got if f.get("cmd") in ("private", "sent")] == [], got
    # Nor is the burst in the new holders' private history.
    new_bob.send(cmd="history", **{"with": "Ana"})
    assert (await new_bob.expect("history"))["items"] == []
    new_ana.send(cmd="history", **{"with": "Bob"})
    assert (await new_ana.expect("history"))["items"] == []


@pytest_twisted.ensureDeferred
async def test_history_ids_out_of_range_are_refused_alike_on_both_engines(durable):
    srv = await durable()
    ana = await srv.client()
    await ana.login("Ana")
    ana.send(cmd="broadcast", msg="uno")
    await ana.expect("broadcast")
    too_large = ({"before": 2**63}, {"before": 10**30}, {"limit": 2**64}, {"with": "Luis", "before": 2**63})
    for request in too_large:
        ana.send(cmd="history", **request)
        answer = await ana.frame()
        assert (answer["cmd"], answer["code"], answer["ref"]) == ("error", "bad_request", "history"), request
    # The largest id there can be is still a valid bound.
    ana.send(cmd="history", before=2**63 - 1)
    assert [i["msg"] for i in (await ana.expect("history"))["items"]] == ["uno"]


@pytest_twisted.ensureDeferred
async def test_an_evicted_history_window_is_read_again_from_storage(durable):
    srv = await durable(history_memory=400_000)
    ana = await srv.client()
    await ana.login("Ana")
    text = "x" * 60_000
    posted: dict[str, list[int]] = {}
    for room in ("uno", "dos", "tres", "cuatro"):
        ana.send(cmd="join", room=room)
        await ana.expect("history", room=room)
        posted[room] = []
        for i in range(2):
            ana.send(cmd="broadcast", room=room, msg=f"{room}{i}{text}")
            posted[room].append((await ana.expect("broadcast", room=room))["id"])
    hub = srv.server.hub
    assert hub.windows.used <= 400_000
    first = hub.room("uno")
    assert first is not None and first.partial and not first.history
    # A newcomer still gets the room's whole window: read from the database.
    luis = await srv.client()
    await luis.login("Luis")
    luis.send(cmd="join", room="UNO")
    history = await luis.expect("history", room="uno")
    assert [item["id"] for item in history["items"]] == posted["uno"]
    # A message that came while the window was out is merged in, not lost.
    ana.send(cmd="broadcast", room="dos", msg="mientras tanto")
    await ana.expect("broadcast", room="dos", msg="mientras tanto")
    eva = await srv.client()
    await eva.login("Eva")
    eva.send(cmd="join", room="dos")
    history = await eva.expect("history", room="dos")
    assert [item["msg"][:4] for item in history["items"]] == ["dos0", "dos1", "mien"]
    assert hub.windows.used <= 400_000
