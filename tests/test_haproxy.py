"""docs/CLUSTER.md's haproxy.cfg, as printed there (addresses moved to
loopback), in front of two real chatserv nodes with ``--health``: clients get
through, and a node that is killed is taken out by the health check so that
new clients all reach the other. Skips without an ``haproxy`` binary."""

from __future__ import annotations

import re
import shutil
import signal
import socket
import subprocess
import threading
from pathlib import Path

import pytest

from tests.test_twistd import Peer, twistd  # noqa: F401  (twistd: the fixture)
from tests.test_workers import logged, wait_until

pytestmark = pytest.mark.slow

DOCS = Path(__file__).resolve().parent.parent / "docs" / "CLUSTER.md"
LOOPBACK = "tcp:0:interface=127.0.0.1"


def documented_config() -> str:
    text = DOCS.read_text()
    match = re.search(r"sudo tee /etc/haproxy/haproxy.cfg >/dev/null <<'EOF'\n(.*?)\nEOF\n", text, re.S)
    assert match, "docs/CLUSTER.md has no haproxy.cfg block"
    return match.group(1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_haproxy_as_documented_routes_around_a_dead_node(twistd, tmp_path):  # noqa: F811
    haproxy = shutil.which("haproxy")
    if haproxy is None:
        pytest.skip("haproxy is not installed (apt-get install haproxy)")
    nodes, ports, health = [], [], []
    for _ in range(2):
        node = twistd(
            "--listen", LOOPBACK, "--health", LOOPBACK, "--db", ":memory:", "--max-per-address", "0"
        )
        ports.append(int(logged(node, r"listening on tcp:0\S* .*port=(\d+)").group(1)))
        health.append(int(logged(node, r"health checks at .*port=(\d+)").group(1)))
        nodes.append(node)
    front = free_port()
    config = documented_config()
    config = config.replace("log /dev/log local0", "log stdout format raw local0")
    config = config.replace("maxconn 100000", "maxconn 4000")  # this machine's file limit
    config = config.replace("bind :2000", f"bind 127.0.0.1:{front}")
    servers = "\n".join(
        f"    server node{i + 1} 127.0.0.1:{port} port {check}"
        for i, (port, check) in enumerate(zip(ports, health, strict=True))
    )
    config = re.sub(r"(    server node\d .*\n?)+", servers + "\n", config)
    (tmp_path / "haproxy.cfg").write_text(config + "\n")
    proc = subprocess.Popen(
        [haproxy, "-db", "-f", str(tmp_path / "haproxy.cfg")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    lines: list[str] = []

    def read() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            lines.append(raw.decode(errors="replace"))

    threading.Thread(target=read, daemon=True).start()
    try:

        def login(name: str) -> bool:
            try:
                peer = Peer(front)
                peer.send_json(cmd="login", user=name)
                peer.expect("users")
                peer.close()
                return True
            except (OSError, AssertionError, ValueError):
                return False

        try:
            wait_until(lambda: login("primera"), 15, "a login through HAProxy")
        except AssertionError:
            raise AssertionError(config + "".join(lines)) from None
        for i in range(4):
            assert login(f"antes{i}")

        nodes[0].proc.send_signal(signal.SIGKILL)
        nodes[0].proc.wait(10)
        # inter 2s, fall 2: out within a few seconds; until then a new
        # client may still land on the dead node.
        wait_until(lambda: any("node1 is DOWN" in line for line in lines), 20, "HAProxy takes node1 out")
        assert all(login(f"después{i}") for i in range(6))
        assert nodes[1].proc.poll() is None
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
