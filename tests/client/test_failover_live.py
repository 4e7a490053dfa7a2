"""The client given two servers, against real ``twistd chatserv`` processes on
loopback: the first is killed (SIGKILL) mid-conversation, and the client goes
on with the second, under its name, with what it missed and nothing twice.

The two processes share one database and never run at once (two nodes at
once need ``--cluster``: that is the cluster's own tests' business); what is
tested here is the client's side of a node's death.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
import pytest_twisted

from chatserv.client import i18n
from chatserv.client.model import GENERAL_KEY, ChatModel, ConnState, LineKind, SendState
from chatserv.client.network import parse_servers
from chatserv.client.session import ChatSession, Credentials
from tests.client.support import sleep, wait_for
from tests.client.test_twistd import free_port, listening
from tests.test_twistd import Peer

pytestmark = [pytest.mark.slow]


class Node:
    """``twistd -n chatserv`` on *port* over the database in *workdir*."""

    def __init__(self, workdir: Path, port: int, name: str) -> None:
        self.workdir, self.port, self.name = workdir, port, name
        self.proc: subprocess.Popen[bytes] | None = None
        #: Options instead of the shared SQLite file (--db, --cluster).
        self.extra: list[str] = []

    async def start(self) -> None:
        with (self.workdir / f"{self.name}.log").open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
                 "-n", "--pidfile=", "chatserv", "--listen", f"tcp:{self.port}:interface=127.0.0.1",
                 "--rate-limit", "0", "--history", "2",
                 *(self.extra or ["--db", str(self.workdir / "chat.sqlite3")])],
                cwd=self.workdir, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        await wait_for(
            lambda: listening(self.port) or self.proc.poll() is not None, f"{self.name} listens", 30
        )
        if self.proc.poll() is not None:
            pytest.fail(f"{self.name} exited:\n" + (self.workdir / f"{self.name}.log").read_text()[-2000:])

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(15)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(15)


def texts(model: ChatModel) -> list[str]:
    lines = model.conversations[GENERAL_KEY].lines
    return [ln.text for ln in lines if ln.kind in (LineKind.MESSAGE, LineKind.HISTORY)]


@pytest_twisted.ensureDeferred
async def test_the_client_goes_on_with_the_second_server_when_the_first_is_killed(tmp_path):
    from twisted.internet import reactor

    i18n.install("en")
    first, second = Node(tmp_path, free_port(), "first"), Node(tmp_path, free_port(), "second")
    await first.start()
    model = ChatModel(reactor)
    # Slow enough a retry that the others talk before the client is back.
    session = ChatSession(model, reactor, policy=lambda attempt: 1.5)
    session.connect(
        parse_servers(f"127.0.0.1:{first.port},127.0.0.1:{second.port}", 2000), Credentials("Ana")
    )
    peers: list[Peer] = []
    try:
        await wait_for(lambda: model.state is ConnState.ONLINE, "Ana online on the first server")
        assert model.server == f"127.0.0.1:{first.port}"
        luis = Peer(first.port)
        peers.append(luis)
        luis.send_json(cmd="login", user="Luis")
        luis.expect("users")
        for text in ("uno", "dos"):
            luis.send_json(cmd="broadcast", msg=text)
        await wait_for(lambda: texts(model)[-1:] == ["dos"], "Ana reads Luis")
        pending = session.send(GENERAL_KEY, "en vuelo")
        assert pending is not None

        first.kill()
        await second.start()
        luis = Peer(second.port)
        peers.append(luis)
        luis.send_json(cmd="login", user="Luis")
        luis.expect("users")
        missed = ["tres", "cuatro", "cinco", "seis"]
        for text in missed:
            luis.send_json(cmd="broadcast", msg=text)
            luis.expect("broadcast", msg=text)

        await wait_for(lambda: model.state is ConnState.ONLINE and model.server.endswith(f":{second.port}"),
                       "Ana back, on the second server", 30)  # fmt: skip
        await wait_for(lambda: not session.outbox, "Ana's pending message confirmed", 15)
        assert pending.state is SendState.SENT
        assert model.me == "Ana"
        assert model.conversations[GENERAL_KEY].last_pos is not None  # the server sends positions
        # Every message, once, in order: the login window (--history 2)
        # holds only the last two; the catch-up (history after) the rest.
        await wait_for(lambda: "seis" in texts(model), "the catch-up")
        shown = texts(model)
        assert [t for t in shown if t in ["uno", "dos", *missed]] == ["uno", "dos", *missed]
        assert texts(model).count("en vuelo") == 1
        luis.send_json(cmd="broadcast", msg="después")
        await wait_for(lambda: texts(model)[-1:] == ["después"], "live messages flow on the second server")
        await sleep(0.2)
        # The server has the pending message exactly once.
        luis.send_json(cmd="history", limit=50)
        stored = [i["msg"] for i in luis.expect("history")["items"]]
        assert stored.count("en vuelo") == 1
    finally:
        for peer in peers:
            peer.close()
        await session.disconnect()
        first.kill()
        second.stop()


@pytest_twisted.ensureDeferred
async def test_a_cluster_node_dies_and_the_client_carries_on_with_another(tmp_path):
    """Two nodes of one cluster at once (issue 9's rcluster): the client's
    node is SIGKILLed mid-conversation; it takes its name back on the other
    node once the cluster has reaped the dead one, and misses nothing."""
    pytest.importorskip("chatserv.cluster_redis", reason="the Redis cluster is not in this tree yet")
    from twisted.internet import reactor

    from tests.storage.conftest import PG_ADMIN_DSN, pg_unavailable

    reason = pg_unavailable()
    if reason:
        pytest.skip(reason)
    if not listening(6379):
        pytest.skip("Redis is not reachable at 127.0.0.1:6379")
    import uuid

    import psycopg

    schema = f"chatserv_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    db = f"{PG_ADMIN_DSN}{'&' if '?' in PG_ADMIN_DSN else '?'}options=-csearch_path%3D{schema}"
    cluster = ["--cluster", "redis://127.0.0.1:6379/0", "--cluster-name", f"test-failover-{schema}"]
    first, second = Node(tmp_path, free_port(), "first"), Node(tmp_path, free_port(), "second")
    first.extra = second.extra = ["--db", db, *cluster]
    model = ChatModel(reactor)
    session = ChatSession(model, reactor, policy=lambda attempt: 0.5)
    peers: list[Peer] = []
    try:
        await first.start()
        await second.start()
        session.connect(
            parse_servers(f"127.0.0.1:{first.port},127.0.0.1:{second.port}", 0), Credentials("Ana")
        )
        await wait_for(lambda: model.state is ConnState.ONLINE, "Ana online on the first node")
        luis = Peer(second.port)
        peers.append(luis)
        luis.send_json(cmd="login", user="Luis")
        luis.expect("users")
        luis.send_json(cmd="broadcast", msg="uno")
        await wait_for(lambda: texts(model)[-1:] == ["uno"], "Ana reads Luis across nodes")

        first.kill()
        sent = ["dos", "tres", "cuatro"]
        for text in sent:
            luis.send_json(cmd="broadcast", msg=text)
            luis.expect("broadcast", msg=text)
        await wait_for(
            lambda: model.state is ConnState.ONLINE and model.server.endswith(f":{second.port}"),
            "Ana back on the second node, under her name",
            40,
        )
        await wait_for(lambda: "cuatro" in texts(model), "the catch-up")
        assert [t for t in texts(model) if t in ["uno", *sent]] == ["uno", *sent]
        assert model.me == "Ana"
    finally:
        for peer in peers:
            peer.close()
        await session.disconnect()
        first.kill()
        second.stop()
        with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
