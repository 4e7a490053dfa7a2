"""What an operator sees when start-up goes wrong, and from --help and --version.

Every mistake is one line on standard error that names the option and what is
wrong, exit status 1, no traceback and no usage text. These run the real
``twistd`` and ``chatserv-admin`` as subprocesses.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from chatserv import __version__
from tests.support import make_certificate

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent


def run(*argv: str, cwd: Path, stdin: int | None = subprocess.DEVNULL) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "TELEGRAM_BOT_TOKEN"}
    return subprocess.run(
        [str(BIN / argv[0]), *argv[1:]],
        cwd=cwd,
        env=env,
        stdin=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


def twistd(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return run("twistd", "-n", "--pidfile=", "chatserv", "--db", ":memory:", *args, cwd=cwd)


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    """The single line on stderr of a failed run, after checking the rest."""
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    everything = result.stdout + result.stderr
    assert "Traceback" not in everything and "Usage:" not in everything, everything
    return lines[0]


@pytest.fixture
def taken_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_port_in_use(tmp_path, taken_port):
    line = one_line(twistd("--listen", f"tcp:{taken_port}:interface=127.0.0.1", cwd=tmp_path))
    assert line == f"chatserv: cannot listen on tcp:{taken_port}:interface=127.0.0.1: address already in use"


def test_port_in_use_when_daemonized(tmp_path, taken_port):
    """Without -n: twistd's parent reports the child's error, and does not hang."""
    args = ["--pidfile=tw.pid", "--logfile=tw.log", "chatserv", "--db", ":memory:"]
    result = run("twistd", *args, "--listen", f"tcp:{taken_port}:interface=127.0.0.1", cwd=tmp_path)
    assert result.returncode == 1
    why = f"cannot listen on tcp:{taken_port}:interface=127.0.0.1: address already in use"
    # twistd cuts its parent's message at 100 bytes; the log has all of it.
    assert "An error has occurred: b'chatserv.StartError: " + why[:60] in result.stderr
    assert f"[chatserv.service#critical] chatserv: {why}" in (tmp_path / "tw.log").read_text()
    assert not (tmp_path / "tw.pid").exists()


def test_metrics_port_in_use(tmp_path, taken_port):
    result = twistd(
        "--listen", "tcp:0:interface=127.0.0.1", "--metrics", f"tcp:{taken_port}:interface=127.0.0.1",
        cwd=tmp_path,
    )
    line = one_line(result)
    assert line == (
        f"chatserv: cannot serve metrics on tcp:{taken_port}:interface=127.0.0.1: address already in use"
    )


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--listen", "garbage"], "chatserv: --listen: 'garbage' is not a listening address"),
        (["--listen", "tcp:notaport"], "chatserv: --listen: 'tcp:notaport' is not a listening address"),
        (["--listen", "tcp:99999"], "chatserv: --listen: tcp:99999: port 99999 is not between 0 and 65535"),
        (["--history", "-1"], "chatserv: --history: must be at least 1, not -1"),
        (["--max-line", "0"], "chatserv: --max-line: must be at least 1, not 0"),
        (["--max-line", "x"], "chatserv: --max-line: 'x' is not a whole number"),
        (["--rate-limit", "-3"], "chatserv: --rate-limit: must be at least 0, not -3.0"),
        (["--telegram-chat", "abc"], "chatserv: --telegram-chat: 'abc' is not a chat id"),
        (["--telegram-chat", "-100123"], "chatserv: --telegram-chat needs a bot token"),
        (["--max-per-address", "-1"], "chatserv: --max-per-address: must be at least 0, not -1"),
        (["--retain-days", "0"], "chatserv: --retain-days: must be more than 0, not 0.0"),
        (["--log-level", "loud"], "chatserv: --log-level: must be one of debug, info, warn, error, critical"),
        (["--metrics", "nonsense"], "chatserv: --metrics: 'nonsense' is not a listening address"),
        (["--no-such-option"], "chatserv: option --no-such-option not recognized"),
    ],
)
def test_bad_option(tmp_path, args, expected):
    assert one_line(twistd(*args, cwd=tmp_path)).startswith(expected)


@pytest.mark.parametrize("missing", ["key", "cert"])
def test_ssl_listener_with_a_missing_file(tmp_path, missing):
    key, cert = make_certificate(tmp_path)
    (key if missing == "key" else cert).unlink()
    description = f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}"
    line = one_line(twistd("--listen", description, cwd=tmp_path))
    gone = key if missing == "key" else cert
    assert line == f"chatserv: --listen: {description}: No such file or directory: {gone}"


def test_version(tmp_path):
    result = run("twistd", "chatserv", "--version", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"chatserv {__version__} ")
    result = run("chatserv-admin", "--version", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"chatserv-admin (chatserv {__version__})"


def test_help_speaks_to_an_operator(tmp_path):
    result = run("twistd", "chatserv", "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert "seed" not in text
    assert "JSON lines and plain text on one port" in text
    assert "--log-level" in text and "--metrics" in text
    assert '" (TG)"' in text  # the marker's leading space is visible
    chat = text[text.index("--telegram-chat") :].split("--telegram-", 2)[1]
    assert "TELEGRAM_BOT_TOKEN" in chat and "token-file" in text


def test_admin_create_without_a_terminal(tmp_path):
    result = run("chatserv-admin", "--db", str(tmp_path / "a.sqlite3"), "create", "ana", cwd=tmp_path)
    line = one_line(result)
    assert line.startswith("chatserv-admin: ") and "--password-stdin" in line


# -- the log of a running server ---------------------------------------------------------


@pytest.mark.parametrize("level", [None, "debug"])
def test_log_of_a_login(tmp_path, level):
    """At the default level a login and a logout are one line each, and the
    connection itself none; ``--log-level debug`` adds the connection detail."""
    from tests.test_twistd import Peer, Twistd

    args = ["--db", ":memory:", "--listen", "tcp:0:interface=127.0.0.1"]
    if level:
        args += ["--log-level", level]
    server = Twistd(*args, cwd=tmp_path)
    try:
        port = int(server.wait_for(r"listening on .*port=(\d+)").group(1))
        ana = Peer(port)
        ana.send_json(cmd="login", user="Ana")
        ana.expect("users")
        ana.close()
        server.wait_for("Ana logged out")
    finally:
        server.stop()
    log = "".join(server.log)
    assert log.count("Ana logged in from 127.0.0.1:") == 1
    assert log.count("Ana logged out") == 1
    detail = ["connection from 127.0.0.1", "login Ana", "logout Ana"]
    if level == "debug":
        assert all(line in log for line in detail), log
    else:
        assert not any(line in log for line in detail), log


def test_client_help_shows_the_real_defaults(tmp_path):
    """Not the values the last session saved in the settings file."""
    saved = tmp_path / "config" / "chatserv"
    saved.mkdir(parents=True)
    (saved / "client.json").write_text('{"host": "saved.example.org", "port": 4000, "tls": true}')
    result = subprocess.run(
        [str(BIN / "chatserv-client"), "--help"],
        env={**os.environ, "XDG_CONFIG_HOME": str(tmp_path / "config")},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())
    assert "saved.example.org" not in text and "4000" not in text
    assert "else localhost" in text and "else 2000" in text


def test_bounded_log_file(tmp_path):
    """``--logger chatserv.logs.bounded_observer``: rotated, and old files beyond KEEP deleted."""
    from tests.test_twistd import TWISTD

    env = {**os.environ, "CHATSERV_LOG_MB": "0.005", "CHATSERV_LOG_KEEP": "2"}
    args = ["--logger", "chatserv.logs.bounded_observer", "-n", "--pidfile=", "chatserv"]
    args += ["--db", ":memory:", "--listen", "tcp:0:interface=127.0.0.1", "--log-level", "debug"]
    proc = subprocess.Popen([str(TWISTD), *args], cwd=tmp_path, env=env)
    try:
        log = tmp_path / "chatserv.log"
        port = None
        for _ in range(200):
            text = log.read_text() if log.exists() else ""
            found = re.search(r"listening on .*port=(\d+)", text)
            if found:
                port = int(found.group(1))
                break
            time.sleep(0.05)
        assert port, text
        for _ in range(300):  # one debug line each, about 90 bytes
            socket.create_connection(("127.0.0.1", port)).close()
        for _ in range(200):
            if (tmp_path / "chatserv.log.2").exists():
                break
            time.sleep(0.05)
    finally:
        proc.terminate()
        proc.wait(timeout=15)
    files = sorted(p.name for p in tmp_path.glob("chatserv.log*"))
    assert files == ["chatserv.log", "chatserv.log.1", "chatserv.log.2"]
    assert all(p.stat().st_size <= 5_000 + 200 for p in tmp_path.glob("chatserv.log*"))
