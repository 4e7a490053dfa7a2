"""One broadcast to a whole room, timed as the generator reads it or, for
large rooms, by the kernel's receive timestamps."""

from __future__ import annotations

import asyncio
import socket
import struct
import sys
import time
from collections.abc import Callable
from typing import Any

from .client import BenchClient, Phase, make_text, now_us
from .runner import Runner, Target, percentile

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


async def timed_broadcast(target: Target, cl: list[BenchClient], pad: int,
                          log: Callable[[str], None], label: str = "broadcast") -> dict[str, Any]:
    """One broadcast from ``cl[0]`` to the room, timed by the kernel where it
    can stamp arrivals (Linux), else as the generator reads it; logged."""
    if SO_TIMESTAMPNS:
        b = await kernel_timed_broadcast(target, cl, pad)
    else:
        b = await app_timed_broadcast(target, cl, pad)
    log(f"  {label} to {b['expected']}: got {b['received']}, p50 {b['p50_ms']} "
        f"p99 {b['p99_ms']} max {b['max_ms']} ms ({b['timing']})")
    return b
