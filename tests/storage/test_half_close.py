"""A client that sends everything and then shuts its sending side
(``printf 'Ana: hola\n' | nc -q 1 host 2000``) is served like any other: what it
sent is handled in order and relayed, then the server hangs up.

The first line waits on the database (is "Ana" a registered name?), so the
end of input used to arrive while the login was pending and the whole
connection, message included, was dropped.
"""

from __future__ import annotations

import pytest_twisted

from tests.support import sleep


@pytest_twisted.ensureDeferred
async def test_plain_input_that_ends_is_still_handled_then_closed(durable):
    srv = await durable()
    watcher = await srv.client()
    await watcher.login("Vigía")
    piped = await srv.client()
    piped.send_raw(b"Ana: hola\nAna: adios\n")
    piped.transport.loseWriteConnection()
    assert (await watcher.expect("broadcast"))["msg"] == "hola"
    assert (await watcher.expect("broadcast"))["msg"] == "adios"
    await piped.closed
    assert piped.buffer == b""
    lines = []
    while piped.lines.pending:
        lines.append(piped.lines.pending.pop(0).decode())
    assert lines and lines[0].startswith("* Hola, Ana.")


@pytest_twisted.ensureDeferred
async def test_json_input_that_ends_is_still_handled_then_closed(durable):
    srv = await durable()
    watcher = await srv.client()
    await watcher.login("Vigía")
    piped = await srv.client()
    piped.send_raw(b'{"cmd":"login","user":"Eva"}\n{"cmd":"broadcast","msg":"de paso"}\n')
    piped.transport.loseWriteConnection()
    assert (await watcher.expect("broadcast"))["msg"] == "de paso"
    await piped.closed
    # Nobody keeps the name once the connection has gone.
    await sleep(0.1)
    assert srv.server is not None and srv.server.hub.find("Eva") is None
