"""Two and three real ``twistd chatserv`` nodes over Redis and PostgreSQL:
the protocol's clauses with the participants on different nodes."""

from __future__ import annotations

import pytest
import pytest_twisted

from tests.support import sleep

pytestmark = pytest.mark.slow


async def online(node, name):
    client = await node.client()
    await client.login(name, features=["sent", "presence"])
    return client


async def wait_for(check, timeout=10.0):
    """Poll *check* until true (bounded by *timeout*)."""
    for _ in range(int(timeout / 0.05)):
        if check():
            return
        await sleep(0.05)
    raise AssertionError("timed out waiting")


@pytest_twisted.ensureDeferred
async def test_two_nodes_one_chat(nodes):
    a, b = nodes(), nodes()
    await a.start()
    await b.start()
    ana = await online(a, "Ana")
    luis = await online(b, "Luis")
    # Ana hears Luis join, from the other node.
    frame = await ana.expect("presence")
    assert frame["joined"] == ["Luis"]
    ana.send(cmd="broadcast", msg="hola")
    got = await luis.expect("broadcast", msg="hola")
    assert got["from"] == "Ana" and got["pos"] > 0
    luis.send(cmd="message", to="Ana", msg="privado")
    got = await ana.expect("private", msg="privado")
    assert got["from"] == "Luis"
    for c in (ana, luis):
        c.close()
