"""Re-runs of three attacks of issue 11 against a real ``twistd -n chatserv``.

Each scenario starts the server in a subprocess on a temporary SQLite
database and a loopback port, attacks it with bounded clients (a fixed count
of connections and lines, and a time limit), samples the server's RSS from
/proc/PID/status, prints one JSON line of figures, and stops the server.

    python -m benchmarks.attacks.hardening output                  # item 2: huge frames, non-readers
    python -m benchmarks.attacks.hardening windows --clients 200   # item 3: windows of many rooms
    python -m benchmarks.attacks.hardening privrace --hammer 300   # item 1: a guest name taken over

Options the scenario does not know go to ``twistd chatserv`` (for instance
``--history-memory 1048576``); ``--db`` replaces the temporary SQLite file.

``--python`` and ``--pythonpath`` run another checkout's server (the "before"
figures): ``--pythonpath /tmp/base`` puts that tree first on the path.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"


# -- the server ---------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def status_kib(pid: int, field: str) -> int:
    """A ``VmRSS``/``VmHWM`` figure of /proc/PID/status, in KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


class Server:
    def __init__(self, args: argparse.Namespace, extra: list[str]) -> None:
        self.dir = tempfile.mkdtemp(prefix="chatserv-attack-")
        self.port = free_port()
        env = dict(os.environ)
        if args.pythonpath:
            env["PYTHONPATH"] = args.pythonpath
        twistd = [args.python, "-c", "from twisted.scripts.twistd import run; run()"]
        cmd = [
            *twistd, "-n", "--pidfile=", "--logfile", str(Path(self.dir) / "server.log"),
            "chatserv", "--listen", f"tcp:{self.port}:interface={HOST}",
            "--db", args.db or str(Path(self.dir) / "chat.sqlite3"), *extra,
        ]
        self.proc = subprocess.Popen(cmd, env=env, cwd=args.pythonpath or None)
        self.samples: list[int] = []

    async def ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"server exited with {self.proc.returncode}")
            try:
                _, w = await asyncio.open_connection(HOST, self.port)
                w.close()
                return
            except OSError:
                await asyncio.sleep(0.1)
        raise SystemExit("server did not listen")

    def drops(self) -> int:
        """Connections the server says it dropped for unread output."""
        try:
            with open(Path(self.dir) / "server.log", errors="replace") as f:
                return sum("of unread output" in line for line in f)
        except OSError:
            return -1

    def rss_mib(self) -> float:
        return status_kib(self.proc.pid, "VmRSS") / 1024

    async def sample(self, stop: asyncio.Event, every: float = 0.1) -> None:
        while not stop.is_set():
            self.samples.append(status_kib(self.proc.pid, "VmRSS"))
            await asyncio.sleep(every)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


class Client:
    """A JSON or plain-text connection with a frame reader."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int, rcvbuf: int | None = None) -> Client:
        sock = socket.socket()
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (HOST, port))
        r, w = await asyncio.open_connection(sock=sock, limit=1 << 28)
        return cls(r, w)

    def send(self, **frame: Any) -> None:
        self.writer.write(json.dumps(frame).encode() + b"\n")

    def raw(self, data: bytes) -> None:
        self.writer.write(data)

    async def frame(self, timeout: float = 10.0) -> dict[str, Any]:
        line = await asyncio.wait_for(self.reader.readline(), timeout)
        if not line:
            raise EOFError
        return json.loads(line)

    async def expect(self, cmd: str, timeout: float = 10.0, **fields: Any) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            f = await self.frame(max(0.01, deadline - time.monotonic()))
            if f.get("cmd") == cmd and all(f.get(k) == v for k, v in fields.items()):
                return f

    async def login(self, user: str, timeout: float = 10.0, **extra: Any) -> None:
        self.send(cmd="login", user=user, **extra)
        await self.expect("users", timeout, room="general")

    async def alive(self, wait: float = 2.0) -> bool:
        """Whether the server still has this connection open: drain what it
        sent, then see whether a ping is answered."""
        try:
            self.send(cmd="ping", data="alive?")
            await self.writer.drain()
            await self.expect("pong", timeout=wait)
            return True
        except (TimeoutError, EOFError, OSError, ValueError):
            return False

    def close(self) -> None:
        self.writer.close()


async def gather_bounded(jobs: Sequence[Callable[[], Awaitable[Any]]], parallel: int = 50) -> list[Any]:
    sem = asyncio.Semaphore(parallel)

    async def one(job: Callable[[], Awaitable[Any]]) -> Any:
        async with sem:
            return await job()

    return await asyncio.gather(*(one(j) for j in jobs))


async def watcher(port: int, stop: asyncio.Event, rtts: list[float]) -> None:
    """A bystander timing its own ping echo throughout."""
    c = await Client.open(port)
    await c.login("watcher")
    async def pong() -> None:
        # Other frames are skipped unparsed: the watcher must keep up with
        # whatever the attack makes the server send to everyone.
        while True:
            line = await c.reader.readline()
            if not line:
                raise EOFError
            if line.startswith(b'{"cmd":"pong"'):
                return

    while not stop.is_set():
        t = time.monotonic()
        c.send(cmd="ping", data="w")
        try:
            await asyncio.wait_for(pong(), 10)
        except (TimeoutError, EOFError, OSError, ValueError):
            rtts.append(10.0)  # dropped or stuck: counted as a 10 s answer
            break
        rtts.append(time.monotonic() - t)
        await asyncio.sleep(0.25)  # within the default rate limit of 5 lines/s
    c.close()


def summary(server: Server, base: float, rtts: list[float], **more: Any) -> dict[str, Any]:
    peak = max(server.samples) / 1024 if server.samples else 0.0
    out: dict[str, Any] = {
        "rss_start_mib": round(base, 1),
        "rss_peak_mib": round(peak, 1),
        "rss_growth_mib": round(peak - base, 1),
        "rss_end_mib": round(server.rss_mib(), 1),
    }
    if rtts:
        out["watcher_p50_ms"] = round(statistics.median(rtts) * 1000, 1)
        out["watcher_max_ms"] = round(max(rtts) * 1000, 1)
    out["dropped_for_unread_output"] = server.drops()
    out.update(more)
    return out


# -- item 2: one huge frame, non-reading clients -------------------------------


async def attack_output(server: Server, args: argparse.Namespace) -> dict[str, Any]:
    port = server.port
    base = server.rss_mib()
    stop = asyncio.Event()
    rtts: list[float] = []
    sampler = asyncio.ensure_future(server.sample(stop))
    watch = asyncio.ensure_future(watcher(port, stop, rtts))
    # Non-readers: logged in, then they never read again (small receive buffer).
    sleepers = [await Client.open(port, rcvbuf=4096) for _ in range(args.clients)]
    for i, c in enumerate(sleepers):
        await c.login(f"sleeper{i}")
    line = "\x01" * 65_000
    senders = []
    for i in range(args.senders):
        c = await Client.open(port)
        c.raw(f"plain{i}\n".encode())
        senders.append(c)
    per_sender = args.lines // args.senders
    for c in senders:
        for _ in range(per_sender):
            c.raw(line.encode() + b"\n")
    deadline = time.monotonic() + args.seconds / 2
    for c in senders:
        await asyncio.wait_for(c.writer.drain(), max(0.1, deadline - time.monotonic()))
    await asyncio.sleep(min(3.0, args.seconds / 4))
    mid_peak = max(server.samples) / 1024
    # Then history pages of those lines, asked for and never read.
    pagers = [await Client.open(port, rcvbuf=4096) for _ in range(args.clients)]
    for i, c in enumerate(pagers):
        await c.login(f"pager{i}")
    for c in pagers:
        c.send(cmd="history", limit=200)
    await asyncio.sleep(min(6.0, args.seconds / 2))
    stop.set()
    await sampler
    await watch
    # Who was dropped: a still-open connection answers a ping once read.
    dropped_sleepers = dropped_pagers = 0
    for c in sleepers:
        dropped_sleepers += not await c.alive()
    for c in pagers:
        dropped_pagers += not await c.alive(5.0)
    for c in sleepers + pagers + senders:
        c.close()
    return summary(
        server, base, rtts,
        rss_after_broadcasts_mib=round(mid_peak, 1),
        sleepers_not_answering=f"{dropped_sleepers}/{len(sleepers)}",
        pagers_not_answering=f"{dropped_pagers}/{len(pagers)}",
        lines=per_sender * args.senders,
    )


# -- item 3: history windows of many rooms --------------------------------------


async def attack_windows(server: Server, args: argparse.Namespace) -> dict[str, Any]:
    port = server.port
    base = server.rss_mib()
    stop = asyncio.Event()
    rtts: list[float] = []
    sampler = asyncio.ensure_future(server.sample(stop))
    watch = asyncio.ensure_future(watcher(port, stop, rtts))
    text = "x" * args.message_bytes
    sent = 0

    async def log_in(i: int) -> Client | None:
        try:
            c = await Client.open(port)
            await c.login(f"g{i}", timeout=60)
            return c
        except (TimeoutError, OSError, EOFError):
            return None

    # Everyone logs in first; then the attack runs for --seconds.
    jobs = [functools.partial(log_in, i) for i in range(args.clients)]
    logged_in = [c for c in await gather_bounded(jobs, 20) if c is not None]
    t_end = time.monotonic() + args.seconds

    async def guest(i: int, c: Client) -> None:
        nonlocal sent

        async def drain() -> None:
            # Read everything, so that this client is never a slow reader.
            with contextlib.suppress(OSError, asyncio.CancelledError):
                while await c.reader.read(1 << 20):
                    pass

        reading = asyncio.ensure_future(drain())
        try:
            rooms = [f"r{i}x{j}" for j in range(args.rooms)]
            for room in rooms:
                c.send(cmd="join", room=room)
            lines = [
                json.dumps({"cmd": "broadcast", "room": room, "msg": text}).encode() + b"\n"
                for room in rooms
            ]
            k = 0
            while time.monotonic() < t_end:
                c.raw(lines[k % len(lines)])
                k += 1
                sent += 1
                await c.writer.drain()
                await asyncio.sleep(1.0 / args.rate)
        except OSError:
            pass
        reading.cancel()
        c.close()

    await asyncio.gather(*(guest(i, c) for i, c in enumerate(logged_in)))
    await asyncio.sleep(2.0)
    stop.set()
    await sampler
    await watch
    return summary(server, base, rtts, guests=len(logged_in), messages_sent=sent)


# -- item 1: private messages and a name taken over ------------------------------


async def attack_privrace(server: Server, args: argparse.Namespace) -> dict[str, Any]:
    port = server.port
    leaked_trials = 0
    leaked_private = 0
    leaked_sent = 0
    watch = await Client.open(port)
    await watch.login("watch")
    # A busy server: other users keep the database writer busy, so a message
    # waits longer between acceptance and delivery.
    stop = asyncio.Event()
    noise = [asyncio.ensure_future(busy(port, f"ruido{i}", stop)) for i in range(args.noise)]
    for t in range(args.trials):
        ana, bob = f"Ana{t}", f"Bob{t}"
        a = await Client.open(port)
        await a.login(ana, features=["sent"])
        b = await Client.open(port)
        await b.login(bob)
        eve_b = await Client.open(port)
        eve_a = await Client.open(port)
        pad = "x" * args.private_bytes
        if args.hammer:
            # Eve does not wait for the leave notice: she keeps asking for
            # both names (name_taken until they are free), pipelined, so she
            # gets each within one check of its holder leaving.
            eve_b.raw((json.dumps({"cmd": "login", "user": bob}).encode() + b"\n") * args.hammer)
            eve_a.raw((json.dumps({"cmd": "login", "user": ana, "features": ["sent"]}).encode() + b"\n")
                      * args.hammer)
        # Ana's burst, then both leave at once.
        for k in range(args.burst):
            a.send(cmd="message", to=bob, msg=f"secreto {k} " + pad)
        # Once the server has read (accepted) the whole burst, both
        # connections drop: every message of it was sent while the old Bob
        # held the name, so any that a new holder receives is a leak.
        a.send(cmd="ping", data="burst")
        await a.expect("pong", data="burst")
        b.close()
        a.close()
        # Eve watches for the leave notices and takes both names at once.
        gone: set[str] = set()
        try:
            while len(gone) < 2:
                f = await watch.frame(5)
                if f.get("cmd") == "system" and f.get("event") == "leave":
                    for name in f["users"]:
                        if args.hammer:
                            pass
                        elif name == bob and bob not in gone:
                            eve_b.send(cmd="login", user=bob)
                        if name == ana and ana not in gone:
                            eve_a.send(cmd="login", user=ana, features=["sent"])
                        gone.add(name)
        except TimeoutError:
            pass
        got_p = got_s = 0
        end = time.monotonic() + 1.0
        for eve, kind in ((eve_b, "private"), (eve_a, "sent")):
            while True:
                try:
                    f = await eve.frame(max(0.01, end - time.monotonic()))
                except (TimeoutError, EOFError):
                    break
                if f.get("cmd") == kind and str(f.get("msg", "")).startswith("secreto"):
                    if kind == "private":
                        got_p += 1
                    else:
                        got_s += 1
            eve.close()
        leaked_private += got_p
        leaked_sent += got_s
        leaked_trials += bool(got_p or got_s)
    watch.close()
    stop.set()
    await asyncio.gather(*noise)
    return {
        "noise_clients": args.noise,
        "trials": args.trials,
        "trials_with_a_leak": leaked_trials,
        "private_frames_leaked": leaked_private,
        "sent_frames_leaked": leaked_sent,
        "messages_per_trial": args.burst,
    }


async def busy(port: int, name: str, stop: asyncio.Event) -> None:
    """Posts 20 KB messages to a room of its own until *stop*, reading its echoes."""
    c = await Client.open(port)
    await c.login(name)
    c.send(cmd="join", room=name)
    line = json.dumps({"cmd": "broadcast", "room": name, "msg": "r" * 20_000}).encode() + b"\n"

    async def drain() -> None:
        with contextlib.suppress(OSError, asyncio.CancelledError):
            while await c.reader.read(1 << 20):
                pass

    reading = asyncio.ensure_future(drain())
    while not stop.is_set():
        c.raw(line * 10)
        await c.writer.drain()
        await asyncio.sleep(0.01)
    reading.cancel()
    c.close()


SCENARIOS = {
    "output": (attack_output, []),
    "windows": (attack_windows, []),
    "privrace": (attack_privrace, ["--rate-limit", "0"]),
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("scenario", choices=sorted(SCENARIOS))
    p.add_argument("--python", default=sys.executable)
    p.add_argument("--pythonpath", default=None, help="a checkout to run the server from")
    p.add_argument("--clients", type=int, default=20)
    p.add_argument("--senders", type=int, default=12)
    p.add_argument("--lines", type=int, default=200)
    p.add_argument("--seconds", type=float, default=15.0)
    p.add_argument("--rooms", type=int, default=20)
    p.add_argument("--rate", type=float, default=4.5, help="messages/s per guest (windows)")
    p.add_argument("--message-bytes", type=int, default=60_000)
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--burst", type=int, default=15)
    p.add_argument("--private-bytes", type=int, default=20_000, help="padding of each private message")
    p.add_argument("--noise", type=int, default=0, help="clients keeping the server busy (privrace)")
    p.add_argument("--hammer", type=int, default=0, help="pipelined login attempts per name (privrace)")
    p.add_argument("--db", default=None, help="database URL (default: a temporary SQLite file)")
    args, server_args = p.parse_known_args(argv)
    args.server_args = server_args  # the rest goes to twistd chatserv
    run, extra = SCENARIOS[args.scenario]
    server = Server(args, extra + args.server_args)
    try:
        async def go() -> dict[str, Any]:
            await server.ready()
            return await asyncio.wait_for(run(server, args), args.seconds * 4 + 120)

        result = asyncio.run(go())
    finally:
        server.stop()
    result = {"scenario": args.scenario, **result}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
