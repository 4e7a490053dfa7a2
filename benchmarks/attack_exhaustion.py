"""Re-runs the connection, hashing and lock-out attacks of issue 11 (items 4-6).

Starts the real ``twistd -n chatserv`` on a temporary SQLite database over
loopback, attacks it, and prints what the attacker and a bystander saw, with
the server's RSS and CPU from /proc. Every loop is bounded in count and time.

    python -m benchmarks.attack_exhaustion flood --conns 20100 --line-bytes 65000
    python -m benchmarks.attack_exhaustion register --conns 200 --seconds 30
    python -m benchmarks.attack_exhaustion lockout

``--code DIR`` runs the chatserv package found in DIR instead (e.g. an export
of ``main``), for before/after figures with the same script.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.procstat import cpu_seconds, rss_bytes

TWISTD = str(Path(sys.executable).with_name("twistd"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    def __init__(self, code: str | None, args: list[str], nofile: int | None) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="attack-"))
        self.port = free_port()
        self.db = self.dir / "chat.sqlite3"
        env = dict(os.environ)
        if code:
            env["PYTHONPATH"] = code
        cmd = [
            TWISTD, "-n", "--pidfile=", f"--logfile={self.dir / 'twistd.log'}", "chatserv",
            "--listen", f"tcp:{self.port}:interface=127.0.0.1", "--db", str(self.db), *args,
        ]

        def limit() -> None:
            if nofile:
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        self.proc = subprocess.Popen(cmd, env=env, preexec_fn=limit, cwd=self.dir)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        else:
            raise RuntimeError("server did not start")
        self.cpu0 = cpu_seconds(self.proc.pid)
        self.t0 = time.monotonic()

    def rss_mb(self) -> float:
        return rss_bytes(self.proc.pid) / 1e6

    def cpu_percent(self) -> float:
        """CPU since the last call (or start), as % of one core."""
        cpu, now = cpu_seconds(self.proc.pid), time.monotonic()
        pct = 100 * (cpu - self.cpu0) / max(now - self.t0, 1e-6)
        self.cpu0, self.t0 = cpu, now
        return pct

    def log_lines(self, needle: str) -> list[str]:
        text = (self.dir / "twistd.log").read_text(errors="replace")
        return [line for line in text.splitlines() if needle in line]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()


async def open_conn(port: int, src: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", port, local_addr=(src, 0)), 10
    )


async def request(
    port: int, src: str, frames: list[dict[str, Any]], want: int, timeout: float = 120
) -> list[dict[str, Any]]:
    """Send *frames* on a new connection; return the first *want* frames answered."""
    r, w = await open_conn(port, src)
    try:
        w.write(b"".join(json.dumps(f).encode() + b"\n" for f in frames))
        got: list[dict[str, Any]] = []
        while len(got) < want:
            line = await asyncio.wait_for(r.readline(), timeout)
            if not line:
                break
            got.append(json.loads(line))
        return got
    finally:
        w.close()


async def timed_login(port: int, src: str, user: str, password: str) -> tuple[float, str]:
    t = time.monotonic()
    try:
        (answer,) = await request(port, src, [{"cmd": "login", "user": user, "password": password}], 1)
        outcome = "ok" if answer["cmd"] == "history" else f"{answer.get('code')}: {answer.get('msg')}"
    except Exception as e:  # noqa: BLE001 - what the owner saw is the measurement
        outcome = f"{type(e).__name__}"
    return time.monotonic() - t, outcome


# -- flood: many connections from one address holding unfinished lines -------------------


async def flood_worker(
    port: int, src: str, n: int, line_bytes: int, hold: float, spread: int = 0
) -> dict[str, int]:
    """Open *n* connections from *src* (or from *spread* addresses 127.1.x.y),
    each sending an unfinished line; hold them."""
    resource.setrlimit(resource.RLIMIT_NOFILE, (resource.getrlimit(resource.RLIMIT_NOFILE)[1],) * 2)
    stats = {"opened": 0, "connect_failed": 0, "answered": 0, "closed_by_server": 0, "silent": 0}
    codes: dict[str, int] = {}
    conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    payload = b"{" + b"x" * (line_bytes - 1)
    for i in range(n):
        if spread:
            j = i % spread
            src = f"127.1.{j // 250}.{1 + j % 250}"
        try:
            r, w = await open_conn(port, src)
        except Exception:  # noqa: BLE001
            stats["connect_failed"] += 1
            continue
        stats["opened"] += 1
        if line_bytes:
            w.write(payload)
        conns.append((r, w))
        if len(conns) % 200 == 0:
            await asyncio.sleep(0)
    await asyncio.sleep(hold)
    for r, _w in conns:
        data = r._buffer  # type: ignore[attr-defined]  # what arrived, without waiting
        if data:
            stats["answered"] += 1
            for line in bytes(data).splitlines():
                try:
                    code = json.loads(line).get("code", "?")
                except ValueError:
                    code = "?"
                codes[code] = codes.get(code, 0) + 1
        if r.at_eof() or r._eof:  # type: ignore[attr-defined]
            stats["closed_by_server"] += 1
        elif not data:
            stats["silent"] += 1
    for _r, w in conns:
        w.transport.abort()
    return {**stats, **{f"code:{k}": v for k, v in codes.items()}}


async def flood(args: argparse.Namespace, server: Server) -> None:
    per_worker = args.per_worker
    workers = []
    left = args.conns
    while left > 0:
        k = min(per_worker, left)
        left -= k
        workers.append(
            await asyncio.create_subprocess_exec(
                sys.executable, "-m", "benchmarks.attack_exhaustion", "flood-worker",
                "--port", str(server.port), "--src", args.src, "--conns", str(k),
                "--line-bytes", str(args.line_bytes), "--hold", str(args.hold),
                "--spread", str(args.spread),
                stdout=subprocess.PIPE,
            )
        )
    peak = 0.0
    t0 = time.monotonic()
    bystander = None
    while any(w.returncode is None for w in workers) and time.monotonic() - t0 < args.hold + 300:
        peak = max(peak, server.rss_mb())
        if bystander is None and time.monotonic() - t0 > args.hold * 0.6:
            # A bystander from another address logs in while the attack holds.
            bystander = await bystander_login(server.port)
        await asyncio.sleep(0.5)
    total: dict[str, int] = {}
    for w in workers:
        out, _ = await w.communicate()
        for k, v in json.loads(out).items():
            total[k] = total.get(k, 0) + v
    print(json.dumps({"attacker": total, "bystander_from_127.0.0.99": bystander,
                      "server_rss_peak_mb": round(peak, 1),
                      "server_alive": server.proc.poll() is None,
                      "log_warnings": [line[-160:] for line in server.log_lines("file")][:3]}, indent=1))


async def bystander_login(port: int) -> str:
    t = time.monotonic()
    try:
        got = await request(port, "127.0.0.99", [{"cmd": "login", "user": "Bystander"}], 1, timeout=10)
        what = got[0]["cmd"] if got else "closed without a word"
        if got and got[0]["cmd"] == "error":
            what = got[0]["code"]
    except Exception as e:  # noqa: BLE001
        what = type(e).__name__
    return f"{what} after {time.monotonic() - t:.2f} s"


# -- register: a hashing flood while the owner logs in ------------------------------------


async def register_flood(args: argparse.Namespace, server: Server) -> None:
    got = await request(server.port, "127.0.0.250",
                        [{"cmd": "register", "user": "Owner", "password": "owner-secret"}], 1)
    assert got[0]["cmd"] == "registered", got
    server.cpu_percent()
    stop_at = time.monotonic() + args.seconds
    codes: dict[str, int] = {}
    sources = [f"127.0.{2 + i // 250}.{1 + i % 250}" for i in range(args.addresses)]

    async def attacker(i: int) -> None:
        src = sources[i % len(sources)]
        try:
            r, w = await open_conn(server.port, src)
        except Exception:  # noqa: BLE001
            codes["connect_failed"] = codes.get("connect_failed", 0) + 1
            return
        n = 0
        try:
            while time.monotonic() < stop_at:
                n += 1
                w.write(json.dumps({"cmd": "register", "user": f"b{i}x{n}",
                                    "password": "attacker-pass"}).encode() + b"\n")
                line = await asyncio.wait_for(r.readline(), max(0.1, stop_at - time.monotonic()))
                if not line:
                    codes["closed"] = codes.get("closed", 0) + 1
                    return
                f = json.loads(line)
                key = f["cmd"] if f["cmd"] != "error" else f["code"]
                codes[key] = codes.get(key, 0) + 1
        except TimeoutError:
            pass
        except (ConnectionError, ValueError):  # refused and closed by the server
            codes["closed"] = codes.get("closed", 0) + 1
        finally:
            w.transport.abort()

    async def owner() -> list[tuple[float, str]]:
        times = []
        while time.monotonic() < stop_at:
            await asyncio.sleep(3)
            times.append(await timed_login(server.port, "127.0.0.250", "Owner", "owner-secret"))
        return times

    tasks = [asyncio.create_task(attacker(i)) for i in range(args.conns)]
    owner_times = await owner()
    await asyncio.gather(*tasks)
    during = server.cpu_percent()
    await asyncio.sleep(1)
    after_login = await timed_login(server.port, "127.0.0.250", "Owner", "owner-secret")
    await asyncio.sleep(9)
    after = server.cpu_percent()
    accounts = sqlite3.connect(server.db).execute("select count(*) from accounts").fetchone()[0]
    print(json.dumps({
        "attackers": args.conns, "attacker_addresses": len(sources), "seconds": args.seconds,
        "answers_to_attackers": codes,
        "owner_logins_during (s, outcome)": [(round(t, 2), o) for t, o in owner_times],
        "owner_login_1s_after": (round(after_login[0], 2), after_login[1]),
        "server_cpu_during_%": round(during, 1), "server_cpu_10s_after_%": round(after, 1),
        "accounts_created": accounts - 1, "server_rss_mb": round(server.rss_mb(), 1),
    }, indent=1))


# -- lockout: a guesser against the owner ----------------------------------------------


async def lockout(args: argparse.Namespace, server: Server) -> None:
    port = server.port
    for src, user in (("127.0.0.3", "Owner"), ("127.0.0.4", "Neighbour")):
        got = await request(port, src, [{"cmd": "register", "user": user, "password": "the-right-one"}], 1)
        assert got[0]["cmd"] == "registered", got
        # Each owner has logged in from its address before.
        assert (await timed_login(port, src, user, "the-right-one"))[1] == "ok"
    # The guesser makes its wrong guesses, waiting out any back-off (bounded).
    guesses, t0 = 0, time.monotonic()
    while guesses < args.guesses and time.monotonic() - t0 < 120:
        _, outcome = await timed_login(port, "127.0.0.2", "Owner", f"guess-{guesses}")
        if "vuelve a intentarlo" in outcome:
            await asyncio.sleep(args.spacing)
        else:
            guesses += 1
    guessing = time.monotonic() - t0
    # Then the owner tries, from its own address, while the guesser goes on.
    owner = []
    for i in range(args.guesses):
        await timed_login(port, "127.0.0.2", "Owner", f"more-{i}")
        owner.append((await timed_login(port, "127.0.0.3", "Owner", "the-right-one"))[1])
        await asyncio.sleep(args.spacing)
    # Same address, other names: a sprayer behind the neighbour's address.
    for i in range(22):
        await timed_login(port, "127.0.0.4", f"made-up{i}", "whatever-pass")
    neighbour = await timed_login(port, "127.0.0.4", "Neighbour", "the-right-one")
    print(json.dumps({
        "wrong_guesses_made": guesses, "guessing_took_s": round(guessing, 1),
        f"owner_logins_after_{args.guesses}_wrong_guesses_from_127.0.0.2_each_after_one_more": owner,
        "owner_correct_logins_accepted": sum(o == "ok" for o in owner),
        "neighbour_after_22_failures_on_made_up_names_from_its_address": neighbour[1],
    }, indent=1))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("scenario", choices=["flood", "flood-worker", "register", "lockout"])
    p.add_argument("--code", help="directory holding the chatserv package to run")
    p.add_argument("--server-arg", action="append", default=[])
    p.add_argument("--nofile", type=int, help="RLIMIT_NOFILE (soft=hard) of the server")
    p.add_argument("--conns", type=int, default=200)
    p.add_argument("--per-worker", type=int, default=9000)
    p.add_argument("--src", default="127.0.0.1")
    p.add_argument("--line-bytes", type=int, default=65000)
    p.add_argument("--hold", type=float, default=20.0)
    p.add_argument("--port", type=int)
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--addresses", type=int, default=1)
    p.add_argument("--spread", type=int, default=0, help="flood from this many addresses")
    p.add_argument("--guesses", type=int, default=11)
    p.add_argument("--spacing", type=float, default=1.0)
    args = p.parse_args()
    if args.scenario == "flood-worker":
        stats = flood_worker(args.port, args.src, args.conns, args.line_bytes, args.hold, args.spread)
        print(json.dumps(asyncio.run(stats)))
        return
    server = Server(args.code, args.server_arg, args.nofile)
    try:
        fn = {"flood": flood, "register": register_flood, "lockout": lockout}[args.scenario]
        asyncio.run(fn(args, server))
    finally:
        server.stop()


if __name__ == "__main__":
    main()
