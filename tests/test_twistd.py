"""`twistd chatserv` for real: the server as a subprocess, and the plugin as a
fresh install finds it.

These tests start subprocesses and talk to them with plain blocking sockets;
they need no reactor.
"""

from __future__ import annotations

import json
import os
import pickle
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
TWISTD = BIN / "twistd"
PYTHON = Path(sys.executable)
SITE_PACKAGES = sysconfig.get_paths()["purelib"]


# -- the server as a subprocess ---------------------------------------------------------


class Twistd:
    """`twistd -n chatserv ...` with its output collected by a thread."""

    def __init__(self, *args: str, cwd: Path, nofile: int | None = None) -> None:
        def limit() -> None:
            if nofile is not None:
                import resource

                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        self.proc = subprocess.Popen(
            [str(TWISTD), "-n", "--pidfile=", "chatserv", *args],
            cwd=cwd,
            preexec_fn=limit,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.log: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode("utf-8", "replace")
            self.log.append(line)
            self.lines.put(line)
        self.lines.put(None)

    def wait_for(self, pattern: str, timeout: float = 20.0) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {pattern!r} in the log:\n{''.join(self.log)}")
            try:
                line = self.lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError(f"twistd exited before {pattern!r}:\n{''.join(self.log)}")
            match = re.search(pattern, line)
            if match:
                return match

    def stop(self) -> int:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
        try:
            return self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
            raise


@pytest.fixture
def twistd(tmp_path: Path) -> Iterator[Any]:
    started: list[Twistd] = []

    def start(*args: str, nofile: int | None = None) -> Twistd:
        server = Twistd(*args, cwd=tmp_path, nofile=nofile)
        started.append(server)
        return server

    yield start
    for server in started:
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait(timeout=5)


class Peer:
    """A blocking line client over a plain socket."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buffer = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send_json(self, **frame: Any) -> None:
        self.send(json.dumps(frame).encode() + b"\n")

    def line(self) -> bytes:
        while b"\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise AssertionError(f"connection closed; unread: {self.buffer!r}")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line

    def text(self) -> str:
        return self.line().decode("utf-8")

    def frame(self) -> dict[str, Any]:
        return json.loads(self.line())

    def expect(self, cmd: str, **fields: Any) -> dict[str, Any]:
        for _ in range(100):
            frame = self.frame()
            if frame.get("cmd") == cmd and all(frame.get(k) == v for k, v in fields.items()):
                return frame
        raise AssertionError(f"no {cmd} {fields}")

    def close(self) -> None:
        self.sock.close()


def test_twistd_chatserv_serves_json_and_plain_clients(twistd):
    server = twistd(
        "--listen",
        "tcp:0:interface=127.0.0.1",
        "--listen",
        "tcp:0:interface=127.0.0.1",
        "--history",
        "3",
    )
    first = int(server.wait_for(r"listening on tcp:0:interface=127\.0\.0\.1 .*port=(\d+)").group(1))
    second = int(server.wait_for(r"listening on tcp:0:interface=127\.0\.0\.1 .*port=(\d+)").group(1))
    assert first != second

    ana = Peer(first)
    ana.send_json(cmd="login", user="Ana")
    assert ana.frame() == {"cmd": "history", "room": "general", "items": []}
    assert ana.frame() == {"cmd": "users", "room": "general", "list": ["Ana"]}

    pepe = Peer(second)  # the other listener: one server, one room
    pepe.send(b"Pepe: hola desde nc\n")
    assert pepe.text().startswith("* Hola, Pepe.")
    assert pepe.text() == "* En línea: Ana, Pepe"
    assert pepe.text() == "Pepe: hola desde nc"
    assert ana.expect("system", event="join")["users"] == ["Pepe"]
    frame = ana.expect("broadcast")
    assert (frame["from"], frame["msg"]) == ("Pepe", "hola desde nc")

    body = "cuerpo-secreto-😀"
    ana.send_json(cmd="broadcast", msg=body)
    assert ana.expect("broadcast")["msg"] == body
    assert pepe.text() == f"Ana: {body}"
    ana.send_json(cmd="message", to="pepe", msg="en privado")
    assert pepe.text() == "[privado] Ana: en privado"

    for i in range(4):
        ana.send_json(cmd="broadcast", msg=f"h{i}")
        ana.expect("broadcast", msg=f"h{i}")
    luis = Peer(first)
    luis.send_json(cmd="login", user="Luis")
    history = luis.frame()
    assert [item["msg"] for item in history["items"]] == ["h1", "h2", "h3"]  # --history 3

    pepe.send(b"/quit\n")
    ana.expect("system", event="leave", users=["Pepe"])
    luis.close()
    ana.expect("system", event="leave", users=["Luis"])
    ana.close()

    # twistd stops the reactor on SIGTERM, then re-raises the signal to report it.
    assert server.stop() in (0, -signal.SIGTERM)
    log = "".join(server.log)
    assert "Server Shut Down." in log, log
    assert "Ana logged in" in log and "Pepe logged in" in log
    assert body not in log and "hola desde nc" not in log, "message bodies must not be logged"
    assert "Traceback" not in log and "Unhandled" not in log, log


def test_twistd_fails_fast_when_it_cannot_listen(twistd):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = twistd("--listen", f"tcp:{port}:interface=127.0.0.1")
        server.wait_for(f"chatserv: cannot listen on tcp:{port}:interface=127.0.0.1: address already in use")
        assert server.proc.wait(timeout=5) == 1


@pytest.mark.parametrize("args", [["--history", "0"], ["--rate-limit", "-1"], ["--max-line", "x"]])
def test_twistd_rejects_bad_options(twistd, args):
    server = twistd(*args)
    assert server.proc.wait(timeout=30) != 0


# -- a fresh install finds the plugin -----------------------------------------------------


@pytest.fixture(scope="module")
def wheel_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Build a wheel from a copy of the working tree and install it, alone, into
    a target directory: what `pip install .` puts on a fresh machine."""
    tmp = tmp_path_factory.mktemp("fresh")
    src = tmp / "src"
    # Not the checkout's in-place chatserv._fanout build: the wheel compiles its own.
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "dropin.cache", "*.egg-info", "build", "*.so")
    src.mkdir()
    for name in ("setup.cfg", "setup.py", "pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    for name in ("chatserv", "twisted"):
        shutil.copytree(REPO / name, src / name, ignore=ignore)
    dist = tmp / "dist"
    subprocess.run(
        [str(PYTHON), "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
        + ["-w", str(dist), str(src)],
        check=True,
        cwd=tmp,
        capture_output=True,
    )
    (wheel,) = dist.glob("chatserv-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
    assert "twisted/plugins/chatserv_plugin.py" in names
    # Shipping either of these would clobber Twisted's own files on install.
    assert "twisted/__init__.py" not in names and "twisted/plugins/__init__.py" not in names
    assert not any(n.endswith("dropin.cache") for n in names)
    assert "chatserv/tap.py" in names
    site = tmp / "site"
    subprocess.run(
        [str(PYTHON), "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
        check=True,
        cwd=tmp,
        capture_output=True,
    )
    return site


def isolated(code: str, site: Path | None, cwd: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    """Run *code* with the venv's Twisted but without the editable install.

    ``-S`` skips site-packages and with it every ``.pth`` file, among them the
    editable install's path entry for the repository; ``-s`` skips the user's
    site. Twisted and its dependencies come from the venv's site-packages on
    PYTHONPATH, after the wheel's target directory; the working directory is
    outside the repository.
    """
    path = [str(site)] if site is not None else []
    path.append(SITE_PACKAGES)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["PYTHONPATH"] = os.pathsep.join(path)
    return subprocess.run(
        [str(PYTHON), "-S", "-s", "-c", code, *argv],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


TWISTD_MAIN = "import sys; sys.argv[0] = 'twistd'; from twisted.scripts.twistd import run; run()"
WHERE = (
    "import sys, twisted.plugins.chatserv_plugin as p, chatserv;"
    "print(p.__file__); print(chatserv.__file__);"
    "print(any(e.rstrip('/') == %r for e in sys.path))"
)


def twistd_help(site: Path | None, cwd: Path) -> str:
    result = isolated(TWISTD_MAIN, site, cwd, "--help")
    assert result.returncode == 0, result.stderr
    return result.stdout


def listed(help_text: str) -> bool:
    return re.search(r"^\s+chatserv\s", help_text, re.MULTILINE) is not None


def test_the_check_does_not_see_the_editable_install(tmp_path):
    """Without the wheel, the isolated interpreter must not find chatserv: otherwise
    the fresh-install tests below would prove nothing."""
    assert not listed(twistd_help(None, tmp_path))
    result = isolated("import chatserv", None, tmp_path)
    assert result.returncode != 0 and "ModuleNotFoundError" in result.stderr


def test_fresh_install_lists_chatserv(wheel_site, tmp_path):
    result = isolated(WHERE % str(REPO), wheel_site, tmp_path)
    assert result.returncode == 0, result.stderr
    plugin_file, package_file, repo_on_path = result.stdout.split()
    assert Path(plugin_file).is_relative_to(wheel_site)
    assert Path(package_file).is_relative_to(wheel_site)
    assert repo_on_path == "False"
    text = twistd_help(wheel_site, tmp_path)
    assert listed(text), text
    # The subcommand loads chatserv.tap from the install.
    result = isolated(TWISTD_MAIN, wheel_site, tmp_path, "chatserv", "--help")
    assert result.returncode == 0, result.stderr
    assert "--listen" in result.stdout and "--rate-limit" in result.stdout


def test_the_plugin_module_is_lazy(wheel_site, tmp_path):
    code = (
        "import sys, twisted.plugins.chatserv_plugin;"
        "print('twisted.internet.reactor' in sys.modules,"
        " any(m == 'chatserv' or m.startswith('chatserv.') for m in sys.modules))"
    )
    result = isolated(code, wheel_site, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "False"]


def _reset_cache(site: Path) -> Path:
    cache = site / "twisted" / "plugins" / "dropin.cache"
    if cache.is_dir():
        shutil.rmtree(cache)
    elif cache.exists():
        cache.unlink()
    return cache


def test_garbage_dropin_cache(wheel_site, tmp_path):
    cache = _reset_cache(wheel_site)
    cache.write_bytes(b"\x80\x04garbage, not a pickle\x00" * 10)
    assert listed(twistd_help(wheel_site, tmp_path))
    assert listed(twistd_help(wheel_site, tmp_path))  # and again, from the rewritten cache


def test_stale_dropin_cache(wheel_site, tmp_path):
    """A cache left by an older install, which says the plugin module has no plugins."""
    from twisted.plugin import CachedDropin

    cache = _reset_cache(wheel_site)
    old = CachedDropin("chatserv_plugin", "an older chatserv")
    cache.write_bytes(pickle.dumps({"chatserv_plugin": old, "removed_plugin": old}))
    an_hour_ago = time.time() - 3600
    os.utime(cache, (an_hour_ago, an_hour_ago))
    assert listed(twistd_help(wheel_site, tmp_path))


def test_unwritable_dropin_cache(wheel_site, tmp_path):
    """dropin.cache that cannot be read or written (a directory: root ignores modes)."""
    cache = _reset_cache(wheel_site)
    cache.mkdir()
    (cache / "x").write_text("in the way")
    result = isolated(TWISTD_MAIN, wheel_site, tmp_path, "--help")
    assert result.returncode == 0, result.stderr
    assert listed(result.stdout)
    assert cache.is_dir()
    _reset_cache(wheel_site)


def test_max_connections_fits_the_file_limit(twistd):
    """Issue 11, item 4: past the file limit, newcomers get server_full, not silence."""
    server = twistd(
        "--listen", "tcp:0:interface=127.0.0.1", "--db", ":memory:",
        "--max-connections", "1000", "--max-per-address", "0",
        nofile=160,
    )
    server.wait_for(r"serving at most 96, not --max-connections 1000")
    port = int(server.wait_for(r"listening on tcp:0:interface=127\.0\.0\.1 .*port=(\d+)").group(1))
    peers = [Peer(port) for _ in range(96)]
    try:
        peers[-1].send_json(cmd="ping")
        assert peers[-1].frame() == {"cmd": "pong"}
        late = Peer(port)
        peers.append(late)
        assert late.frame()["code"] == "server_full"
    finally:
        for peer in peers:
            peer.close()

