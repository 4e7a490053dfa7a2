"""Messages accepted but not yet committed have a bound (issue 11).

When the database is slower than the senders, the commit queue used to grow
without end; past ``MAX_BACKLOG`` bytes of text, clients' new messages are
refused with ``server_busy`` and nothing of them is relayed or stored.
"""

from __future__ import annotations

import pytest_twisted

from tests.storage.support import DurableServer
from tests.storage.test_privacy import writer_held


@pytest_twisted.ensureDeferred
async def test_messages_past_the_commit_backlog_are_refused_not_queued(durable):
    srv: DurableServer = await durable()
    srv.store.max_backlog = 2_500
    ana = await srv.client()
    await ana.login("Ana")
    luis = await srv.client()
    await luis.login("Luis")
    chunk = "x" * 1_000

    async with writer_held(srv):
        for i in range(6):
            ana.send(cmd="broadcast", msg=f"{i}{chunk}")
        ana.send(cmd="message", to="Luis", msg="privado")
        ana.send(cmd="ping")
        refused = []
        while True:
            frame = await ana.frame()
            if frame["cmd"] == "pong":
                break
            if frame["cmd"] == "error":
                refused.append(frame["code"])
        # The third message takes the queue past 2,500 bytes; from then on
        # everything, private messages included, is refused.
        assert refused == ["server_busy"] * 4

    got = [(await luis.expect("broadcast"))["msg"][0] for _ in range(3)]
    assert got == ["0", "1", "2"]
    # Once the writer has caught up the server takes messages again.
    ana.send(cmd="broadcast", msg="de nuevo")
    assert (await luis.expect("broadcast"))["msg"] == "de nuevo"
    ana.send(cmd="history")
    items = (await ana.expect("history"))["items"]
    assert [m["msg"][0] for m in items] == ["0", "1", "2", "d"]
