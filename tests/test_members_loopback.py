"""lazy_members end to end: a real service on loopback, a room made large
by in-process members, and real clients with and without the feature."""

from __future__ import annotations

import pytest_twisted

from chatserv.dialects import members
from tests.protocol_support import Silent

SIZE = members.LAZY_THRESHOLD + 100


@pytest_twisted.ensureDeferred
async def test_lazy_and_seed000_clients_in_a_large_room(server, clients):
    hub = server.hub
    for i in range(SIZE):
        hub.login(Silent(), f"m{i:04d}")
    lazy = await clients()
    _, users = await lazy.login("Ana", features=["lazy_members"])
    assert users["count"] == SIZE + 1 and users["more"] is True
    assert len(users["list"]) == members.FIRST_PAGE and users["list"][0] == "Ana"

    seed = await clients()
    _, full = await seed.login("Eva")
    assert set(full) == {"cmd", "room", "list"} and len(full["list"]) == SIZE + 2
    assert await lazy.frame() == {
        "cmd": "presence", "room": "general", "joined": ["Eva"], "left": [], "count": SIZE + 2,
    }

    # A whole pass after Eva joined (she sorts before the first page's end).
    names: list[str] = []
    while True:
        lazy.send(cmd="members", **({"after": names[-1]} if names else {}), limit=members.MAX_PAGE // 2)
        page = await lazy.expect("members")
        names += page["list"]
        if not page["more"]:
            break
    assert len(names) == len(set(names)) == SIZE + 2 and "Eva" in names

    seed.close()
    assert await lazy.expect("presence") == {
        "cmd": "presence", "room": "general", "joined": [], "left": ["Eva"], "count": SIZE + 1,
    }
