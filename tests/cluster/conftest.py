"""Fixtures for the cluster tests: real ``twistd chatserv`` nodes over the
machine's Redis (127.0.0.1:6379, a cluster name of their own) and a
PostgreSQL schema of their own; skipped with the reason when either is absent."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.storage.conftest import fresh_schema
from tests.storage.test_twistd import Twistd

REDIS_URL = os.environ.get("CHATSERV_TEST_REDIS", "redis://127.0.0.1:6379/0")


def redis_unavailable(host: str | None = None, port: int | None = None) -> str | None:
    if host is None or port is None:
        from chatserv.bus.redis import parse_url

        host, port, _, _ = parse_url(REDIS_URL)
    try:
        with socket.create_connection((host, port), timeout=2) as s:
            s.sendall(b"PING\r\n")
            if not s.recv(16).startswith(b"+PONG"):
                return f"no Redis answers PING at {host}:{port}"
    except OSError as e:
        return f"Redis is not reachable at {host}:{port}: {e}"
    return None


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A DSN whose search_path is a fresh schema, dropped after the test."""
    with fresh_schema("chatserv_cluster") as (url, _):
        yield url


@pytest.fixture
def redis_url() -> str:
    reason = redis_unavailable()
    if reason:
        pytest.skip(reason)
    return REDIS_URL


@pytest.fixture
def cluster_name() -> Iterator[str]:
    """A cluster name of the test's own; its keys are deleted afterwards."""
    name = f"cstest{uuid.uuid4().hex[:10]}"
    yield name
    try:
        keys = subprocess.run(
            ["redis-cli", "-u", REDIS_URL, "--scan", "--pattern", f"{name}:*"],
            capture_output=True, text=True, timeout=10,
        ).stdout.split()
        if keys:
            subprocess.run(["redis-cli", "-u", REDIS_URL, "DEL", *keys], capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        pass


@pytest.fixture
def nodes(tmp_path: Path, pg_url: str, redis_url: str, cluster_name: str) -> Iterator[object]:
    """A factory of cluster nodes (real twistd processes), all stopped after the test."""
    made: list[Twistd] = []

    def make(*args: str, redis: str | None = None) -> Twistd:
        workdir = tmp_path / f"node{len(made)}"
        workdir.mkdir()
        node = Twistd(
            workdir, "--db", pg_url, "--cluster", redis or redis_url, "--cluster-name", cluster_name, *args
        )
        made.append(node)
        return node

    yield make
    for node in made:
        node.stop()


class OwnRedis:
    """A redis-server of the test's own, on a free port, that it may stop and start."""

    def __init__(self, workdir: Path) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        import time

        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        for _ in range(100):  # bounded: 5 s
            if redis_unavailable("127.0.0.1", self.port) is None:
                return
            time.sleep(0.05)
        raise AssertionError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self.proc = None


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    server = OwnRedis(tmp_path)
    server.start()
    yield server
    server.stop()
