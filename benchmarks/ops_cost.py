"""What the operations features cost (issue 14): ``python -m benchmarks.ops_cost CMD``.

* ``hub-ab OTHER_HUB_PY``: CPU per room message fanned out to 200 in-process
  participants, this checkout's ``chatserv/hub.py`` against another version of
  the file (e.g. ``git show main:chatserv/hub.py > /tmp/hub_main.py``), loaded
  side by side in one process and run interleaved, so both see the same machine.
* ``scrape-cost``: server CPU per ``/metrics`` scrape with 200 clients logged in.
* ``log-flood [VENV]``: bytes the log grows by while one client logs in and out
  2,000 times and floods past the rate limit (VENV: whose ``twistd`` to run,
  default this one's; give another checkout's to compare).
"""

from __future__ import annotations

import importlib.util
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from types import ModuleType
from typing import Any

TWISTD = str(Path(sys.executable).with_name("twistd"))


class _Sink:
    __slots__ = ("n",)

    def __init__(self) -> None:
        self.n = 0

    def receive_message(self, message: Any) -> None:
        self.n += 1

    def receive_presence(self, change: Any) -> None:
        pass

    def receive_typing(self, typing: Any) -> None:
        pass


def _load(path: str, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    module.__package__ = "chatserv"  # its relative imports resolve to this checkout
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


class _Committed:
    """A message log that commits at once: both hubs pay the same for storage
    (nothing), and the fan-out runs inside ``broadcast`` where it is timed."""

    keeps_history = False

    def append_then(self, message: Any, deliver: Any) -> None:
        deliver(message)

    def correct_then(self, correction: Any, deliver: Any) -> None:
        deliver(correction)

    def congested(self) -> bool:
        return False


def hub_ab(other: str, reps: int = 15, messages: int = 10_000) -> None:
    from twisted.internet.testing import MemoryReactorClock

    import chatserv.hub as this

    hubs: dict[str, Any] = {}
    for label, module in (("other", _load(other, "chatserv._hub_other")), ("this", this)):
        hub = module.Hub(MemoryReactorClock(), history_size=50, store=_Committed())
        sessions = [hub.login(_Sink(), f"u{i}") for i in range(200)]
        hub.flush_all_presence()
        hubs[label] = (hub, sessions[0])
    runs: dict[str, list[float]] = {"other": [], "this": []}
    for rep in range(reps):
        for label in ("other", "this") if rep % 2 else ("this", "other"):
            hub, sender = hubs[label]
            start = time.process_time()
            for _ in range(messages):
                hub.broadcast(sender, "hola")
            runs[label].append((time.process_time() - start) / messages * 1e6)
    for label, times in runs.items():
        times.sort()
        print(
            f"{label}: min {times[0]:.2f} median {times[len(times) // 2]:.2f} µs per message "
            f"to 200 recipients ({reps} interleaved runs of {messages:,})"
        )


def _start(twistd: str, work: str, *args: str) -> tuple[subprocess.Popen[bytes], str]:
    log = os.path.join(work, "twistd.log")
    cmd = [twistd, "-n", "--pidfile=", f"--logfile={log}", "chatserv", "--db", ":memory:"]
    proc = subprocess.Popen([*cmd, "--listen", "tcp:0:interface=127.0.0.1", *args], cwd=work)
    for _ in range(400):
        if os.path.exists(log) and re.search(r"listening on .*port=\d+", Path(log).read_text()):
            return proc, log
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"twistd did not start; see {log}")


def _cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def scrape_cost(scrapes: int = 200) -> None:
    with tempfile.TemporaryDirectory() as work:
        proc, log = _start(
            TWISTD, work, "--rate-limit", "0", "--metrics", "tcp:0:interface=127.0.0.1"
        )
        try:
            for _ in range(100):
                text = Path(log).read_text()
                found = re.search(r"metrics at http://127\.0\.0\.1:(\d+)", text)
                if found:
                    break
                time.sleep(0.05)
            assert found, text
            chat = int(re.findall(r"listening on .*port=(\d+)", text)[0])
            url = f"http://127.0.0.1:{found.group(1)}/metrics"
            clients = []
            for i in range(200):
                sock = socket.create_connection(("127.0.0.1", chat))
                sock.sendall(f'{{"cmd":"login","user":"u{i}"}}\n'.encode())
                clients.append(sock)
            time.sleep(2)
            urllib.request.urlopen(url).read()
            idle_start = _cpu(proc.pid)
            time.sleep(5)
            idle = (_cpu(proc.pid) - idle_start) / 5
            start, t0 = _cpu(proc.pid), time.monotonic()
            for _ in range(scrapes):
                body = urllib.request.urlopen(url).read()
            used, wall = _cpu(proc.pid) - start, time.monotonic() - t0
        finally:
            proc.terminate()
            proc.wait(timeout=15)
    per = (used - idle * wall) / scrapes * 1000
    print(
        f"{scrapes} scrapes with 200 clients online: {per:.2f} ms of server CPU per scrape "
        f"({len(body)} bytes); at a 15 s interval {per / 15 / 10:.3f} % of a core"
    )


def log_flood(venv: str | None = None, cycles: int = 2000) -> None:
    twistd = str(Path(venv) / "bin" / "twistd") if venv else TWISTD
    with tempfile.TemporaryDirectory() as work:
        proc, log = _start(twistd, work)
        try:
            port = int(re.findall(r"listening on .*port=(\d+)", Path(log).read_text())[0])
            before = os.path.getsize(log)
            t0 = time.monotonic()
            done = 0
            while done < cycles and time.monotonic() - t0 < 30:
                sock = socket.create_connection(("127.0.0.1", port))
                sock.sendall(f"bot{done}\n/quit\n".encode())
                try:
                    while sock.recv(65536):
                        pass
                except OSError:
                    pass
                sock.close()
                done += 1
            elapsed = time.monotonic() - t0
            flooder = socket.create_connection(("127.0.0.1", port))
            flooder.sendall(b"flood\n" + b"x\n" * 5000)
            time.sleep(1.5)
            flooder.close()
            time.sleep(0.5)
        finally:
            proc.terminate()
            proc.wait(timeout=15)
        grown = os.path.getsize(log) - before
        lines = Path(log).read_text().count("\n")
    print(
        f"{twistd}: {done} login/quit cycles in {elapsed:.1f} s, then 5,000 lines past the rate "
        f"limit: the log grew {grown:,} bytes ({lines} lines in all, start-up and shutdown included)"
    )


def main(argv: list[str]) -> int:
    if argv[:1] == ["hub-ab"] and len(argv) == 2:
        hub_ab(argv[1])
    elif argv == ["scrape-cost"]:
        scrape_cost()
    elif argv[:1] == ["log-flood"] and len(argv) <= 2:
        log_flood(argv[1] if len(argv) == 2 else None)
    else:
        print(__doc__)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
