"""Benchmark clients: one asyncio protocol per simulated user.

The receive path is the generator's bottleneck (a fast server delivers
millions of lines per second to one Python process), so after login a client
does not parse lines at all: it counts the step's marker with ``bytes.count``
(C speed) and only *probe* clients, spread over the room's join order, run a
regex over their input to read each message's send time and sequence number.
Loss is therefore exact on every client; latency is sampled on the probes.

Every benchmark message text is ``^<step>=<send µs>:<sender>:<seq> <padding>``
(e.g. ``^a=1234567:3:42 xxxx``): ASCII that neither JSON nor IRC escapes, and a
two-byte marker ``^<step>`` that no server writes on its own, so that late
messages of one ramp step are never counted in the next.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Callable

_BASE_NS = time.monotonic_ns()


def now_us() -> int:
    """Microseconds on the monotonic clock since this module was loaded."""
    return (time.monotonic_ns() - _BASE_NS) // 1000


STEP_CHARS = "abcdefghijklmnopqrstuvwxyz"


class Phase:
    """What clients count and measure during one measured step."""

    __slots__ = ("marker", "m0", "m1", "regex", "lat", "disorder", "probe_rx", "sender_node",
                 "lat_cross")

    def __init__(self, step: int, sender_node: dict[bytes, int] | None = None) -> None:
        ch = STEP_CHARS[step % len(STEP_CHARS)]
        self.marker = b"^" + ch.encode()
        self.m0 = self.marker[0]
        self.m1 = self.marker[1]
        self.regex = re.compile(rb"\^" + ch.encode() + rb"=(\d+):(\d+):(\d+)")
        self.lat: list[int] = []  # µs, from probes
        self.disorder = 0  # probe saw a sender's seq go backwards
        self.probe_rx = 0
        # Several nodes (benchmarks/cluster.py): the node of each sender, by
        # the sender number in the text, so that the probes' samples of
        # messages that crossed from one node to another are kept apart too.
        self.sender_node = sender_node
        self.lat_cross: list[int] = []  # µs, the subset of lat that crossed nodes


def make_text(step: int, t_us: int, sender: int, seq: int, pad: str) -> str:
    """The message text that carries the step marker, send time and sequence."""
    return f"^{STEP_CHARS[step % len(STEP_CHARS)]}={t_us}:{sender}:{seq} {pad}"


class BenchClient(asyncio.Protocol):
    """One connection. Subclasses know how to log in and how to send."""

    __slots__ = (
        "idx", "name", "transport", "logged", "login_t", "buf", "phase", "count", "last",
        "probe", "seqs", "rx_bytes", "lost_conn", "error", "loop", "irc", "node",
    )

    def __init__(self, idx: int, loop: asyncio.AbstractEventLoop) -> None:
        self.idx = idx
        self.name = f"u{idx}"
        self.transport: asyncio.Transport | None = None
        self.loop = loop
        self.logged: asyncio.Future[float] = loop.create_future()
        self.login_t = 0.0
        self.buf = b""
        self.phase: Phase | None = None
        self.count = 0
        self.last = 0
        self.probe = False
        self.seqs: dict[bytes, int] = {}
        self.rx_bytes = 0
        self.lost_conn = False
        self.error: str | None = None
        self.irc = False
        self.node = 0  # which of the server's nodes (ports) this client is on

    # -- connection ---------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport.
        self.transport = transport  # type: ignore[assignment]
        self.start_login()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost_conn = True
        if not self.logged.done():
            self.logged.set_exception(ConnectionError(self.error or f"closed: {exc}"))

    def set_phase(self, phase: Phase | None, probe: bool) -> None:
        self.phase = phase
        self.probe = probe
        self.count = 0
        self.last = 0
        self.buf = b""
        self.seqs = {}

    # -- receiving ----------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        self.rx_bytes += len(data)
        if not self.logged.done():
            self.login_data(data)
            return
        ph = self.phase
        if self.irc and b"PING" in data:
            self.irc_pings(data)
        if ph is None:
            return
        if not self.probe:
            # A marker split across two reads is counted here, because a
            # marker's bytes differ so one read cannot end inside another.
            if self.last == ph.m0 and data[0] == ph.m1:
                self.count += 1
            self.count += data.count(ph.marker)
            self.last = data[-1]
            return
        data = self.buf + data
        cut = data.rfind(b"\n") + 1
        self.buf = data[cut:]
        if not cut:
            return
        now = now_us()
        lat = ph.lat
        seqs = self.seqs
        where = ph.sender_node
        node = self.node
        n = 0
        for t, s, q in ph.regex.findall(data, 0, cut):
            n += 1
            d = now - int(t)
            lat.append(d)
            if where is not None and where.get(s, node) != node:
                ph.lat_cross.append(d)
            qi = int(q)
            if seqs.get(s, -1) >= qi:
                ph.disorder += 1
            seqs[s] = qi
        self.count += n
        ph.probe_rx += n

    def irc_pings(self, data: bytes) -> None:
        for line in data.split(b"\n"):
            if line.startswith(b"PING"):
                assert self.transport is not None
                self.transport.write(b"PONG" + line[4:].rstrip(b"\r") + b"\r\n")

    # -- subclass API ---------------------------------------------------------
    def start_login(self) -> None:
        raise NotImplementedError

    def login_data(self, data: bytes) -> None:
        raise NotImplementedError

    def room_line(self, text: str) -> bytes:
        raise NotImplementedError

    def private_line(self, to: str, text: str) -> bytes:
        raise NotImplementedError

    def _login_done(self, rest: bytes) -> None:
        self.login_t = time.monotonic()
        self.buf = b""
        if not self.logged.done():
            self.logged.set_result(self.login_t)
        del rest  # no step is active during login, so nothing in it is counted

    def _login_fail(self, why: str) -> None:
        self.error = why
        if not self.logged.done():
            self.logged.set_exception(ConnectionError(why))
        if self.transport is not None:
            self.transport.close()


class ChatservClient(BenchClient):
    """chatserv JSON-lines client (docs/PROTOCOL.md)."""

    __slots__ = ("features",)

    def __init__(self, idx: int, loop: asyncio.AbstractEventLoop,
                 features: tuple[str, ...] = ("presence",)) -> None:
        super().__init__(idx, loop)
        self.features = list(features)

    def start_login(self) -> None:
        frame: dict[str, object] = {"cmd": "login", "user": self.name}
        if self.features:
            frame["features"] = self.features
        assert self.transport is not None
        self.transport.write(json.dumps(frame).encode() + b"\n")

    def login_data(self, data: bytes) -> None:
        data = self.buf + data
        cut = data.rfind(b"\n") + 1
        self.buf = data[cut:]
        lines = data[:cut].split(b"\n")
        for i, line in enumerate(lines):
            if not line:
                continue
            # The users list on login grows with the room (10,000 names at
            # the end of a storm): recognise it without decoding it.
            if len(line) > 2048:
                if b'"users"' in line[:64]:
                    self._login_done(b"\n".join(lines[i + 1:]) + self.buf)
                    return
                continue
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            cmd = obj.get("cmd") if isinstance(obj, dict) else None
            if cmd == "users":
                self._login_done(b"\n".join(lines[i + 1:]) + self.buf)
                return
            if cmd == "error":
                self._login_fail(f"{obj.get('code')}: {obj.get('msg')}")
                return

    def room_line(self, text: str) -> bytes:
        return b'{"cmd":"broadcast","msg":"' + text.encode() + b'"}\n'

    def private_line(self, to: str, text: str) -> bytes:
        return b'{"cmd":"message","to":"' + to.encode() + b'","msg":"' + text.encode() + b'"}\n'


class IrcClient(BenchClient):
    """IRC client: (PASS) NICK USER, wait for 001, then JOIN and wait for 366."""

    __slots__ = ("password", "channel", "join")

    def __init__(self, idx: int, loop: asyncio.AbstractEventLoop, password: str | None,
                 channel: str = "#bench", join: bool = True) -> None:
        super().__init__(idx, loop)
        self.password = password
        self.channel = channel
        self.join = join
        self.irc = True

    def start_login(self) -> None:
        out = b""
        if self.password:
            out += b"PASS " + self.password.encode() + b"\r\n"
        n = self.name.encode()
        out += b"NICK " + n + b"\r\nUSER " + n + b" 0 * :" + n + b"\r\n"
        assert self.transport is not None
        self.transport.write(out)

    def login_data(self, data: bytes) -> None:
        data = self.buf + data
        cut = data.rfind(b"\n") + 1
        self.buf = data[cut:]
        lines = data[:cut].split(b"\n")
        assert self.transport is not None
        for line in lines:
            if line.startswith(b"PING"):
                self.transport.write(b"PONG" + line[4:].rstrip(b"\r") + b"\r\n")
                continue
            if line.startswith(b"ERROR"):
                self._login_fail(line.decode(errors="replace").strip())
                return
            parts = line.split(b" ", 3)
            if len(parts) < 2:
                continue
            code = parts[1]
            if code == b"001":
                if not self.join:
                    self._login_done(b"")
                    return
                self.transport.write(b"JOIN " + self.channel.encode() + b"\r\n")
            elif code == b"366":
                self._login_done(b"")
                return
            elif code in (b"433", b"432", b"464", b"465", b"471", b"473", b"474", b"475"):
                self._login_fail(line.decode(errors="replace").strip())
                return

    def room_line(self, text: str) -> bytes:
        return b"PRIVMSG " + self.channel.encode() + b" :" + text.encode() + b"\r\n"

    def private_line(self, to: str, text: str) -> bytes:
        return b"PRIVMSG " + to.encode() + b" :" + text.encode() + b"\r\n"


ClientFactory = Callable[[int, asyncio.AbstractEventLoop], BenchClient]
