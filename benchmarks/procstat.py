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


def self_cpu() -> float:
    """CPU time of this process (the load generator)."""
    t = os.times()
    return t.user + t.system


class CpuWindow:
    """CPU used by the server and by the generator between start() and stop()."""

    def __init__(self, pid: int | None) -> None:
        self.pid = pid
        self.t0 = self.s0 = self.g0 = 0.0
        self.wall = self.server = self.gen = 0.0
        self.mark_wall = self.mark_server = self.mark_gen = 0.0

    def start(self) -> None:
        self.t0 = time.monotonic()
        self.s0 = cpu_seconds(self.pid) if self.pid else 0.0
        self.g0 = self_cpu()

    def mark(self) -> None:
        """End of the busy part (sending): CPU shares are taken over start()..mark()."""
        self.mark_wall = time.monotonic() - self.t0
        self.mark_server = (cpu_seconds(self.pid) - self.s0) if self.pid else float("nan")
        self.mark_gen = self_cpu() - self.g0

    def stop(self) -> None:
        self.wall = time.monotonic() - self.t0
        self.server = (cpu_seconds(self.pid) - self.s0) if self.pid else float("nan")
        self.gen = self_cpu() - self.g0
