"""Nodes and Redis failing under real ``twistd chatserv`` processes: a node
SIGKILLed mid-traffic loses no acknowledged message and its users leave
everyone's presence within 15 s; Redis stopped and started again loses
nothing either."""

from __future__ import annotations

import time

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred

from tests.cluster.test_nodes import start_all
from tests.support import sleep

pytestmark = pytest.mark.slow


async def page_after(client, after=0, room=None):
    """Every room message after position *after*, paged with ``history after``."""
    found = []
    while True:
        request = {"cmd": "history", "after": after, "limit": 200}
        if room is not None:
            request["room"] = room
        client.send(**request)
        page = await client.expect("history")
        found += page["items"]
        if not page["more"] or not page["items"]:
            return found
        after = page["items"][-1]["pos"]


@pytest_twisted.ensureDeferred
async def test_sigkill_of_a_node_loses_nothing_and_its_users_leave(nodes):
    a, b = nodes(), nodes()
    await start_all(a, b)
    ana = await a.client()
    await ana.login("Ana", features=["sent", "presence"])
    luis = await b.client()
    await luis.login("Luis", features=["sent", "presence"])
    await ana.expect("presence", joined=["Luis"])

    acked: dict[str, int] = {}  # cid -> pos, for every echo Luis saw
    sent: list[str] = []

    async def pump() -> None:
        while luis.connected:
            while len(sent) < len(acked) + 300:
                cid = f"c{len(sent)}"
                luis.send(cmd="broadcast", msg=f"m{len(sent)}", cid=cid)
                sent.append(cid)
            await sleep(0.002)

    async def read() -> None:
        while True:
            try:
                frame = await luis.frame(timeout=5)
            except Exception:
                return
            if frame["cmd"] == "broadcast" and "cid" in frame:
                acked[frame["cid"]] = frame["pos"]

    pumping = Deferred.fromCoroutine(pump())
    reading = Deferred.fromCoroutine(read())
    while len(acked) < 1500:
        await sleep(0.01)
    b.kill()
    killed = time.monotonic()
    await luis.closed
    await pumping
    await reading
    assert len(sent) > len(acked)  # the kill landed mid-traffic

    # Ana, on the survivor, sees Luis leave within 15 s, and has every
    # acknowledged message, once, in position order.
    heard: list[dict] = []
    while True:
        frame = await ana.frame(timeout=15)
        if frame["cmd"] == "broadcast":
            heard.append(frame)
        elif frame["cmd"] == "presence" and frame["left"] == ["Luis"]:
            break
    gone_after = time.monotonic() - killed
    print(f"SIGKILL to presence left: {gone_after:.1f} s")
    assert gone_after < 15
    await sleep(0.5)
    heard += [f for f in [await ana.frame(timeout=0.5) for _ in range(len(ana.lines.pending))]
              if f["cmd"] == "broadcast"]
    positions = [f["pos"] for f in heard]
    assert positions == sorted(set(positions))
    by_cid = {f["cid"] if "cid" in f else f["msg"]: f["pos"] for f in heard}
    missing = [c for c in acked if f"m{c[1:]}" not in by_cid]
    assert not missing, f"{len(missing)} acknowledged messages never reached Ana, e.g. {missing[:5]}"

    # Luis comes back on the survivor (his name is free again), catches up
    # with `after`, and retrying his sends with their cids duplicates nothing.
    luis = await a.client()
    for _ in range(100):
        luis.send(cmd="login", user="Luis", features=["sent"])
        frame = await luis.frame()
        if frame["cmd"] == "history":
            await luis.expect("users")
            break
        assert frame["code"] == "name_taken"
        await sleep(0.1)
    else:
        raise AssertionError("Luis's name was never freed")
    last_seen = max(acked.values())
    missed = await page_after(luis, last_seen)
    assert all(m["pos"] > last_seen for m in missed)
    for cid in sent[-50:] + sent[:5]:  # unacknowledged ones, and old ones
        luis.send(cmd="broadcast", msg=f"m{cid[1:]}", cid=cid)
    confirmations = [await luis.expect("broadcast") for _ in range(55)]
    assert {f["cid"] for f in confirmations} == set(sent[-50:] + sent[:5])
    everything = await page_after(luis, 0)
    texts = [m["msg"] for m in everything]
    assert len(texts) == len(set(texts)), "a retried cid was stored twice"
    assert set(texts) >= {f"m{c[1:]}" for c in acked}
    for client in (ana, luis):
        client.close()


@pytest_twisted.ensureDeferred
async def test_redis_restart_loses_nothing(nodes, own_redis):
    a, b = nodes(redis=own_redis.url), nodes(redis=own_redis.url)
    await start_all(a, b)
    ana = await a.client()
    await ana.login("Ana", features=["sent", "presence"])
    luis = await b.client()
    await luis.login("Luis", features=["sent", "presence"])
    await ana.expect("presence", joined=["Luis"])

    own_redis.stop()
    await sleep(0.5)
    # Each node goes on serving its own clients: Ana's message is committed
    # and echoed to her; a new login cannot be checked cluster-wide.
    ana.send(cmd="broadcast", msg="sin redis")
    assert (await ana.expect("broadcast"))["msg"] == "sin redis"
    eva = await a.client()
    eva.send(cmd="login", user="Eva")
    refused = await eva.expect("error")
    assert refused["code"] == "server_busy"

    own_redis.start()  # empty: it kept nothing
    # Luis catches up from the database once his node is back.
    got = await luis.expect("broadcast", timeout=15)
    assert got["msg"] == "sin redis"
    # Names were claimed again: "ANA" is still taken on the other node.
    for _ in range(100):
        again = await b.client()
        again.send(cmd="login", user="ANA")
        frame = await again.frame()
        again.close()
        if frame.get("code") == "name_taken":
            break
        assert frame.get("code") == "server_busy", frame  # not reconnected yet
        await sleep(0.1)
    else:
        raise AssertionError("the node never reconnected")
    # And everything flows both ways again, nobody having left meanwhile.
    luis.send(cmd="broadcast", msg="con redis")
    assert (await ana.expect("broadcast", timeout=10))["msg"] == "con redis"
    luis.send(cmd="users")
    assert sorted((await luis.expect("users"))["list"]) == ["Ana", "Luis"]
    for client in (ana, luis, eva):
        client.close()
