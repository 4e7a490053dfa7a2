"""Messages/s the server stores (and acknowledges) with SQLite under load.

Starts the real ``twistd -n chatserv --db FILE --rate-limit 0`` pinned to core
0, and from this process (pinned to core 1) connects ``--clients`` clients to
``general``. Every client is a sender that keeps ``--window`` broadcasts
unacknowledged: a broadcast is acknowledged when its echo comes back, and the
server relays only after the message is committed, so the echo rate *is* the
stored rate. After a warm-up it measures for ``--seconds`` and reports:

* stored msg/s: growth of the highest stored id in the database file;
* acked msg/s: echoes the senders saw; p50/p99 latency from send to echo
  (this includes the group commit);
* deliveries/s (every client receives every message), server and generator
  CPU, and after shutdown the server's own count of messages and commits,
  hence the mean group-commit batch.

``--engine`` instead measures the bare engine (no server): batches of
``--batch`` messages inserted back to back on one connection.

    python -m benchmarks.storage_throughput                   # SQLite file, fsync per commit
    python -m benchmarks.storage_throughput --db :memory:     # the same without a disk
    python -m benchmarks.storage_throughput --engine          # the engine alone

Bounded: it runs for warm-up + ``--seconds`` and stops the server it started
(by its PID).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat", "rb") as f:
        raw = f.read()
    fields = raw[raw.rfind(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _self_cpu() -> float:
    t = os.times()
    return t.user + t.system


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pin(core: int) -> list[str]:
    if shutil.which("taskset") and core < (os.cpu_count() or 1):
        return ["taskset", "-c", str(core)]
    return []


class Stats:
    def __init__(self) -> None:
        self.acked = 0
        self.delivered = 0
        self.latencies: list[float] = []
        self.measuring = False
        self.running = True


class BenchClient(asyncio.Protocol):
    """Logs in, then keeps *window* broadcasts in flight; counts what comes back.

    Only lines from itself are parsed (for the send time they carry);
    everything else is just counted, to keep the generator cheap.
    """

    def __init__(self, name: str, window: int, stats: Stats) -> None:
        self.name = name
        self.window = window
        self.stats = stats
        self.tag = f'"from":"{name}"'.encode()
        self.buffer = b""
        self.outstanding = 0
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(json.dumps({"cmd": "login", "user": self.name}).encode() + b"\n")

    def data_received(self, data: bytes) -> None:
        lines = (self.buffer + data).split(b"\n")
        self.buffer = lines.pop()
        stats = self.stats
        if not self.ready.done():
            if any(b'"cmd":"users"' in line for line in lines):
                self.ready.set_result(None)
            return
        if stats.measuring:
            stats.delivered += len(lines)
        now = time.perf_counter()
        for line in lines:
            if self.tag in line and b'"cmd":"broadcast"' in line:
                self.outstanding -= 1
                if stats.measuring:
                    stats.acked += 1
                    start = line.find(b'"msg":"') + 7
                    stats.latencies.append(now - float(line[start : line.index(b'"', start)]))
        self.refill()

    def refill(self) -> None:
        n = self.window - self.outstanding
        if n <= 0 or not self.stats.running or self.transport is None:
            return
        frame = b'{"cmd":"broadcast","msg":"' + repr(time.perf_counter()).encode() + b'"}\n'
        self.transport.write(frame * n)
        self.outstanding += n


def _max_id(db: Path) -> int:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return int(conn.execute("SELECT coalesce(max(id), 0) FROM messages").fetchone()[0])
    finally:
        conn.close()


def _percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))]


async def run_server(args: argparse.Namespace) -> dict[str, object]:
    workdir = Path(tempfile.mkdtemp(prefix="storage-bench-"))
    db = args.db if args.db != "file" else str(workdir / "chatserv.sqlite3")
    port = _free_port()
    log = workdir / "twistd.log"
    twistd = str(Path(sys.executable).with_name("twistd"))
    cmd = [
        *_pin(0), twistd, "-n", "--pidfile=", f"--logfile={log}", "chatserv",
        "--listen", f"tcp:{port}:interface=127.0.0.1", "--rate-limit", "0", "--db", db,
        "--max-per-address", "0", "--login-timeout", "0", "--idle-timeout", "0",
    ]
    proc = subprocess.Popen(cmd, cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
            os.sched_setaffinity(0, {1})
        for _ in range(300):
            if log.exists() and "listening on" in log.read_text():
                break
            if proc.poll() is not None:
                raise RuntimeError(f"twistd exited:\n{log.read_text() if log.exists() else ''}")
            await asyncio.sleep(0.05)
        loop = asyncio.get_running_loop()
        stats = Stats()
        clients = []
        for i in range(args.clients):
            _, client = await loop.create_connection(
                functools.partial(BenchClient, f"s{i}", args.window, stats), "127.0.0.1", port
            )
            clients.append(client)
        await asyncio.gather(*(c.ready for c in clients))
        for c in clients:
            c.refill()
        await asyncio.sleep(args.warmup)
        file_db = Path(db) if db != ":memory:" and "://" not in db else None
        id0 = _max_id(file_db) if file_db else 0
        s0, g0, t0 = _cpu(proc.pid), _self_cpu(), time.monotonic()
        stats.measuring = True
        await asyncio.sleep(args.seconds)
        stats.measuring = False
        wall = time.monotonic() - t0
        server_cpu, gen_cpu = _cpu(proc.pid) - s0, _self_cpu() - g0
        id1 = _max_id(file_db) if file_db else 0
        stats.running = False
        await asyncio.sleep(0.5)
        for c in clients:
            if c.transport is not None:
                c.transport.close()
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        text = log.read_text() if log.exists() else ""
        shutil.rmtree(workdir, ignore_errors=True)
    closed = re.search(r"closed after (\d+) messages in (\d+) commits", text)
    stored_total, commits = (int(closed.group(1)), int(closed.group(2))) if closed else (0, 0)
    return {
        "mode": "server",
        "db": "file (WAL, synchronous=FULL)" if args.db == "file" else args.db,
        "clients": args.clients,
        "window": args.window,
        "seconds": round(wall, 2),
        "stored_per_s": round((id1 - id0) / wall) if file_db else None,
        "acked_per_s": round(stats.acked / wall),
        "deliveries_per_s": round(stats.delivered / wall),
        "ack_p50_ms": round(_percentile(stats.latencies, 0.50) * 1000, 2),
        "ack_p99_ms": round(_percentile(stats.latencies, 0.99) * 1000, 2),
        "server_cpu_pct": round(100 * server_cpu / wall),
        "generator_cpu_pct": round(100 * gen_cpu / wall),
        "server_total_stored": stored_total,
        "server_commits": commits,
        "mean_batch": round(stored_total / commits, 1) if commits else None,
    }


def run_engine(args: argparse.Namespace) -> dict[str, object]:
    from chatserv.events import ChatMessage
    from chatserv.storage import open_engine

    workdir = Path(tempfile.mkdtemp(prefix="storage-bench-"))
    url = args.db if args.db != "file" else str(workdir / "chatserv.sqlite3")
    engine = open_engine(url)
    try:
        engine.migrate()
        next_id, stored, commits = 1, 0, 0
        start = time.monotonic()
        while time.monotonic() - start < args.seconds:
            batch = [
                ChatMessage(i, time.time(), "Ana", "un mensaje de prueba de longitud normal", room="general")
                for i in range(next_id, next_id + args.batch)
            ]
            engine.insert_messages(batch)
            next_id += args.batch
            stored += args.batch
            commits += 1
        wall = time.monotonic() - start
    finally:
        engine.close()
        shutil.rmtree(workdir, ignore_errors=True)
    return {
        "mode": "engine",
        "db": "file (WAL, synchronous=FULL)" if args.db == "file" else args.db,
        "batch": args.batch,
        "seconds": round(wall, 2),
        "stored_per_s": round(stored / wall),
        "commits_per_s": round(commits / wall, 1),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--db", default="file", help="'file' (a fresh SQLite file: the default), :memory:, a DSN")
    p.add_argument("--clients", type=int, default=8, help="senders, all in general (default 8)")
    p.add_argument("--window", type=int, default=64, help="unacknowledged broadcasts per sender (default 64)")
    p.add_argument("--seconds", type=float, default=10.0, help="measured time (default 10)")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds before measuring (default 2)")
    p.add_argument("--engine", action="store_true", help="measure the engine alone, no server")
    p.add_argument("--batch", type=int, default=1000, help="messages per commit with --engine (default 1000)")
    args = p.parse_args(argv)
    result = run_engine(args) if args.engine else asyncio.run(run_server(args))
    print(json.dumps(result))
    width = max(len(k) for k in result)
    for key, value in result.items():
        print(f"  {key:<{width}}  {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
