"""Re-run issue 11 item 7 against a real ``twistd -n chatserv`` on loopback.

Bounded in count and time; starts its own server on a temporary SQLite
database and stops it (by its pid) at the end. Prints one JSON object.

    .venv/bin/python scripts/attack_rooms.py --seconds 30            # rooms phase
    .venv/bin/python scripts/attack_rooms.py --phase growth --seconds 20 [--server-arg=--retain-days=1]

Phase ``rooms``: 100 guests join new rooms as fast as the rate limit lets
them; a watcher times the echo of its own broadcast in a room of its own;
afterwards 10 clients ask for ``rooms`` for a few seconds. Reports rooms on
the server, the size of a ``rooms`` answer, RSS, and the watcher's latency.
Phase ``prune``: the server starts with ``--retain-days 1`` on a database
of old messages; reports how long deleting them took and the watcher's echo
meanwhile (pass ``--server-arg=--retain-days=1``).
Phase ``growth``: 50 guests post ~60 KB lines at the default rate limit,
each in a room of its own; reports the database's growth rate.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Client:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def login(cls, port: int, name: str) -> Client:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 24)
        c = cls(reader, writer)
        c.send(cmd="login", user=name)
        await c.expect("users")
        return c

    def send(self, **frame: object) -> None:
        self.writer.write(json.dumps(frame).encode() + b"\n")

    async def frame(self) -> dict:
        line = await self.reader.readline()
        if not line:
            raise ConnectionError("closed")
        f = json.loads(line)
        f["_bytes"] = len(line)
        return f

    async def expect(self, cmd: str) -> dict:
        while True:
            f = await self.frame()
            if f.get("cmd") == cmd:
                return f

    def close(self) -> None:
        self.writer.close()


async def watcher(port: int, stop: asyncio.Event, lat: list[float]) -> None:
    w = await Client.login(port, "watcher")
    w.send(cmd="join", room="watchroom")
    await w.expect("users")
    while not stop.is_set():
        t0 = time.monotonic()
        w.send(cmd="broadcast", room="watchroom", msg="t")
        while True:
            f = await w.frame()
            if f.get("cmd") == "broadcast" and f.get("room") == "watchroom":
                break
        lat.append((time.monotonic() - t0) * 1000)
        await asyncio.sleep(0.25)
    w.close()


async def joiner(port: int, i: int, stop: asyncio.Event, counts: dict) -> None:
    c = await Client.login(port, f"g{i}")
    n = 0

    async def drain() -> None:
        while True:
            f = await c.frame()
            if f.get("cmd") == "error":
                counts[f.get("code")] = counts.get(f.get("code"), 0) + 1

    reader = asyncio.ensure_future(drain())
    while not stop.is_set():
        c.send(cmd="join", room=f"r{i}x{n}")
        n += 1
        counts["sent"] = counts.get("sent", 0) + 1
        await asyncio.sleep(0.2)  # the default rate limit: 5 lines/s
    reader.cancel()
    c.close()


async def rooms_answer(port: int) -> tuple[int, int, int]:
    """(bytes of the first answer, rooms counted over every page, pages)."""
    c = await Client.login(port, "counter")
    c.send(cmd="rooms")
    first = await c.expect("rooms")
    total, pages, f = len(first["list"]), 1, first
    while f.get("more") and pages < 10_000:
        await asyncio.sleep(0.2)
        c.send(cmd="rooms", after=f["list"][-1]["name"])
        f = await c.expect("rooms")
        total += len(f["list"])
        pages += 1
    c.close()
    return first["_bytes"], total, pages


async def asker(port: int, i: int, stop: asyncio.Event) -> None:
    c = await Client.login(port, f"ask{i}")
    while not stop.is_set():
        c.send(cmd="rooms")
        await c.expect("rooms")
        await asyncio.sleep(0.2)
    c.close()


async def phase_rooms(port: int, pid: int, seconds: float) -> dict:
    lat: list[float] = []
    stop = asyncio.Event()
    counts: dict = {}
    rss0 = rss_mb(pid)
    watch = asyncio.ensure_future(watcher(port, stop, lat))
    tasks = [asyncio.ensure_future(joiner(port, i, stop, counts)) for i in range(100)]
    await asyncio.sleep(seconds)
    # Counted while the guests are still online, then once they have left.
    size, rooms, pages = await rooms_answer(port)
    rss1 = rss_mb(pid)
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    await watch
    join_lat = list(lat)
    await asyncio.sleep(1)
    _, rooms_left, _ = await rooms_answer(port)
    # 10 clients asking for `rooms` at their rate limit for 10 s.
    lat.clear()
    stop = asyncio.Event()
    watch = asyncio.ensure_future(watcher(port, stop, lat))
    askers = [asyncio.ensure_future(asker(port, i, stop)) for i in range(10)]
    await asyncio.sleep(10)
    stop.set()
    await asyncio.gather(*askers, return_exceptions=True)
    await watch
    return {
        "join_attempts": counts.get("sent", 0),
        "errors": {k: v for k, v in counts.items() if k != "sent"},
        "rooms_counted": rooms,
        "rooms_pages": pages,
        "rooms_after_guests_left": rooms_left,
        "first_rooms_answer_bytes": size,
        "rss_mb_before": round(rss0, 1),
        "rss_mb_after": round(rss1, 1),
        "watch_ms_during_joins": _lat(join_lat),
        "watch_ms_during_rooms_asks": _lat(lat),
    }


def _lat(lat: list[float]) -> dict:
    if not lat:
        return {}
    return {"n": len(lat), "p50": round(statistics.median(lat), 1), "max": round(max(lat), 1)}


async def poster(port: int, i: int, stop: asyncio.Event, text: str) -> None:
    # Each in a room of its own: every line is stored, and the only copy
    # sent back is the poster's own (50 readers of everyone's 60 KB lines
    # would measure this script's reading, not the database).
    c = await Client.login(port, f"p{i}")
    c.send(cmd="join", room=f"p{i}")
    await c.expect("users")

    async def drain() -> None:
        while True:
            await c.reader.read(1 << 20)

    reader = asyncio.ensure_future(drain())
    while not stop.is_set():
        c.send(cmd="broadcast", room=f"p{i}", msg=text)
        await asyncio.sleep(0.2)
    reader.cancel()
    c.close()


def db_bytes(db: Path) -> int:
    return sum(p.stat().st_size for p in db.parent.glob(db.name + "*"))


async def phase_growth(port: int, db: Path, seconds: float) -> dict:
    stop = asyncio.Event()
    text = "x" * 60_000
    start = db_bytes(db)
    tasks = [asyncio.ensure_future(poster(port, i, stop, text)) for i in range(50)]
    t0 = time.monotonic()
    await asyncio.sleep(seconds)
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    elapsed = time.monotonic() - t0
    await asyncio.sleep(1)
    grown = db_bytes(db) - start
    return {
        "db_and_wal_mb_while_running": round(grown / 1e6, 1),
        "seconds": round(elapsed, 1),
        "mb_per_s_while_running": round(grown / 1e6 / elapsed, 2),
    }


def stored(db: Path, seconds: float) -> dict:
    """After the server stopped (its WAL checkpointed into the file)."""
    import sqlite3

    conn = sqlite3.connect(db)
    try:
        count, body = conn.execute("SELECT count(*), coalesce(sum(length(body)), 0) FROM messages").fetchone()
    finally:
        conn.close()
    size = db_bytes(db)
    return {
        "messages_stored": count,
        "messages_per_s": round(count / seconds, 1),
        "db_file_mb_after_stop": round(size / 1e6, 1),
        "db_mb_per_s": round(size / 1e6 / seconds, 2),
    }


def seed_old_messages(db: Path, count: int) -> None:
    """*count* messages of 1 KB, 10 days old, written before the server starts."""
    from chatserv.events import ChatMessage
    from chatserv.storage import open_engine

    engine = open_engine(str(db))
    try:
        engine.migrate()
        old = time.time() - 10 * 86_400
        for start in range(0, count, 5000):
            engine.insert_messages(
                [ChatMessage(i + 1, old + i * 0.001, "viejo", "y" * 1000, room="general")
                 for i in range(start, min(count, start + 5000))]
            )
    finally:
        engine.close()


def count_messages(db: Path) -> int:
    import sqlite3

    conn = sqlite3.connect(db, timeout=30)
    try:
        return int(conn.execute("SELECT count(*) FROM messages").fetchone()[0])
    finally:
        conn.close()


async def phase_prune(port: int, db: Path, seconds: float) -> dict:
    """The server was started with --retain-days on a database full of old
    messages: time the clean-up and the watcher's echo meanwhile."""
    lat: list[float] = []
    stop = asyncio.Event()
    t0 = time.monotonic()
    watch = asyncio.ensure_future(watcher(port, stop, lat))
    left = count_messages(db)
    while left > 1000 and time.monotonic() - t0 < seconds:
        await asyncio.sleep(0.5)
        left = await asyncio.get_running_loop().run_in_executor(None, count_messages, db)
    took = time.monotonic() - t0
    during = list(lat)
    lat.clear()
    await asyncio.sleep(5)
    stop.set()
    await watch
    return {
        "old_messages_left": left,
        "prune_seconds": round(took, 1),
        "watch_ms_during_prune": _lat(during),
        "watch_ms_after_prune": _lat(lat),
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--phase", choices=("rooms", "growth", "prune"), default="rooms")
    p.add_argument("--old-messages", type=int, default=200_000, help="prune phase: rows to seed")
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--server-arg", action="append", default=[])
    args = p.parse_args()
    if not 1 <= args.seconds <= 120:
        raise SystemExit("--seconds: 1 to 120")
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "chat.sqlite3"
        if args.phase == "prune":
            if not 1 <= args.old_messages <= 1_000_000:
                raise SystemExit("--old-messages: 1 to 1,000,000")
            seed_old_messages(db, args.old_messages)
        twistd = str(Path(sys.executable).with_name("twistd"))
        cmd = [twistd, "-n", "--pidfile=", "-l", str(Path(tmp) / "log"), "chatserv",
               "--listen", f"tcp:{port}:interface=127.0.0.1", "--db", str(db), *args.server_arg]
        server = subprocess.Popen(cmd, stdin=subprocess.DEVNULL)
        try:
            for _ in range(100):
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    time.sleep(0.1)
            if args.phase == "rooms":
                result = asyncio.run(phase_rooms(port, server.pid, args.seconds))
            elif args.phase == "prune":
                result = asyncio.run(phase_prune(port, db, args.seconds))
            else:
                result = asyncio.run(phase_growth(port, db, args.seconds))
        finally:
            server.terminate()
            try:
                server.wait(20)
            except subprocess.TimeoutExpired:
                server.kill()
        if args.phase == "growth":
            result.update(stored(db, result["seconds"]))
    result["command"] = " ".join(["scripts/attack_rooms.py", *sys.argv[1:]])
    print(json.dumps(result))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
