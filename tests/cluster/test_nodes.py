"""Two and three real ``twistd chatserv`` nodes over Redis and PostgreSQL:
the protocol's clauses with the participants on different nodes."""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred, gatherResults

from tests.support import sleep

pytestmark = pytest.mark.slow


async def start_all(*nodes):
    """Start the node processes side by side (each takes a second or so),
    and wait until each has joined the cluster through Redis (a node that
    listens before that refuses logins with server_busy)."""
    await gatherResults([Deferred.fromCoroutine(node.start()) for node in nodes])
    for node in nodes:
        for _ in range(200):  # bounded: 10 s
            if "joined through Redis" in node.log.read_text():
                break
            await sleep(0.05)
        else:
            raise AssertionError(f"a node never joined the cluster:\n{node.log.read_text()}")


async def online(node, name, features=("sent", "presence")):
    client = await node.client()
    await client.login(name, features=list(features))
    return client


async def drain(client, seconds=0.3):
    """Frames that arrive within *seconds*, decoded."""
    import json

    return [json.loads(line) for line in await client.quiet(seconds)]


async def collect(client, cmd, count, timeout=10.0):
    """The next *count* frames of kind *cmd* (others skipped)."""
    got = []
    while len(got) < count:
        frame = await client.frame(timeout)
        if frame.get("cmd") == cmd:
            got.append(frame)
    return got


@pytest_twisted.ensureDeferred
async def test_three_nodes_deliver_everything_in_one_order(nodes):
    a, b, c = nodes(), nodes(), nodes()
    await start_all(a, b, c)
    ana = await online(a, "Ana")
    luis = await online(b, "Luis")
    eva = await online(c, "Eva")
    await sleep(0.3)
    # users answers with the whole cluster, wherever it is asked.
    for client in (ana, luis, eva):
        await drain(client, 0.05)
        client.send(cmd="users")
        frame = await client.expect("users")
        assert sorted(frame["list"]) == ["Ana", "Eva", "Luis"]

    # Three senders on three nodes at once: every member sees the same
    # order (increasing positions), everything once.
    per_sender = 40
    for i in range(per_sender):
        for client, name in ((ana, "a"), (luis, "l"), (eva, "e")):
            client.send(cmd="broadcast", msg=f"{name}{i}")
    seen = {}
    for client, name in ((ana, "Ana"), (luis, "Luis"), (eva, "Eva")):
        frames = await collect(client, "broadcast", 3 * per_sender)
        seen[name] = [(f["pos"], f["msg"]) for f in frames]
    assert seen["Ana"] == seen["Luis"] == seen["Eva"]
    positions = [pos for pos, _ in seen["Ana"]]
    assert positions == sorted(positions) and len(set(positions)) == len(positions)
    for prefix in "ale":  # each sender's own order is kept
        mine = [int(m[1:]) for _, m in seen["Ana"] if m[0] == prefix]
        assert mine == list(range(per_sender))

    # Private messages and typing reach the other node; the sender gets `sent`.
    ana.send(cmd="message", to="EVA", msg="para ti")
    got = await eva.expect("private", msg="para ti")
    assert got["from"] == "Ana" and got["to"] == "Eva"
    sent = await ana.expect("sent")
    assert sent["id"] == got["id"] and sent["pos"] == got["pos"]
    luis.send(cmd="typing", to="Ana")
    typing = await ana.expect("typing")
    assert typing["user"] == "Luis" and typing["private"] is True
    eva.send(cmd="typing")
    assert (await luis.expect("typing"))["user"] == "Eva"

    # Rooms: a join on one node is heard on another; room messages stay in the room.
    luis.send(cmd="join", room="sala")
    await luis.expect("users", room="sala")
    await sleep(0.2)  # the notice of it crosses Redis (a lost one: the 10 s full read)
    eva.send(cmd="join", room="sala")
    users = await eva.expect("users", room="sala")
    assert sorted(users["list"]) == ["Eva", "Luis"]
    joined = await luis.expect("presence", room="sala")
    assert joined["joined"] == ["Eva"]
    eva.send(cmd="broadcast", room="sala", msg="en la sala")
    assert (await luis.expect("broadcast", room="sala"))["msg"] == "en la sala"
    assert not [f for f in await drain(ana) if f.get("cmd") == "broadcast"]

    # A newcomer gets the same history on login, and pages it back in the
    # same order, on a node that has been there all along or on one that
    # has just started (its window read from the database, by position:
    # across nodes, id order is not commit order).
    order = [m for _, m in seen["Ana"]]
    d = nodes()
    await start_all(d)
    for node, name in ((b, "Zoe"), (d, "Ivo")):
        newcomer = await node.client()
        history, _ = await newcomer.login(name)
        window = [m["msg"] for m in history["items"]]
        assert window == order[-len(window) :], name
        newcomer.send(cmd="history", before=history["items"][0]["id"], limit=10)
        page = await newcomer.expect("history")
        assert [m["msg"] for m in page["items"]] == order[-len(window) - 10 : -len(window)], name
        if node is b:
            zoe = newcomer
        else:
            newcomer.close()

    # Leaving is heard on the other nodes.
    eva.close()
    await eva.closed
    left = await luis.expect("presence", room="sala")
    assert left["left"] == ["Eva"]
    for client in (ana, luis, zoe):
        client.close()


@pytest_twisted.ensureDeferred
async def test_a_name_is_taken_once_across_nodes(nodes):
    a, b = nodes(), nodes()
    await start_all(a, b)
    winners = 0
    clients = []
    for i in range(8):
        one, two = await a.client(), await b.client()
        clients += [one, two]
        # The same name in two spellings, at the same moment, on two nodes.
        one.send(cmd="login", user=f"Ana{i}")
        two.send(cmd="login", user=f"ANA{i}")
        answers = [await one.frame(), await two.frame()]
        kinds = sorted(f["cmd"] if f["cmd"] != "error" else f["code"] for f in answers)
        assert kinds == ["history", "name_taken"], answers
        winners += 1
    assert winners == 8
    # A name freed on one node may be taken on the other.
    first = await a.client()
    await first.login("Libre")
    first.close()
    await first.closed
    again = await b.client()
    for _ in range(40):
        again.send(cmd="login", user="LIBRE")
        frame = await again.frame()
        if frame["cmd"] == "history":
            break
        await sleep(0.05)
    assert frame["cmd"] == "history"
    for client in clients + [again]:
        client.close()


@pytest_twisted.ensureDeferred
async def test_accounts_register_and_rooms_across_nodes(nodes):
    """register refuses a name online on another node; rooms lists every
    node's rooms with every node's members; failed logins are throttled
    cluster-wide (a guesser spreading over nodes is slowed on all)."""
    a, b = nodes(), nodes()
    await start_all(a, b)
    luis = await online(b, "Luis")
    luis.send(cmd="join", room="Cocina")
    await luis.expect("history")
    ana = await online(a, "Ana")
    ana.send(cmd="join", room="Cocina")
    await ana.expect("history")
    # Luis is a guest on node b: nobody on node a may register his name.
    stranger = await a.client()
    for _ in range(40):  # bounded: until node a has heard of Luis
        stranger.send(cmd="register", user="LUIS", password="secreto123")
        frame = await stranger.frame()
        if frame.get("code") == "name_taken":
            break
        assert frame["cmd"] != "registered", frame
        await sleep(0.05)
    assert frame.get("code") == "name_taken", frame
    # Only node b knows the room Jardín: node a lists it, and counts both nodes' members.
    luis.send(cmd="join", room="Jardín")
    await luis.expect("history")
    for _ in range(40):
        ana.send(cmd="rooms")
        listed = await ana.expect("rooms")
        if any(room["name"] == "Jardín" for room in listed["list"]):
            break
        await sleep(0.05)
    assert listed["list"] == [
        {"name": "Cocina", "members": 2}, {"name": "general", "members": 2}, {"name": "Jardín", "members": 1},
    ], listed
    assert listed["total"] == 3
    # A guesser spreading its attempts over the two nodes.
    stranger.send(cmd="register", user="Bea", password="correcto123")
    await stranger.expect("registered")
    guessers = [await a.client(), await b.client()]
    for i in range(6):  # the account's 5 free failures, and one more
        guesser = guessers[i % 2]
        guesser.send(cmd="login", user="Bea", password=f"mal{i}")
        frame = await guesser.expect("error")
        assert frame["code"] == "auth_failed" and "vuelve a intentarlo" not in frame["msg"], frame
    for guesser in guessers:
        guesser.send(cmd="login", user="Bea", password="correcto123")
        frame = await guesser.expect("error")
        assert frame["code"] == "auth_failed" and "vuelve a intentarlo" in frame["msg"], frame
    for client in [luis, ana, stranger, *guessers]:
        client.close()
