"""What the cluster costs (issue 9): ``python -m benchmarks.cluster_cost``.

One room of ``--clients`` members, ``--senders`` of them sending at
``--rate`` messages per second in all, for ``--seconds``; run twice in one
sitting, on one node and on two (the members and senders split half and
half), both on PostgreSQL, the cluster over a Redis server of its own (so
its CPU is counted, and nobody else's). Prints, per run: deliveries, server
CPU (every node plus Redis) per 1,000 deliveries, and delivery latency
(send to receipt) p50/p99, for members on the sender's node and on the other.

``--logins N`` instead: N clients log in at once, to one node and then to
two (spread over both); prints how long until every one has its answer.

Needs PostgreSQL (``CHATSERV_BENCH_PG``, default the tests' database; a
schema of its own, dropped afterwards) and ``redis-server``.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from .procstat import cpu_seconds

TWISTD = str(Path(sys.executable).with_name("twistd"))
PG = os.environ.get("CHATSERV_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/test")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Client(asyncio.Protocol):
    def __init__(self, name: str, node: int, latencies: dict[str, list[float]]) -> None:
        self.name = name
        self.node = node
        self.latencies = latencies
        self.buffer = b""
        self.ready = asyncio.get_running_loop().create_future()
        self.received = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        transport.write(json.dumps({"cmd": "login", "user": self.name}).encode() + b"\n")  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        *lines, self.buffer = (self.buffer + data).split(b"\n")
        now = time.time()
        for line in lines:
            if b'"cmd":"broadcast"' in line or b'"cmd": "broadcast"' in line:
                frame = json.loads(line)
                sent, node = frame["msg"].split("|")[:2]
                where = "same" if int(node) == self.node else "other"
                self.latencies[where].append(now - float(sent))
                self.received += 1
            elif not self.ready.done() and b'"users"' in line:
                self.ready.set_result(None)

    def send(self, text: str) -> None:
        self.transport.write(json.dumps({"cmd": "broadcast", "msg": text}).encode() + b"\n")  # type: ignore[attr-defined]


def start_node(workdir: Path, db: str, cluster: list[str], tag: str) -> tuple[subprocess.Popen[bytes], int]:
    log = workdir / f"{tag}.log"
    proc = subprocess.Popen(
        [TWISTD, "-n", "--pidfile=", f"--logfile={log}", "chatserv", "--db", db, "--rate-limit", "0",
         "--max-per-address", "0", "--max-connections", "30000", "--listen", "tcp:0:interface=127.0.0.1",
         *cluster],
        cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )
    for _ in range(400):
        text = log.read_text() if log.exists() else ""
        found = re.search(r"port=(\d+)", text)
        if found and (not cluster or "joined through Redis" in text):
            return proc, int(found.group(1))
        if proc.poll() is not None:
            raise SystemExit(f"node {tag} exited:\n{text}")
        time.sleep(0.05)
    raise SystemExit(f"node {tag} did not start")


async def run(ports: list[int], clients: int, senders: int, rate: float, seconds: float,
              pids: list[int]) -> dict[str, float]:
    loop = asyncio.get_running_loop()
    latencies: dict[str, list[float]] = {"same": [], "other": []}
    members = []
    run_id = uuid.uuid4().hex[:4]
    for i in range(clients):
        node = i % len(ports)
        _, client = await loop.create_connection(
            functools.partial(Client, f"u{run_id}{i}", node, latencies), "127.0.0.1", ports[node]
        )
        members.append(client)
        if i % 50 == 49:
            await asyncio.sleep(0.05)
    await asyncio.wait_for(asyncio.gather(*(c.ready for c in members)), 60)
    await asyncio.sleep(1.0)
    for c in members:
        c.received = 0
    latencies["same"].clear()
    latencies["other"].clear()
    cpu0 = sum(cpu_seconds(pid) for pid in pids)
    start = time.time()
    interval = 1.0 / rate
    sent = 0
    while time.time() - start < seconds:
        sender = members[sent % senders]
        sender.send(f"{time.time():.6f}|{sender.node}|m{sent}")
        sent += 1
        delay = start + sent * interval - time.time()
        if delay > 0:
            await asyncio.sleep(delay)
    expected = sent * clients
    for _ in range(300):  # bounded: 30 s
        if sum(c.received for c in members) >= expected:
            break
        await asyncio.sleep(0.1)
    cpu = sum(cpu_seconds(pid) for pid in pids) - cpu0
    deliveries = sum(c.received for c in members)
    for c in members:
        c.transport.close()
    result = {"messages": sent, "deliveries": deliveries, "expected": expected,
              "cpu_ms_per_1000": 1000 * cpu / max(1, deliveries) * 1000}
    for where, found in latencies.items():
        if found:
            found.sort()
            result[f"{where}_p50_ms"] = 1000 * statistics.median(found)
            result[f"{where}_p99_ms"] = 1000 * found[int(len(found) * 0.99) - 1]
    return result


async def login_storm(ports: list[int], clients: int) -> float:
    """Seconds until *clients* logins, spread over *ports*, are all answered."""
    loop = asyncio.get_running_loop()
    latencies: dict[str, list[float]] = {"same": [], "other": []}
    start = time.time()
    connections = await asyncio.gather(*(
        loop.create_connection(
            functools.partial(Client, f"s{i}", i % len(ports), latencies), "127.0.0.1", ports[i % len(ports)]
        )
        for i in range(clients)
    ))
    await asyncio.wait_for(asyncio.gather(*(c.ready for _, c in connections)), 120)
    took = time.time() - start
    for transport, _ in connections:
        transport.close()
    return took


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.cluster_cost", description=(__doc__ or "").split("\n\n")[0]
    )
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--senders", type=int, default=20)
    parser.add_argument("--rate", type=float, default=100.0, help="messages per second, all senders")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--logins", type=int, default=0, help="only the login storm, of this many clients")
    args = parser.parse_args(argv)
    import psycopg

    schema = f"chatserv_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    db = f"{PG}{'&' if '?' in PG else '?'}options=-csearch_path%3D{schema}"
    procs: list[subprocess.Popen[bytes]] = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            workdir = Path(tmp)
            port = free_port()
            redis = subprocess.Popen(
                ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--dir", tmp],
                stdout=subprocess.DEVNULL,
            )
            procs.append(redis)
            time.sleep(0.3)
            results: dict[str, dict[str, float]] = {}
            if args.logins:
                single, single_port = start_node(workdir, db, [], "single")
                procs.append(single)
                took = asyncio.run(login_storm([single_port], args.logins))
                print(f"{args.logins} clients logged in to 1 node in {took:.2f} s")
                single.terminate()
                single.wait()
                cluster = ["--cluster", f"redis://127.0.0.1:{port}/0", "--cluster-name", "bench"]
                nodes = [start_node(workdir, db, cluster, f"node{i}") for i in range(2)]
                procs += [p for p, _ in nodes]
                took = asyncio.run(login_storm([p for _, p in nodes], args.logins))
                print(f"{args.logins} clients logged in over 2 nodes in {took:.2f} s")
                return 0
            # One node, then two, in one sitting.
            single, single_port = start_node(workdir, db, [], "single")
            procs.append(single)
            results["1 node"] = asyncio.run(
                run([single_port], args.clients, args.senders, args.rate, args.seconds, [single.pid])
            )
            single.terminate()
            single.wait()
            cluster = ["--cluster", f"redis://127.0.0.1:{port}/0", "--cluster-name", "bench"]
            nodes = [start_node(workdir, db, cluster, f"node{i}") for i in range(2)]
            procs += [p for p, _ in nodes]
            results["2 nodes + redis"] = asyncio.run(
                run([p for _, p in nodes], args.clients, args.senders, args.rate, args.seconds,
                    [p.pid for p, _ in nodes] + [redis.pid])
            )
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
                proc.wait()
        with psycopg.connect(PG, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")
    print(f"{args.clients} members, {args.senders} senders, {args.rate:g} msg/s for {args.seconds:g} s")
    for label, result in results.items():
        fields = ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in result.items())
        print(f"{label}: {fields}")
    one, two = results["1 node"]["cpu_ms_per_1000"], results["2 nodes + redis"]["cpu_ms_per_1000"]
    print(f"cluster CPU per delivery: {two / one:.2f}x the single node's")
    return 0


if __name__ == "__main__":
    sys.exit(main())
