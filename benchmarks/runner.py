"""The open-loop step runner: clients, one measured step at a given rate, and what limited it."""

from __future__ import annotations

import asyncio
import gc
import math
import sqlite3
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .client import BenchClient, ChatservClient, IrcClient, Phase, make_text, now_us
from .procstat import CpuWindow, rss_bytes

# A step passes when p99 latency is at most this and nothing was lost.
P99_LIMIT_MS = 200.0


# Generator CPU (fraction of its core) from which the generator, not the
# server, is taken to be the limit of a step.
GEN_BOUND = 0.90




# Logins in flight while setting up fanout and private rooms (setup is not
# measured): ngircd's listen backlog is 10, so more in flight costs it SYN
# retries; InspIRCd completes registrations only on a once-a-second tick, so
# it needs many in flight.
SETUP_CONCURRENCY = {"ngircd": 10, "inspircd": 2000}


SETUP_CONCURRENCY_DEFAULT = 64


# A route is (sender, recipients per message, private recipient name or None).
Route = tuple[BenchClient, str | None]


@dataclass
class Target:
    """Where the server under test listens, and how its clients log in."""

    peer: str
    port: int
    pid: int | None
    irc: bool
    password: str | None = None
    host: str = "127.0.0.1"
    features: tuple[str, ...] = ("presence",)
    db: Path | None = None
    server_core: int | None = None
    gen_core: int | None = None
    # Our own helpers (py-spy): not counted as other processes' noise.
    helpers: set[int] = field(default_factory=set)
    # Several nodes (benchmarks/cluster.py): client i connects to
    # ports[i % len(ports)] (empty: every client to ``port``) ...
    ports: tuple[int, ...] = ()
    # ... and the server is several processes: name -> PIDs, each measured on
    # its own; the server's CPU is the sum of the parts named in in_server.
    parts: dict[str, list[int]] = field(default_factory=dict)
    in_server: tuple[str, ...] = ()

    def cpu_window(self) -> CpuWindow:
        return CpuWindow(self.pid, self.helpers, self.parts, self.in_server)

    def stored(self) -> int | None:
        """Messages in chatserv's SQLite store now (None when not measurable)."""
        if self.db is None or not self.db.exists():
            return None
        try:
            # Read-only and WAL: this reader does not block the server's commits.
            con = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=2)
            try:
                return int(con.execute("SELECT count(*) FROM messages").fetchone()[0])
            finally:
                con.close()
        except sqlite3.Error:
            return None

    def factory(self, join: bool = True) -> Callable[[int, asyncio.AbstractEventLoop], BenchClient]:
        if self.irc:
            pw, j = self.password, join
            return lambda i, loop: IrcClient(i, loop, pw, join=j)
        feats = self.features
        return lambda i, loop: ChatservClient(i, loop, feats)


@dataclass
class StepResult:
    """One measured interval at one offered rate."""

    target_deliveries_s: float
    rate_msgs_s: float
    duration_s: float
    sent: int
    expected: int
    received: int
    loss: int
    deliveries_s: float
    p50_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    latency_samples: int
    disorder: int
    server_cpu_s: float
    server_cpu_pct: float
    server_cpu_ms_per_1k: float | None
    gen_cpu_pct: float
    other_cpu_pct: float
    server_core_busy_pct: float | None
    gen_core_busy_pct: float | None
    send_lag_max_ms: float
    server_rss_kb: int | None
    disconnects: int
    stored_s: float | None = None
    store_backlog: int | None = None
    # Several nodes: latency of the deliveries that crossed from the
    # sender's node to another (a subset of the above), and each part's CPU.
    p50_cross_ms: float | None = None
    p99_cross_ms: float | None = None
    cross_samples: int | None = None
    part_cpu_s: dict[str, float] | None = None
    part_cpu_pct: dict[str, float] | None = None
    passed: bool = False
    limit: str = ""

    def row(self) -> dict[str, Any]:
        return asdict(self)


def percentile(sorted_vals: list[int], q: float) -> float | None:
    """Nearest-rank percentile of µs samples, in ms."""
    if not sorted_vals:
        return None
    k = max(0, min(len(sorted_vals) - 1, math.ceil(q * len(sorted_vals)) - 1))
    return round(sorted_vals[k] / 1000.0, 3)


def setup_concurrency(target: Target) -> int:
    return SETUP_CONCURRENCY.get(target.peer, SETUP_CONCURRENCY_DEFAULT)


def pick_probes(n: int, k: int) -> set[int]:
    """k indices spread evenly over 0..n-1 (all when k is 0 or >= n)."""
    if k <= 0 or k >= n:
        return set(range(n))
    if k == 1:
        return {n - 1}
    return {round(i * (n - 1) / (k - 1)) for i in range(k)}


async def connect_clients(
    target: Target,
    count: int,
    *,
    start: int = 0,
    join: bool = True,
    concurrency: int = 0,
    timeout: float = 60.0,
) -> tuple[list[BenchClient], dict[str, Any]]:
    """Open ``count`` connections and log each in; return the logged-in ones.

    ``concurrency`` caps the logins in flight (0: all at once, a storm).
    Clients not logged in after ``timeout`` are closed and counted as failed.
    """
    loop = asyncio.get_running_loop()
    make = target.factory(join)
    sem = asyncio.Semaphore(concurrency) if concurrency > 0 else None
    clients: list[BenchClient | None] = [None] * count
    errors: dict[str, int] = {}
    ports = target.ports or (target.port,)

    async def one(i: int) -> None:
        async def go() -> None:
            node = i % len(ports)
            _, proto = await loop.create_connection(lambda: make(start + i, loop),
                                                    target.host, ports[node])
            assert isinstance(proto, BenchClient)
            proto.node = node
            clients[i] = proto
            await proto.logged

        try:
            if sem is None:
                await go()
            else:
                async with sem:
                    await go()
        except Exception as e:  # noqa: BLE001 - every failure is counted, by kind
            key = type(e).__name__ + (": " + str(e)[:80] if str(e) else "")
            errors[key] = errors.get(key, 0) + 1

    t0 = time.monotonic()
    tasks = [loop.create_task(one(i)) for i in range(count)]
    done, pending = await asyncio.wait(tasks, timeout=timeout)
    for t in pending:
        t.cancel()
    if pending:
        await asyncio.wait(pending, timeout=5)
    ok = [c for c in clients if c is not None and c.logged.done() and not c.logged.cancelled()
          and c.logged.exception() is None]
    ok_ids = {id(c) for c in ok}
    for c in clients:
        if c is not None and id(c) not in ok_ids and c.transport is not None:
            c.transport.close()
    last = max((c.login_t for c in ok), default=t0)
    stats = {
        "requested": count,
        "logged_in": len(ok),
        "login_time_s": round(last - t0, 3),
        "all_logged_in_s": round(last - t0, 3) if len(ok) == count else None,
        "timed_out": len(pending),
        "errors": errors,
    }
    return ok, stats


async def wait_quiet(clients: list[BenchClient], quiet: float = 0.3, limit: float = 10.0) -> float:
    """Wait until no client has received anything for ``quiet`` s (at most ``limit`` s)."""
    t0 = time.monotonic()
    last_total = -1
    last_change = t0
    while True:
        await asyncio.sleep(0.05)
        total = sum(c.rx_bytes for c in clients)
        now = time.monotonic()
        if total != last_total:
            last_total, last_change = total, now
        elif now - last_change >= quiet:
            return now - t0
        if now - t0 >= limit:
            return now - t0


class Runner:
    """Runs measured steps over one set of logged-in clients."""

    def __init__(self, target: Target, clients: list[BenchClient], routes: list[Route],
                 per_msg: int, probes: set[int], pad: int) -> None:
        self.target = target
        self.clients = clients
        self.routes = routes
        self.per_msg = per_msg
        self.probes = probes
        self.pad = "x" * max(0, pad)
        self.step_no = 0
        # Several nodes: the sender number in the text -> the sender's node,
        # so that deliveries that crossed nodes are timed apart as well.
        self.sender_node: dict[bytes, int] | None = None
        if target.ports:
            self.sender_node = {str(r).encode(): c.node for r, (c, _) in enumerate(routes)}

    async def step(self, deliveries_s: float, duration: float, drain: float = 2.0) -> StepResult:
        """Offer ``deliveries_s`` for ``duration`` s and measure what arrives."""
        rate = deliveries_s / self.per_msg
        total = max(1, int(round(rate * duration)))
        self.step_no += 1
        step = self.step_no
        phase = Phase(step, self.sender_node)
        for i, c in enumerate(self.clients):
            c.set_phase(phase, i in self.probes)
        routes = self.routes
        nroutes = len(routes)
        seqs = [0] * nroutes
        pad = self.pad
        cpu = self.target.cpu_window()
        lag_max = 0.0
        stored0 = self.target.stored()
        # No collector pauses inside a measured step (the hot path makes no
        # reference cycles); the heap is collected between steps instead.
        gc.collect()
        gc.disable()
        cpu.start()
        t0 = time.monotonic()
        sent = 0
        # Open loop: message n is due at t0 + n / rate, whatever came back.
        while sent < total:
            now = time.monotonic()
            due = min(total, int((now - t0) * rate) + 1)
            if due > sent:
                lag = now - (t0 + sent / rate)
                if lag > lag_max:
                    lag_max = lag
                t_us = now_us()
                while sent < due:
                    r = sent % nroutes
                    client, to = routes[r]
                    text = make_text(step, t_us, r, seqs[r], pad)
                    seqs[r] += 1
                    tr = client.transport
                    if tr is not None and not tr.is_closing():
                        tr.write(client.private_line(to, text) if to else client.room_line(text))
                    sent += 1
            await asyncio.sleep(0.001)
        # Saturation is judged over the sending interval only: the drain that
        # follows is mostly idle for a healthy server and would hide it.
        cpu.mark()
        send_time = max(time.monotonic() - t0, duration, 1e-3)
        expected = sent * self.per_msg
        end = time.monotonic() + drain
        received = 0
        while time.monotonic() < end:
            received = sum(c.count for c in self.clients)
            if received >= expected:
                break
            await asyncio.sleep(0.005)
        cpu.stop()
        gc.enable()
        received = sum(c.count for c in self.clients)
        stored1 = self.target.stored() if stored0 is not None else None
        for c in self.clients:
            c.set_phase(None, False)
        lat = sorted(phase.lat)
        disconnects = sum(1 for c in self.clients if c.lost_conn)
        delivered = min(received, expected)
        pid = self.target.pid
        res = StepResult(
            target_deliveries_s=round(deliveries_s),
            rate_msgs_s=round(rate, 1),
            duration_s=round(send_time, 3),
            sent=sent,
            expected=expected,
            received=received,
            loss=expected - received,
            deliveries_s=round(delivered / send_time),
            p50_ms=percentile(lat, 0.50),
            p99_ms=percentile(lat, 0.99),
            max_ms=percentile(lat, 1.0),
            latency_samples=len(lat),
            disorder=phase.disorder,
            server_cpu_s=round(cpu.server, 3),
            server_cpu_pct=round(100 * cpu.mark_server / max(cpu.mark_wall, 1e-3), 1),
            server_cpu_ms_per_1k=(round(1000 * cpu.server / (delivered / 1000), 3)
                                  if delivered else None),
            gen_cpu_pct=round(100 * cpu.mark_gen / max(cpu.mark_wall, 1e-3), 1),
            other_cpu_pct=round(100 * cpu.mark_other / max(cpu.mark_wall, 1e-3), 1),
            server_core_busy_pct=core_pct(cpu, self.target.server_core),
            gen_core_busy_pct=core_pct(cpu, self.target.gen_core),
            send_lag_max_ms=round(lag_max * 1000, 1),
            server_rss_kb=(rss_bytes(pid) // 1024) if pid else None,
            disconnects=disconnects,
        )
        if self.sender_node is not None:
            cross = sorted(phase.lat_cross)
            res.p50_cross_ms = percentile(cross, 0.50)
            res.p99_cross_ms = percentile(cross, 0.99)
            res.cross_samples = len(cross)
        if cpu.parts:
            res.part_cpu_s = {n: round(v, 3) for n, v in cpu.part_s.items()}
            res.part_cpu_pct = {n: round(100 * v / max(cpu.mark_wall, 1e-3), 1)
                                for n, v in cpu.mark_part_s.items()}
        if stored0 is not None and stored1 is not None:
            res.stored_s = round((stored1 - stored0) / send_time)
            res.store_backlog = sent - (stored1 - stored0)
        res.passed = (res.loss <= 0 and disconnects == 0 and res.p99_ms is not None
                      and res.p99_ms <= P99_LIMIT_MS)
        res.limit = limit_of(res)
        return res


def core_pct(cpu: CpuWindow, core: int | None) -> float | None:
    if core is None or core not in cpu.mark_cores:
        return None
    return round(100 * cpu.mark_cores[core], 1)


def warmup_rate(deliveries: float, start: float) -> float:
    """A gentle rate for the unmeasured warm-up step."""
    return min([x for x in (deliveries, start, 20000.0) if x > 0])


def limit_of(r: StepResult) -> str:
    """Who was saturated during a step: 'generator', 'server' or ''.

    A process at 90 % of its core is saturated; so is its core at 90 % busy
    with the kernel's loopback work counted in (the process alone may then
    show much less).
    """
    if r.gen_cpu_pct >= 100 * GEN_BOUND:
        return "generator"
    if r.server_cpu_pct >= 100 * GEN_BOUND:
        return "server"
    if (r.gen_core_busy_pct or 0) >= 100 * GEN_BOUND:
        return "generator core"
    if (r.server_core_busy_pct or 0) >= 100 * GEN_BOUND:
        return "server core"
    return ""


def step_line(r: StepResult) -> str:
    """One line per ramp step, for the progress log."""
    return (f"  offered {r.target_deliveries_s:>9,}/s  got {r.deliveries_s:>9,}/s  "
            f"loss {r.loss:>7}  p50 {fmt(r.p50_ms)} p99 {fmt(r.p99_ms)} max {fmt(r.max_ms)} ms  "
            f"srv {r.server_cpu_pct:3.0f}% (core {r.server_core_busy_pct or 0:3.0f}%)  "
            f"gen {r.gen_cpu_pct:3.0f}% (core {r.gen_core_busy_pct or 0:3.0f}%)  "
            f"oth {r.other_cpu_pct:3.0f}%  "
            f"{'PASS' if r.passed else 'FAIL'} {r.limit}")


def fmt(v: float | None) -> str:
    return "   -  " if v is None else f"{v:6.1f}"


async def close_all(clients: list[BenchClient]) -> None:
    """Close our connections and give the loop a moment to send the FINs."""
    for c in clients:
        if c.transport is not None:
            c.transport.close()
    await asyncio.sleep(0.2)
