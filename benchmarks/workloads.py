"""The workloads: fanout, conns, private.

Each sets up its clients, then measures with :mod:`.runner` (one step),
:mod:`.ramp` (find-max) and :mod:`.kernel_timing` (one broadcast to a large
room).

A workload runs inside one asyncio loop (uvloop when installed) in the
generator process, which is pinned to its own core. Sending is open-loop: a
1 ms tick sends every message whose scheduled time has come, whatever the
server is doing, so a slow server shows up as latency and loss rather than as
a generator that politely waits for it.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from typing import Any

from .kernel_timing import timed_broadcast
from .procstat import rss_bytes
from .ramp import find_max, fixed_step, ramp_limit
from .runner import (
    Route,
    Runner,
    StepResult,
    Target,
    close_all,
    connect_clients,
    pick_probes,
    setup_concurrency,
    wait_quiet,
    warmup_rate,
)


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
    cpu = target.cpu_window()
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
        # Everything the clients received while logging in (history, member
        # lists, membership pushes): O(N²) with whole lists, O(N) lazily.
        "login_bytes_to_clients": sum(c.rx_bytes for c in cl),
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
        result["broadcast"] = await timed_broadcast(target, cl, pad, log)
    await close_all(cl)
    return result
