"""CPU and memory of a process, read from /proc (Linux)."""

from __future__ import annotations

import os
import time

_TICK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used so far."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        raw = f.read()
    # The command name may hold spaces; fields are counted after its ')'.
    fields = raw[raw.rfind(b")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def rss_bytes(pid: int) -> int:
    """Resident set size now."""
    with open(f"/proc/{pid}/statm", "rb") as f:
        return int(f.read().split()[1]) * _PAGE


def others_cpu(exclude: set[int]) -> dict[int, float]:
    """CPU seconds so far of every user-space process not in ``exclude``.

    The machine is shared (tests, editors, other benchmarks): what these use
    while a step runs is taken from the two cores the measurement assumes.
    Kernel threads are left out, since softirq work for our own loopback
    traffic runs in them.
    """
    out: dict[int, float] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        pid = int(name)
        if pid in exclude:
            continue
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                raw = f.read()
        except OSError:
            continue
        fields = raw[raw.rfind(b")") + 2:].split()
        # Field 9 (after the name) is flags; PF_KTHREAD = 0x00200000.
        if int(fields[6]) & 0x00200000:
            continue
        out[pid] = (int(fields[11]) + int(fields[12])) / _TICK
    return out


def core_times() -> dict[int, tuple[int, int]]:
    """(busy, total) jiffies per core from /proc/stat."""
    out: dict[int, tuple[int, int]] = {}
    with open("/proc/stat", "rb") as f:
        for line in f:
            if not line.startswith(b"cpu") or line[3:4] == b" ":
                continue
            name, *vals = line.split()
            v = [int(x) for x in vals]
            total = sum(v[:8])  # guest time is already inside user
            out[int(name[3:])] = (total - v[3] - v[4], total)
    return out


def self_cpu() -> float:
    """CPU time of this process (the load generator)."""
    t = os.times()
    return t.user + t.system


def group_seconds(pids: list[int]) -> float:
    """CPU seconds so far of every process in ``pids`` that still exists."""
    total = 0.0
    for pid in pids:
        try:
            total += cpu_seconds(pid)
        except (OSError, IndexError, ValueError):
            pass  # gone: what it used since start() is lost, not negative
    return total


class CpuWindow:
    """CPU used by the server and by the generator between start() and stop().

    A server of several processes (cluster nodes, Redis, PostgreSQL's
    backends) gives them as ``parts``: name -> PIDs, each part measured on
    its own; the server's figure is then the sum of the parts named in
    ``in_server`` instead of ``pid`` alone. Every part is left out of the
    "other processes" noise figure.
    """

    def __init__(self, pid: int | None, helpers: set[int] | None = None,
                 parts: dict[str, list[int]] | None = None,
                 in_server: tuple[str, ...] = ()) -> None:
        self.pid = pid
        self.parts = dict(parts or {})
        self.in_server = in_server if self.parts else ()
        self.t0 = self.s0 = self.g0 = 0.0
        self.wall = self.server = self.gen = 0.0
        self.mark_wall = self.mark_server = self.mark_gen = 0.0
        self.mark_other = 0.0
        self._others: dict[int, float] = {}
        self._p0: dict[str, float] = {}
        #: CPU seconds of each part over start()..stop() and over start()..mark()
        self.part_s: dict[str, float] = {}
        self.mark_part_s: dict[str, float] = {}
        self._exclude = ({os.getpid()} | ({pid} if pid else set()) | (helpers or set())
                         | {p for pids in self.parts.values() for p in pids})

    def _server_now(self) -> float:
        if self.in_server:
            return sum(group_seconds(self.parts[n]) for n in self.in_server)
        return cpu_seconds(self.pid) if self.pid else 0.0

    def start(self) -> None:
        self.t0 = time.monotonic()
        self._p0 = {n: group_seconds(p) for n, p in self.parts.items()}
        self.s0 = self._server_now() if (self.pid or self.in_server) else 0.0
        self.g0 = self_cpu()
        self._others = others_cpu(self._exclude)
        self._cores = core_times()
        self.mark_cores: dict[int, float] = {}

    def mark(self) -> None:
        """End of the busy part (sending): CPU shares are taken over start()..mark()."""
        self.mark_wall = time.monotonic() - self.t0
        self.mark_server = ((self._server_now() - self.s0) if (self.pid or self.in_server)
                            else float("nan"))
        self.mark_part_s = {n: group_seconds(p) - self._p0[n] for n, p in self.parts.items()}
        self.mark_gen = self_cpu() - self.g0
        cores = core_times()
        # Busy share of each core, kernel work included: loopback TCP is
        # processed in softirq, often in ksoftirqd, which no process is billed for.
        self.mark_cores = {
            c: (b - self._cores[c][0]) / max(1, t - self._cores[c][1])
            for c, (b, t) in cores.items() if c in self._cores}
        now = others_cpu(self._exclude)
        self.mark_other = sum(v - self._others.get(p, 0.0) for p, v in now.items())

    def stop(self) -> None:
        self.wall = time.monotonic() - self.t0
        self.server = ((self._server_now() - self.s0) if (self.pid or self.in_server)
                       else float("nan"))
        self.part_s = {n: group_seconds(p) - self._p0[n] for n, p in self.parts.items()}
        self.gen = self_cpu() - self.g0
