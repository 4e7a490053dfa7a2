"""The real ``twistd chatserv`` on a database: SIGKILL loses no acknowledged
message, and start-up refuses a database it cannot use with one clear line."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

from chatserv.storage import LATEST, open_engine
from tests.support import LineClient, sleep

pytestmark = pytest.mark.slow

TWISTD = str(Path(sys.executable).with_name("twistd"))


class Twistd:
    """``twistd -n chatserv`` in a subprocess, on a kernel-chosen port."""

    def __init__(self, workdir: Path, *args: str) -> None:
        self.workdir = workdir
        self.args = args
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.runs = 0

    async def start(self) -> None:
        self.runs += 1
        self.log = self.workdir / f"twistd-{self.runs}.log"
        self.proc = subprocess.Popen(
            [TWISTD, "-n", "--pidfile=", f"--logfile={self.log}", "chatserv",
             "--listen", "tcp:0:interface=127.0.0.1", "--rate-limit", "0", *self.args],
            cwd=self.workdir,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for _ in range(600):
            text = self.log.read_text() if self.log.exists() else ""
            found = re.search(r"listening on tcp:0\S* \(IPv4Address\(.*?port=(\d+)", text)
            if found:
                self.port = int(found.group(1))
                return
            if self.proc.poll() is not None:
                raise AssertionError(f"twistd exited: {self.proc.stdout.read().decode()}\n{text}")
            await sleep(0.05)
        raise AssertionError("twistd did not start listening")

    async def client(self) -> LineClient:
        from twisted.internet import reactor

        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.port)
        return await connectProtocol(endpoint, LineClient())

    def kill(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def twistd_factory(tmp_path):
    made: list[Twistd] = []

    def make(*args: str) -> Twistd:
        t = Twistd(tmp_path, *args)
        made.append(t)
        return t

    yield make
    for t in made:
        t.stop()


@pytest_twisted.ensureDeferred
async def test_sigkill_mid_traffic_loses_no_acknowledged_message(twistd_factory, db_url):
    server = twistd_factory("--db", db_url)
    await server.start()
    ana = await server.client()
    await ana.login("Ana")
    luis = await server.client()
    await luis.login("Luis")

    acked: dict[int, str] = {}  # id -> text, for every echo Ana saw
    sent = 0

    async def pump() -> None:
        # Keep 2,000 broadcasts unacknowledged (tens of milliseconds of work
        # for the server) so that the kill lands with messages in flight and
        # commits under way.
        nonlocal sent
        while ana.connected:
            while sent < len(acked) + 2000:
                ana.send(cmd="broadcast", msg=f"n{sent}")
                sent += 1
                if sent % 200 == 0:
                    ana.send(cmd="message", to="Luis", msg=f"privado {sent}")
            await sleep(0.001)

    async def read() -> None:
        while True:
            try:
                frame = await ana.frame(timeout=5)
            except Exception:  # the connection is gone and nothing is left
                return
            if frame["cmd"] == "broadcast":
                acked[frame["id"]] = frame["msg"]

    from twisted.internet.defer import Deferred

    pumping = Deferred.fromCoroutine(pump())
    reading = Deferred.fromCoroutine(read())
    while len(acked) < 5000:
        await sleep(0.005)
    server.kill()  # no shutdown, no flush: the process is gone
    await ana.closed
    await pumping
    await reading  # echoes already on their way to Ana were acknowledged too
    assert sent > len(acked)  # the kill did land mid-traffic

    await server.start()
    eva = await server.client()
    await eva.login("Eva")
    stored: dict[int, str] = {}
    before = None
    while True:
        request = {"cmd": "history", "limit": 200}
        if before is not None:
            request["before"] = before
        eva.send(**request)
        page = await eva.expect("history")
        for item in page["items"]:
            stored[item["id"]] = item["msg"]
        if not page["more"]:
            break
        before = page["items"][0]["id"]
    missing = {i: m for i, m in acked.items() if stored.get(i) != m}
    assert not missing, f"{len(missing)} acknowledged messages lost, e.g. {list(missing.items())[:5]}"
    # Order is kept: texts are increasing in the order of their ids.
    numbers = [int(stored[i][1:]) for i in sorted(stored)]
    assert numbers == sorted(numbers)
    # Ids are never reused after the restart.
    eva.send(cmd="broadcast", msg="después")
    frame = await eva.expect("broadcast")
    assert frame["id"] > max(stored)
    eva.close()
    await eva.closed


def test_a_newer_schema_stops_twistd_with_one_clear_line(tmp_path):
    db = tmp_path / "future.sqlite3"
    engine = open_engine(str(db))
    engine.migrate()
    engine._call(
        lambda: engine._execute(
            "INSERT INTO schema_version (version, description, applied) VALUES (?, ?, ?)",
            (LATEST + 1, "from the future", "2099-01-01"),
        )
    )
    engine.close()
    result = subprocess.run(
        [TWISTD, "-n", "--pidfile=", "chatserv", "--db", str(db), "--listen", "tcp:0:interface=127.0.0.1"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert f"chatserv: the database {db} has schema version {LATEST + 1}" in output
    assert "Traceback" not in output


def test_twistd_help_lists_the_storage_options():
    result = subprocess.run([TWISTD, "chatserv", "--help"], capture_output=True, text=True, timeout=60)
    assert "--db=" in result.stdout and "--require-accounts" in result.stdout


@pytest_twisted.ensureDeferred
async def test_daemonized_twistd_stores_and_relays(tmp_path):
    """Without -n twistd forks after building the service: the store's threads
    and connections must be created in the daemon, not before the fork."""
    pidfile, log = tmp_path / "twistd.pid", tmp_path / "twistd.log"
    subprocess.run(
        [TWISTD, f"--pidfile={pidfile}", f"--logfile={log}", "chatserv",
         "--listen", "tcp:0:interface=127.0.0.1", "--db", "chat.sqlite3"],
        cwd=tmp_path, check=True, timeout=60,
    )
    pid = None
    try:
        for _ in range(600):
            text = log.read_text() if log.exists() else ""
            found = re.search(r"listening on tcp:0\S* \(IPv4Address\(.*?port=(\d+)", text)
            if found and pidfile.exists():
                break
            await sleep(0.05)
        else:
            raise AssertionError(f"the daemon did not start:\n{text}")
        pid = int(pidfile.read_text())
        from twisted.internet import reactor

        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", int(found.group(1)))
        ana = await connectProtocol(endpoint, LineClient())
        await ana.login("Ana")
        ana.send(cmd="broadcast", msg="desde el demonio")
        assert (await ana.expect("broadcast"))["msg"] == "desde el demonio"
        ana.close()
        await ana.closed
    finally:
        if pid is not None:
            os.kill(pid, signal.SIGTERM)
            for _ in range(600):
                if not pidfile.exists():
                    break
                await sleep(0.05)
            else:
                os.kill(pid, signal.SIGKILL)
                raise AssertionError("the daemon did not stop on SIGTERM")
    assert "closed after 1 messages in 1 commits" in log.read_text()
