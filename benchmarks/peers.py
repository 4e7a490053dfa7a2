"""Start and stop the servers under test: chatserv and the IRC peers.

Every server runs on 127.0.0.1 only, in the foreground, as a child of the
benchmark, with its own configuration in a fresh temporary folder, pinned to
one core (``taskset -c 0``) so that the load generator has the other core.
The peer configurations follow ``shared/benchmarks/peers.md``: every flood
protection, clone limit and queue limit that would throttle a benchmark
client is turned off, so the servers are compared on their data path only.
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

PEERS = ("chatserv", "words", "ngircd", "inspircd", "floor")
# What `suite` compares by default; "floor" (benchmarks/floor_server.py, a
# minimal uvloop relay) is there to measure the instrument, on request.
SUITE_PEERS = ("chatserv", "words", "ngircd", "inspircd")

# 10,000 clients on each side of loopback plus the server's own descriptors.
NOFILE = 65536

# Twisted words (`twistd words`) as built by shared/benchmarks/words_bench.tac:
# `--group=bench` crashes on Python 3 (twisted/words/tap.py calls str.decode),
# so the group is appended here, and `--auth=memory:` lists every benchmark
# nick because `--auth=file:` re-reads its file on every login.
WORDS_TAC = '''\
import os

from twisted.application import service
from twisted.words import tap

port = int(os.environ.get("WORDS_PORT", "6674"))
users = int(os.environ.get("WORDS_USERS", "10000"))
opts = tap.Options()
opts.parseOptions([f"--irc-port=tcp:{port}:interface=127.0.0.1",
                   "--auth=memory:" + ":".join(f"u{i}:x" for i in range(users))])
opts["groups"].append("bench")          # what --group=bench should have done
application = service.Application("words")
tap.makeService(opts).setServiceParent(application)
'''

NGIRCD_CONF = """\
[Global]
\tName = bench.local
\tInfo = loadgen benchmark
\tListen = 127.0.0.1
\tPorts = {port}
\tMotdPhrase = "bench"
\tPidFile = {dir}/ngircd.pid
[Limits]
\tMaxConnections = 0
\tMaxConnectionsIP = 0
\tMaxJoins = 0
\tMaxNickLength = 30
\tMaxPenaltyTime = 0
\tPingTimeout = 600
\tPongTimeout = 600
[Options]
\tDNS = no
\tIdent = no
\tPAM = no
"""

INSPIRCD_CONF = """\
<config format="xml">
<server name="bench.local" description="loadgen benchmark" network="bench">
<admin name="bench" nick="bench" email="bench@localhost">
<bind address="127.0.0.1" port="{port}" type="clients">
<path configdir="{dir}" datadir="{dir}" logdir="{dir}">
<pid file="{dir}/inspircd.pid">
<files motd="{dir}/motd.txt">
<connect name="bench" allow="*" timeout="60" pingfreq="600"
         threshold="1000000" commandrate="1000000000" fakelag="no"
         localmax="100000" globalmax="100000" limit="100000" maxconnwarn="no"
         hardsendq="67108864" softsendq="67108864" recvq="1048576"
         resolvehostnames="no" useident="no">
<performance netbuffersize="65536" somaxconn="4096" softlimit="19000" clonesonconnect="no" quietbursts="yes">
<channels users="20" opers="60">
<log method="file" type="* -USERINPUT -USEROUTPUT" level="default" target="{dir}/ircd.log">
"""


def free_port() -> int:
    """A loopback port that was free a moment ago (the server binds it next)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def raise_nofile(limit: int = NOFILE) -> int:
    """Raise this process's open-file limit as far as allowed; return the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max(soft, limit)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(hard, want)))
    except (ValueError, OSError):
        # Not root: the hard limit is the ceiling.
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _child_setup() -> None:
    raise_nofile()
    # The server must not die with the terminal's Ctrl-C before we stop it.
    os.setpgrp()


def pin_prefix(core: int | None) -> list[str]:
    """``taskset -c CORE`` if pinning is wanted and possible."""
    if core is None or shutil.which("taskset") is None:
        return []
    if core >= (os.cpu_count() or 1):
        return []
    return ["taskset", "-c", str(core)]


def twistd_path() -> str:
    """The twistd next to the running interpreter (the project's venv)."""
    cand = Path(sys.executable).with_name("twistd")
    if cand.exists():
        return str(cand)
    found = shutil.which("twistd")
    if not found:
        raise RuntimeError("twistd not found next to the interpreter nor on PATH")
    return found


@dataclass
class Server:
    """A running server under test."""

    peer: str
    port: int
    proc: subprocess.Popen[bytes]
    workdir: Path
    irc: bool
    cmd: list[str]
    password: str | None = None
    extra: dict[str, str] = field(default_factory=dict)

    def db_path(self) -> Path | None:
        """chatserv's SQLite file, to count stored messages (None for other peers)."""
        if self.peer != "chatserv":
            return None
        db = next((a.split("=", 1)[1] for a in self.cmd if a.startswith("--db=")), None)
        if db is None and "--db" in self.cmd:
            db = self.cmd[len(self.cmd) - 1 - self.cmd[::-1].index("--db") + 1]
        if not db or db == ":memory:" or "://" in db:
            return None
        return Path(db)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server we started (by its PID only) and remove its folder."""
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGTERM)
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
            except ProcessLookupError:
                pass
        shutil.rmtree(self.workdir, ignore_errors=True)

    def log_tail(self, n: int = 30) -> str:
        """Last lines of the server's output, for error reports."""
        out = []
        for p in sorted(self.workdir.glob("*.log")) + [self.workdir / "stdout.txt"]:
            if p.exists():
                lines = p.read_text(errors="replace").splitlines()[-n:]
                out.append(f"--- {p.name}\n" + "\n".join(lines))
        return "\n".join(out)


def available(peer: str) -> bool:
    """Whether this machine can run that peer."""
    if peer in ("chatserv", "words", "floor"):
        return True
    return shutil.which(peer) is not None or Path(f"/usr/sbin/{peer}").exists()


def start_server(
    peer: str,
    *,
    core: int | None = 0,
    users: int = 10000,
    chatserv_args: list[str] | None = None,
    port: int | None = None,
    ready_timeout: float = 30.0,
    reactor: str | None = None,
) -> Server:
    """Start ``peer`` on a fresh loopback port and wait until it accepts connections."""
    if peer not in PEERS:
        raise ValueError(f"unknown peer {peer!r}; one of {', '.join(PEERS)}")
    port = port or free_port()
    workdir = Path(tempfile.mkdtemp(prefix=f"bench-{peer}-"))
    os.chmod(workdir, 0o755)  # ngircd drops root and must still read its files
    env = dict(os.environ)
    password = None
    irc = peer != "chatserv"
    if peer == "chatserv":
        cmd = [
            twistd_path(), "-n", "--pidfile=", f"--logfile={workdir}/twistd.log",
            *(["-r", reactor] if reactor else []),
            "chatserv", "--listen", f"tcp:{port}:interface=127.0.0.1",
            "--rate-limit", "0", "--db", str(workdir / "chatserv.sqlite3"),
            # Every simulated user connects from 127.0.0.1 and some only listen.
            "--max-per-address", "0", "--login-timeout", "0", "--idle-timeout", "0",
            *(chatserv_args or []),
        ]
    elif peer == "words":
        tac = workdir / "words_bench.tac"
        tac.write_text(WORDS_TAC)
        env["WORDS_PORT"] = str(port)
        env["WORDS_USERS"] = str(users)
        cmd = [twistd_path(), "-n", "--pidfile=", f"--logfile={workdir}/twistd.log", "-y", str(tac)]
        password = "x"
    elif peer == "ngircd":
        conf = workdir / "ngircd.conf"
        conf.write_text(NGIRCD_CONF.format(port=port, dir=workdir))
        os.chmod(conf, 0o644)
        cmd = [shutil.which("ngircd") or "/usr/sbin/ngircd", "-n", "-f", str(conf)]
    elif peer == "floor":
        cmd = [sys.executable, str(Path(__file__).with_name("floor_server.py")), str(port)]
    else:
        (workdir / "motd.txt").write_text("bench\n")
        conf = workdir / "inspircd.conf"
        conf.write_text(INSPIRCD_CONF.format(port=port, dir=workdir))
        cmd = [shutil.which("inspircd") or "/usr/sbin/inspircd", "--nofork", "--runasroot",
               "--config", str(conf)]
    full = pin_prefix(core) + cmd
    out = open(workdir / "stdout.txt", "wb")
    proc = subprocess.Popen(full, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                            env=env, cwd=workdir, preexec_fn=_child_setup)
    out.close()
    srv = Server(peer=peer, port=port, proc=proc, workdir=workdir, irc=irc, cmd=full,
                 password=password)
    deadline = time.monotonic() + ready_timeout
    while True:
        if proc.poll() is not None:
            tail = srv.log_tail()
            srv.stop()
            raise RuntimeError(f"{peer} exited with {proc.returncode} at start:\n{tail}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
        except OSError as e:
            if time.monotonic() > deadline:
                tail = srv.log_tail()
                srv.stop()
                raise RuntimeError(
                    f"{peer} did not listen on {port} in {ready_timeout}s:\n{tail}") from e
            time.sleep(0.05)
    # The probe connection above is gone before clients arrive; give IRC
    # daemons a moment to notice, so it does not linger in member counts.
    time.sleep(0.2)
    return srv
