"""The client against the product as an operator runs it: ``twistd -n
chatserv`` in its own process, with a database so that accounts exist, and a
real process restart in the middle (no display needed)."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
import pytest_twisted

from chatserv.client import i18n
from chatserv.client.model import GENERAL_KEY, ChatModel, ConnState, LineKind, ModelObserver
from chatserv.client.network import ServerAddress
from chatserv.client.session import ChatSession, Credentials
from tests.client.support import fast_retry, wait_for

pytestmark = [pytest.mark.slow]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False


class Twistd:
    def __init__(self, workdir: Path, port: int) -> None:
        self.workdir, self.port = workdir, port
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = workdir / "twistd.out"

    async def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
                 "-n", "--pidfile=", "chatserv", "--listen", f"tcp:{self.port}:interface=127.0.0.1",
                 "--rate-limit", "0", "--db", str(self.workdir / "chat.sqlite3")],
                cwd=self.workdir, stdout=out, stderr=subprocess.STDOUT,
            )
        await wait_for(lambda: listening(self.port) or self.proc.poll() is not None, "twistd listens", 30)
        if self.proc.poll() is not None:
            pytest.fail("twistd exited:\n" + self.log.read_text(errors="replace")[-2000:])

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(15)
        self.proc = None


class Client(ModelObserver):
    def __init__(self, port: int, user: str, password: str = "", register: bool = False) -> None:
        from twisted.internet import reactor

        self.model = ChatModel(reactor)
        self.session = ChatSession(self.model, reactor, policy=fast_retry)
        self.failures: list[str] = []
        self.model.subscribe(self)
        self.session.connect(ServerAddress("127.0.0.1", port), Credentials(user, password, register))

    def login_failed(self, message: str) -> None:
        self.failures.append(message)

    def texts(self) -> list[str]:
        lines = self.model.conversations[GENERAL_KEY].lines
        return [ln.text for ln in lines if ln.kind in (LineKind.MESSAGE, LineKind.HISTORY)]


@pytest_twisted.ensureDeferred
async def test_account_login_survives_a_server_process_restart(tmp_path):
    i18n.install("en")
    server = Twistd(tmp_path, free_port())
    await server.start()
    clients: list[Client] = []
    try:
        ana = Client(server.port, "Ana", "contraseña-larga", register=True)
        clients.append(ana)
        await wait_for(lambda: ana.model.state is ConnState.ONLINE or ana.failures, "Ana registers, logs in")
        assert ana.failures == [] and ana.model.state is ConnState.ONLINE

        intruder = Client(server.port, "ana", "otra-contraseña")
        guest = Client(server.port, "ANA")
        clients += [intruder, guest]
        await wait_for(lambda: intruder.failures and guest.failures, "both refused")
        assert intruder.failures[0].startswith("Wrong name or password.")
        assert guest.failures[0].startswith("Wrong name or password.")

        ana.session.send(GENERAL_KEY, "antes del reinicio")
        await wait_for(lambda: not ana.session.outbox, "stored and echoed")

        server.stop()
        await wait_for(lambda: ana.model.state is not ConnState.ONLINE, "Ana notices the restart")
        ana.session.send(GENERAL_KEY, "durante el reinicio")
        await server.start()
        # Logs in again with the password (not registering twice), and what
        # was typed meanwhile goes out; the stored history does not double.
        await wait_for(lambda: ana.model.state is ConnState.ONLINE, "Ana back online", 20)
        await wait_for(lambda: not ana.session.outbox, "offline message sent")
        assert ana.failures == []
        assert ana.texts() == ["antes del reinicio", "durante el reinicio"]

        luis = Client(server.port, "Luis")
        clients.append(luis)
        await wait_for(lambda: "durante el reinicio" in luis.texts(), "history kept across the restart")
        assert luis.texts()[-2:] == ["antes del reinicio", "durante el reinicio"]
    finally:
        for client in clients:
            await client.session.disconnect()
        server.stop()
