"""The workloads: fanout, conns, private; and the find-max ramp.

A workload runs inside one asyncio loop (uvloop when installed) in the
generator process, which is pinned to its own core. Sending is open-loop: a
1 ms tick sends every message whose scheduled time has come, whatever the
server is doing, so a slow server shows up as latency and loss rather than as
a generator that politely waits for it.
"""

from __future__ import annotations

import asyncio
import gc
import math
import os
import socket
import sqlite3
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .client import BenchClient, ChatservClient, IrcClient, Phase, make_text, now_us
from .procstat import CpuWindow, others_cpu, rss_bytes

# A step passes when p99 latency is at most this and nothing was lost.
P99_LIMIT_MS = 200.0
# Generator CPU (fraction of its core) from which the generator, not the
# server, is taken to be the limit of a step.
GEN_BOUND = 0.90
# CPU (fraction of one core) used by other processes during a step above
# which the step is "noisy": a noisy failing step of a ramp is run again.
NOISY = 0.15
NOISY_RETRIES = 2
# Logins in flight while setting up fanout and private rooms (setup is not
# measured): ngircd's listen backlog is 10, so more in flight costs it SYN
# retries; InspIRCd completes registrations only on a once-a-second tick, so
# it needs many in flight.
SETUP_CONCURRENCY = {"ngircd": 10, "inspircd": 2000}
SETUP_CONCURRENCY_DEFAULT = 64


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

    async def one(i: int) -> None:
        async def go() -> None:
            _, proto = await loop.create_connection(lambda: make(start + i, loop),
                                                    target.host, target.port)
            assert isinstance(proto, BenchClient)
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


# A route is (sender, recipients per message, private recipient name or None).
Route = tuple[BenchClient, str | None]


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

    async def step(self, deliveries_s: float, duration: float, drain: float = 2.0) -> StepResult:
        """Offer ``deliveries_s`` for ``duration`` s and measure what arrives."""
        rate = deliveries_s / self.per_msg
        total = max(1, int(round(rate * duration)))
        self.step_no += 1
        step = self.step_no
        phase = Phase(step)
        for i, c in enumerate(self.clients):
            c.set_phase(phase, i in self.probes)
        routes = self.routes
        nroutes = len(routes)
        seqs = [0] * nroutes
        pad = self.pad
        cpu = CpuWindow(self.target.pid, self.target.helpers)
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


@dataclass
class RampResult:
    steps: list[StepResult] = field(default_factory=list)
    best: StepResult | None = None
    first_fail: StepResult | None = None
    retries: int = 0


async def find_max(runner: Runner, start: float, factor: float, duration: float,
                   ceiling: float, refine: int, log: Callable[[str], None]) -> RampResult:
    """Ramp the offered deliveries/s geometrically until a step fails, then bisect."""
    out = RampResult()
    rate = start
    lo: float | None = None
    hi: float | None = None
    floor = min(start, 1000.0)
    descending = False
    while rate <= ceiling:
        r = await measured(runner, rate, duration, out, log)
        if r.disconnects:
            hi = rate
            out.first_fail = r
            break
        if r.passed:
            lo = rate
            if out.best is None or r.deliveries_s > out.best.deliveries_s:
                out.best = r
            rate *= factor
        elif lo is None and rate / factor >= floor:
            # Even the first rate failed: step down until one passes, so a
            # slow server still gets a figure instead of zero.
            hi = rate
            out.first_fail = r
            rate /= factor
            descending = True
        else:
            hi = rate
            out.first_fail = out.first_fail if descending else r
            break
        if descending and r.passed:
            break
    for _ in range(refine):
        if lo is None or hi is None or (out.first_fail and out.first_fail.disconnects):
            break
        mid = math.sqrt(lo * hi)
        r = await measured(runner, mid, duration, out, log)
        if r.disconnects:
            break
        if r.passed:
            lo = mid
            if out.best is None or r.deliveries_s > out.best.deliveries_s:
                out.best = r
        else:
            hi = mid
    return out


async def machine_quiet(target: Target, log: Callable[[str], None],
                        limit: float = 30.0) -> None:
    """Wait (at most ``limit`` s) for a second in which other processes are idle."""
    excl = {os.getpid()} | ({target.pid} if target.pid else set()) | target.helpers
    t0 = time.monotonic()
    while True:
        a = others_cpu(excl)
        await asyncio.sleep(1.0)
        b = others_cpu(excl)
        used = sum(v - a.get(p, 0.0) for p, v in b.items())
        if used < NOISY / 2:
            return
        if time.monotonic() - t0 > limit:
            log(f"  (machine still busy after {limit:.0f} s: {100 * used:.0f}% of a core)")
            return


async def measured(runner: Runner, rate: float, duration: float, out: RampResult,
                   log: Callable[[str], None]) -> StepResult:
    """One ramp step; a failure while other processes took CPU is measured again."""
    for attempt in range(NOISY_RETRIES + 1):
        r = await runner.step(rate, duration)
        out.steps.append(r)
        log(step_line(r))
        await wait_quiet(runner.clients)
        if r.passed or r.disconnects or r.other_cpu_pct < 100 * NOISY:
            return r
        if attempt < NOISY_RETRIES:
            log(f"  (other processes used {r.other_cpu_pct}% of a core: measuring again)")
            out.retries += 1
            await machine_quiet(runner.target, log)
    return r


async def fixed_step(runner: Runner, rate: float, duration: float,
                     log: Callable[[str], None]) -> StepResult:
    """A fixed-rate measurement; if other processes took CPU, the quietest of up to 3."""
    runs: list[StepResult] = []
    for _ in range(NOISY_RETRIES + 1):
        r = await runner.step(rate, duration)
        log(step_line(r))
        runs.append(r)
        if r.other_cpu_pct < 100 * NOISY or r.disconnects:
            break
        log(f"  (other processes used {r.other_cpu_pct}% of a core: measuring again)")
        await wait_quiet(runner.clients)
        await machine_quiet(runner.target, log)
    return min(runs, key=lambda x: x.other_cpu_pct)


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


# ---------------------------------------------------------------------------
# workloads


async def fanout(target: Target, *, clients: int, senders: int, deliveries: float,
                 rate: float, duration: float, find: bool, start: float, factor: float, ceiling: float,
                 refine: int, repeat: int, probes: int, pad: int, concurrency: int,
                 log: Callable[[str], None]) -> dict[str, Any]:
    """N clients in one room, S of them sending at an aggregate open-loop rate."""
    # Setup is not what is measured: a few logins in flight at a time keep
    # small listen backlogs (ngircd's is 10) from costing SYN retries.
    cl, login = await connect_clients(target, clients, concurrency=concurrency or setup_concurrency(target))
    if len(cl) < clients:
        await close_all(cl)
        return {"error": "not every client logged in", "login": login}
    gc.freeze()
    senders = max(1, min(senders, len(cl)))
    # Senders spread over the join order, like probes, so neither end of
    # the server's member list is favoured.
    sidx = sorted(pick_probes(len(cl), senders))
    routes: list[Route] = [(cl[i], None) for i in sidx]
    # IRC servers do not echo a channel message to its sender; chatserv does.
    per_msg = len(cl) - 1 if target.irc else len(cl)
    deliveries = deliveries or rate * per_msg
    runner = Runner(target, cl, routes, per_msg, pick_probes(len(cl), probes), pad)
    # Warm-up: flushes pending presence frames and the server's cold paths.
    await runner.step(warmup_rate(deliveries, start), 0.5)
    await wait_quiet(cl)
    result: dict[str, Any] = {"login": login, "senders": senders, "recipients_per_msg": per_msg}
    if find:
        bests: list[StepResult] = []
        ramps: list[dict[str, Any]] = []
        for i in range(repeat):
            log(f" ramp {i + 1}/{repeat}")
            ramp = await find_max(runner, start, factor, duration, ceiling, refine, log)
            ramps.append({
                "best": ramp.best.row() if ramp.best else None,
                "first_fail": ramp.first_fail.row() if ramp.first_fail else None,
                "steps": [s.row() for s in ramp.steps],
            })
            if ramp.best:
                bests.append(ramp.best)
            if ramp.first_fail and ramp.first_fail.disconnects:
                break
        bests.sort(key=lambda r: r.deliveries_s)
        med = bests[len(bests) // 2] if bests else None
        fails = [r["first_fail"] for r in ramps if r["first_fail"]]
        result.update({
            "max_deliveries_s": med.deliveries_s if med else 0,
            "max_runs": [b.deliveries_s for b in bests],
            "at_max": med.row() if med else None,
            "limit": ramp_limit(med, fails),
            "ramps": ramps,
        })
    else:
        r = await fixed_step(runner, deliveries, duration, log)
        result.update(r.row())
    await close_all(cl)
    return result


def ramp_limit(best: StepResult | None, fails: list[dict[str, Any]]) -> str:
    """What stopped the ramp: the generator's CPU, the server, or the ceiling."""
    if not fails:
        return "ceiling (no step failed)"
    f = fails[-1]
    why = []
    if f["disconnects"]:
        why.append(f"{f['disconnects']} disconnects")
    if f["loss"] > 0:
        why.append(f"loss {f['loss']}")
    if f["p99_ms"] is None or f["p99_ms"] > P99_LIMIT_MS:
        why.append(f"p99 {f['p99_ms']} ms")
    who = f["limit"] or "neither saturated"
    if best is not None and best.limit == "generator":
        who = "generator"
    return f"{who} ({', '.join(why)})"


async def private(target: Target, *, pairs: int, deliveries: float, rate: float,
                  duration: float, find: bool,
                  start: float, factor: float, ceiling: float, refine: int, probes: int, pad: int,
                  concurrency: int, log: Callable[[str], None]) -> dict[str, Any]:
    """Pairs of clients sending private messages to each other."""
    n = 2 * pairs
    cl, login = await connect_clients(target, n, join=False,
                                      concurrency=concurrency or setup_concurrency(target))
    if len(cl) < n:
        await close_all(cl)
        return {"error": "not every client logged in", "login": login}
    gc.freeze()
    cl.sort(key=lambda c: c.idx)
    routes: list[Route] = [(c, cl[i ^ 1].name) for i, c in enumerate(cl)]
    deliveries = deliveries or rate
    runner = Runner(target, cl, routes, 1, pick_probes(n, probes), pad)
    await runner.step(warmup_rate(deliveries, start), 0.5)
    await wait_quiet(cl)
    result: dict[str, Any] = {"login": login, "pairs": pairs}
    if find:
        ramp = await find_max(runner, start, factor, duration, ceiling, refine, log)
        result.update({
            "max_deliveries_s": ramp.best.deliveries_s if ramp.best else 0,
            "at_max": ramp.best.row() if ramp.best else None,
            "limit": ramp_limit(ramp.best, [ramp.first_fail.row()] if ramp.first_fail else []),
            "steps": [s.row() for s in ramp.steps],
        })
    else:
        r = await fixed_step(runner, deliveries, duration, log)
        result.update(r.row())
    await close_all(cl)
    return result


async def conns(target: Target, *, clients: int, timeout: float, concurrency: int, pad: int,
                log: Callable[[str], None]) -> dict[str, Any]:
    """A login storm into one room, then one broadcast to everyone."""
    pid = target.pid
    rss0 = rss_bytes(pid) if pid else None
    cpu = CpuWindow(pid, target.helpers)
    cpu.start()
    cl, login = await connect_clients(target, clients, concurrency=concurrency, timeout=timeout)
    cpu.mark()
    cpu.stop()
    log(f"  {login['logged_in']}/{clients} logged in, last at {login['login_time_s']} s")
    gc.freeze()
    # Membership pushes are coalesced over a window of up to 2 s; RSS is
    # read once they are out, so it is the steady cost of a connection.
    await wait_quiet(cl, quiet=0.5, limit=15)
    rss1 = rss_bytes(pid) if pid else None
    result: dict[str, Any] = {
        "login": login,
        "logged_in": login["logged_in"],
        "all_logged_in_s": login["all_logged_in_s"],
        "server_cpu_login_s": round(cpu.server, 3),
        "gen_cpu_login_pct": round(100 * cpu.gen / cpu.wall, 1),
        "other_cpu_login_pct": round(100 * cpu.mark_other / max(cpu.mark_wall, 1e-3), 1),
        "server_rss_base_kb": rss0 // 1024 if rss0 is not None else None,
        "server_rss_kb": rss1 // 1024 if rss1 is not None else None,
        "rss_per_conn_kb": (round((rss1 - rss0) / 1024 / len(cl), 2)
                            if rss0 is not None and rss1 is not None and cl else None),
    }
    if cl:
        if SO_TIMESTAMPNS:
            b = await kernel_timed_broadcast(target, cl, pad)
        else:
            b = await app_timed_broadcast(target, cl, pad)
        log(f"  broadcast to {b['expected']}: got {b['received']}, p50 {b['p50_ms']} "
            f"p99 {b['p99_ms']} max {b['max_ms']} ms ({b['timing']})")
        result["broadcast"] = b
    await close_all(cl)
    return result


BROADCAST_STEP = 25  # marker "^z": never used by a ramp's first 25 steps
# Python does not export it; 35 on Linux (asm-generic/socket.h,
# SO_TIMESTAMPNS_OLD: a struct timespec of two longs on 64-bit).
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35 if sys.platform == "linux" else 0)


async def app_timed_broadcast(target: Target, cl: list[BenchClient], pad: int) -> dict[str, Any]:
    """One broadcast, timed when the generator gets round to reading each client."""
    runner = Runner(target, cl, [(cl[0], None)], len(cl) - 1 if target.irc else len(cl),
                    set(range(len(cl))), pad)
    r = await runner.step(1.0, 0.0, drain=10.0)
    out = {k: getattr(r, k) for k in (
        "expected", "received", "loss", "p50_ms", "p99_ms", "max_ms", "disconnects")}
    out["timing"] = "as read by the generator"
    return out


async def kernel_timed_broadcast(target: Target, cl: list[BenchClient], pad: int,
                                 timeout: float = 10.0) -> dict[str, Any]:
    """One broadcast to the whole room, timed by the kernel's receive timestamps.

    With 10,000 clients the generator needs ~100 ms just to read every
    socket once, so latency taken when Python reads a client measures the
    generator. Instead reading is paused, every client socket gets
    SO_TIMESTAMPNS, and the time the last bytes of the message reached each
    socket (stamped by the kernel) is compared with the send time.
    """
    socks: list[socket.socket | None] = []
    for c in cl:
        tr = c.transport
        if tr is None or tr.is_closing():
            socks.append(None)
            continue
        tr.pause_reading()
        fd = tr.get_extra_info("socket").fileno()
        # The same descriptor, not a dup: 10,000 more would pass the
        # open-file limit. detach() below hands it back unclosed.
        sk = socket.socket(fileno=fd)
        sk.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        sk.setblocking(False)
        socks.append(sk)
    try:
        # Anything still queued before the message is read and forgotten.
        for maybe in socks:
            if maybe is None:
                continue
            try:
                while maybe.recv(1 << 16):
                    pass
            except OSError:
                pass
        sender = cl[0]
        pending = {i for i, s in enumerate(socks) if s is not None and (i or not target.irc)}
        expected = len(pending)
        bufs: dict[int, bytes] = {}
        marker = Phase(BROADCAST_STEP).marker
        lat: list[int] = []
        cspace = socket.CMSG_SPACE(16)
        t_send = time.clock_gettime_ns(time.CLOCK_REALTIME)
        assert sender.transport is not None
        sender.transport.write(sender.room_line(
            make_text(BROADCAST_STEP, now_us(), 0, 0, "x" * max(0, pad))))
        deadline = time.monotonic() + timeout
        # The kernel stamps arrival whenever we read, so read rarely: a sweep
        # of recvmsg over 10,000 sockets would take the sockets' locks while
        # the server writes to them, and slow down what is being measured.
        pause = 0.25
        while pending and time.monotonic() < deadline:
            await asyncio.sleep(min(pause, max(0.0, deadline - time.monotonic())))
            pause = min(pause * 2, 2.0)
            for i in list(pending):
                sock = socks[i]
                assert sock is not None
                while True:
                    try:
                        data, anc, _, _ = sock.recvmsg(1 << 16, cspace)
                    except BlockingIOError:
                        break
                    except OSError:
                        pending.discard(i)
                        break
                    if not data:
                        pending.discard(i)
                        break
                    buf = bufs.get(i, b"") + data
                    ts = None
                    for level, kind, cdata in anc:
                        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                            sec, nsec = struct.unpack("qq", cdata[:16])
                            ts = sec * 1_000_000_000 + nsec
                    if marker in buf and ts is not None:
                        lat.append((ts - t_send) // 1000)
                        pending.discard(i)
                        bufs.pop(i, None)
                        break
                    bufs[i] = buf
    finally:
        for c, maybe in zip(cl, socks, strict=True):
            if maybe is not None:
                maybe.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 0)
                maybe.detach()
                if c.transport is not None and not c.transport.is_closing():
                    c.transport.resume_reading()
    lat.sort()
    return {
        "expected": expected, "received": len(lat), "loss": expected - len(lat),
        "p50_ms": percentile(lat, 0.5), "p99_ms": percentile(lat, 0.99),
        "max_ms": percentile(lat, 1.0),
        "disconnects": sum(1 for c in cl if c.lost_conn),
        "timing": "kernel receive timestamps",
    }
