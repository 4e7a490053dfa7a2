"""The find-max ramp: steps of growing rate until one fails, then refined
between the last pass and the first failure."""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .procstat import others_cpu
from .runner import P99_LIMIT_MS, Runner, StepResult, Target, step_line, wait_quiet

# CPU (fraction of one core) used by other processes during a step above
# which the step is "noisy": a noisy failing step of a ramp is run again.
NOISY = 0.15
NOISY_RETRIES = 2


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
    excl = ({os.getpid()} | ({target.pid} if target.pid else set()) | target.helpers
            | {p for pids in target.parts.values() for p in pids})
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
    for attempt in range(NOISY_RETRIES + 1):
        r = await runner.step(rate, duration)
        log(step_line(r))
        runs.append(r)
        if r.other_cpu_pct < 100 * NOISY or r.disconnects or attempt == NOISY_RETRIES:
            break
        log(f"  (other processes used {r.other_cpu_pct}% of a core: measuring again)")
        await wait_quiet(runner.clients)
        await machine_quiet(runner.target, log)
    return min(runs, key=lambda x: x.other_cpu_pct)


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
