"""The cluster benchmark (issue 9): what spreading one room over several
nodes costs, against the same load on one node, in one run.

Each *configuration* is a fresh set of servers:

* ``cluster``: N ``twistd chatserv`` nodes with ``--cluster`` on a Redis
  server started here (its own port, so that its CPU is this chat's alone)
  and a PostgreSQL database created here;
* ``lone-pg``: one node on a PostgreSQL database of its own, no ``--cluster``;
* ``lone-sqlite``: one node on SQLite (the default), for reference.

On each, in turn: the fan-out step (``clients`` in one room, spread over the
nodes round-robin, ``senders`` of them, half on each node, sending at a fixed
rate), then a login storm (``storm`` clients spread over the nodes log in to
the room at once), then, on the cluster only, the failover (SIGKILL of the
last node; how long until a client on the first sees every user of the dead
node leave). The configurations are interleaved over ``repeat`` rounds, so
that the machine's other load falls on all of them alike.

CPU is read from /proc per process: every node, the Redis server, and the
PostgreSQL backends serving this run's database (found in pg_stat_activity,
a separate figure: PostgreSQL is shared with the lone node's configuration).
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from .kernel_timing import timed_broadcast
from .peers import Server, _child_setup, free_port, pin_prefix, start_server
from .ramp import fixed_step
from .runner import (
    Route,
    Runner,
    Target,
    close_all,
    connect_clients,
    pick_probes,
    wait_quiet,
    warmup_rate,
)

Log = Callable[[str], None]

CONFIGS = ("cluster", "lone-pg", "lone-sqlite")

PG_ADMIN = os.environ.get("CHATSERV_BENCH_PG",
                          os.environ.get("CHATSERV_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test"))

# How long a cluster node may take to join through Redis after it listens.
JOIN_TIMEOUT = 20.0


def pg_unavailable(admin: str = PG_ADMIN) -> str | None:
    """Why this run cannot have PostgreSQL databases of its own (None: it can)."""
    try:
        import psycopg
    except ImportError:
        return "psycopg is not installed (pip install 'chatserv[postgres]')"
    try:
        with psycopg.connect(admin, autocommit=True, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as e:
        return f"PostgreSQL is not reachable at {admin}: {str(e).strip()[:120]}"
    return None


def redis_unavailable() -> str | None:
    """Why this run cannot start a Redis server of its own (None: it can)."""
    if shutil.which("redis-server") is None:
        return "redis-server is not installed"
    try:
        import txredisapi  # noqa: F401
    except ImportError:
        return "txredisapi is not installed (pip install 'chatserv[cluster]')"
    return None


def unavailable(configs: tuple[str, ...] = CONFIGS) -> str | None:
    """Why the given configurations cannot run here (None: they can)."""
    reasons = []
    if any(c != "lone-sqlite" for c in configs):
        reasons.append(pg_unavailable())
    if "cluster" in configs:
        reasons.append(redis_unavailable())
    return "; ".join(r for r in reasons if r) or None


class OwnRedis:
    """A redis-server of this run's own, on a free port, pinned like the nodes."""

    def __init__(self, core: int | None) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="bench-redis-"))
        cmd = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
               "--appendonly", "no", "--dir", str(self.dir)]
        self.proc = subprocess.Popen(pin_prefix(core) + cmd, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, preexec_fn=_child_setup)
        deadline = time.monotonic() + 10
        while True:  # bounded: 10 s
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        break
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server did not start on port {self.port}")
            time.sleep(0.05)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


class PgDatabase:
    """A PostgreSQL database of this configuration's own, dropped afterwards.

    A database rather than a schema, so that the backends serving it (whose
    CPU is measured) are found by ``datname`` in pg_stat_activity.
    """

    def __init__(self, admin: str = PG_ADMIN) -> None:
        import psycopg

        self.admin = admin
        self.name = f"clbench_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {self.name}")
        parts = urlsplit(admin)
        self.url = urlunsplit(parts._replace(path="/" + self.name))

    def backends(self) -> list[int]:
        """PIDs of the backends connected to this database now."""
        import psycopg

        with psycopg.connect(self.admin, autocommit=True) as conn:
            rows = conn.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s",
                                (self.name,)).fetchall()
        return [int(r[0]) for r in rows]

    def drop(self) -> None:
        import psycopg

        try:
            with psycopg.connect(self.admin, autocommit=True) as conn:
                conn.execute(f"DROP DATABASE IF EXISTS {self.name} WITH (FORCE)")
        except psycopg.Error:
            pass


def pin(pids: list[int], core: int | None) -> None:
    """Pin already running processes (PostgreSQL's backends) to ``core``."""
    if core is None or core < 0 or core >= (os.cpu_count() or 1):
        return
    for pid in pids:
        try:
            os.sched_setaffinity(pid, {core})
        except OSError:
            pass  # not ours to pin (another user's, or gone): left where it is


@dataclass
class Deployment:
    """The servers of one configuration."""

    config: str
    nodes: list[Server] = field(default_factory=list)
    redis: OwnRedis | None = None
    db: PgDatabase | None = None
    pg_core: int | None = None

    def target(self) -> Target:
        ports = tuple(n.port for n in self.nodes)
        t = Target(peer="chatserv", port=ports[0], pid=self.nodes[0].pid, irc=False,
                   ports=ports if len(ports) > 1 else ())
        self.refresh(t)
        return t

    def refresh(self, t: Target) -> None:
        """The processes to measure, PostgreSQL's backends as they are now."""
        parts = {f"node{i}": [n.pid] for i, n in enumerate(self.nodes) if n.alive()}
        if self.redis is not None:
            parts["redis"] = [self.redis.pid]
        if self.db is not None:
            backends = self.db.backends()
            pin(backends, self.pg_core)
            parts["pg"] = backends
        t.parts = parts
        t.in_server = tuple(n for n in parts if n != "pg")

    def stop(self) -> None:
        for n in self.nodes:
            n.stop()
        if self.redis is not None:
            self.redis.stop()
        if self.db is not None:
            self.db.drop()


def start_deployment(config: str, *, nodes: int, node_cores: list[int | None],
                     redis_core: int | None, pg_core: int | None, extra: list[str],
                     log: Log, reactor: str | None = None) -> Deployment:
    dep = Deployment(config, pg_core=pg_core)
    try:
        args = list(extra)
        count = 1
        if config in ("cluster", "lone-pg"):
            dep.db = PgDatabase()
            args += ["--db", dep.db.url]
        if config == "cluster":
            dep.redis = OwnRedis(redis_core)
            args += ["--cluster", dep.redis.url, "--cluster-name", "clbench"]
            count = nodes
        for i in range(count):
            srv = start_server("chatserv", core=node_cores[i % len(node_cores)],
                               chatserv_args=args, reactor=reactor)
            dep.nodes.append(srv)
        if config == "cluster":
            for srv in dep.nodes:
                wait_joined(srv)
        log(f"  {config}: {len(dep.nodes)} node(s) on ports {[n.port for n in dep.nodes]}"
            + (f", Redis on {dep.redis.port}" if dep.redis else "")
            + (f", database {dep.db.name}" if dep.db else ""))
        return dep
    except BaseException:
        dep.stop()
        raise


def wait_joined(srv: Server, timeout: float = JOIN_TIMEOUT) -> None:
    """Wait until a cluster node says it joined through Redis (it refuses
    logins with server_busy before)."""
    logf = srv.workdir / "twistd.log"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:  # bounded
        if logf.exists() and "joined through Redis" in logf.read_text(errors="replace"):
            return
        if not srv.alive():
            break
        time.sleep(0.05)
    raise RuntimeError(f"node on port {srv.port} did not join the cluster:\n{srv.log_tail()}")


# Log lines of a node that say the cluster misbehaved under the load (it was
# taken for dead, lost Redis, or refused a name for want of it).
WARN_MARKS = ("taken for dead", "gone quiet", "could not reserve", "lost", "Traceback", "used up",
              "reaped", "Unhandled", "held on node")


def node_warnings(dep: Deployment, keep: int = 5) -> dict[str, Any]:
    """Per node: how many warning lines its log has, and the first few."""
    out: dict[str, Any] = {}
    for i, n in enumerate(dep.nodes):
        logf = n.workdir / "twistd.log"
        try:
            lines = logf.read_text(errors="replace").splitlines()
        except OSError:
            continue
        hits = [ln[:200] for ln in lines if any(m in ln for m in WARN_MARKS)]
        if hits:
            out[f"node{i}"] = {"count": len(hits), "first": hits[:keep]}
    return out


def keep_node_logs(dep: Deployment, into: Path, stem: str) -> list[str]:
    """Copy the nodes' logs out of their folders (removed when they stop)."""
    into.mkdir(parents=True, exist_ok=True)
    kept = []
    for i, n in enumerate(dep.nodes):
        src = n.workdir / "twistd.log"
        if src.exists():
            dst = into / f"{stem}-node{i}.log"
            shutil.copyfile(src, dst)
            kept.append(str(dst))
    return kept


def spread_indices(clients: list[Any], count: int, nodes: int) -> list[int]:
    """``count`` client indices, as many on each node as can be, each node's
    spread over its clients' join order."""
    by_node: list[list[int]] = [[] for _ in range(nodes)]
    for i, c in enumerate(clients):
        by_node[c.node % nodes].append(i)
    out: list[int] = []
    for k, idx in enumerate(by_node):
        want = count // nodes + (1 if k < count % nodes else 0)
        out += [idx[j] for j in sorted(pick_probes(len(idx), want))] if idx and want else []
    return sorted(out)


async def fanout_step(target: Target, *, clients: int, senders: int, deliveries: float,
                      duration: float, probes: int, pad: int, log: Log) -> dict[str, Any]:
    """The room spread over the nodes, at a fixed rate: CPU and latency."""
    cl, login = await connect_clients(target, clients, concurrency=64)
    if len(cl) < clients:
        await close_all(cl)
        return {"error": "not every client logged in", "login": login}
    gc.freeze()
    nodes = max(1, len(target.ports))
    routes: list[Route] = [(cl[i], None) for i in spread_indices(cl, senders, nodes)]
    per_msg = len(cl)  # chatserv echoes a broadcast to its sender
    probe_set = set(spread_indices(cl, probes, nodes)) if probes else set(range(len(cl)))
    runner = Runner(target, cl, routes, per_msg, probe_set, pad)
    await runner.step(warmup_rate(deliveries, 20000.0), 0.5)
    await wait_quiet(cl)
    r = await fixed_step(runner, deliveries, duration, log)
    await close_all(cl)
    return {"login": login, "senders": len(routes), "recipients_per_msg": per_msg, **r.row()}


async def storm(target: Target, *, clients: int, timeout: float, pad: int,
                log: Log) -> dict[str, Any]:
    """``clients`` log in to the room at once, spread over the nodes; then,
    once the membership pushes are out, one broadcast from the first client,
    timed as the single-node ``conns`` row times it (the kernel's receive stamps):
    with the nodes on two cores, this is the room's multi-core figure."""
    cpu = target.cpu_window()
    cpu.start()
    # Names u100000... : the fan-out step's names may still be in use for a
    # moment on another node.
    cl, login = await connect_clients(target, clients, start=100000, timeout=timeout)
    cpu.mark()
    cpu.stop()
    log(f"  storm: {login['logged_in']}/{clients} logged in, last at {login['login_time_s']} s")
    out: dict[str, Any] = {"login": login, "all_logged_in_s": login["all_logged_in_s"],
                           "server_cpu_s": round(cpu.server, 3),
                           "part_cpu_s": {n: round(v, 3) for n, v in cpu.part_s.items()}}
    if cl:
        await wait_quiet(cl, quiet=0.5, limit=15)
        out["broadcast"] = await timed_broadcast(target, cl, pad, log, "storm broadcast")
    await close_all(cl)
    return out


class Watcher(asyncio.Protocol):
    """A JSON-lines client that logs in with the presence feature and keeps
    the room's member set up to date from the presence deltas."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.buf = b""
        self.members: set[str] = set()
        self.heard: list[str] = []  # texts of room messages, in order
        self.logged: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.changed = asyncio.Event()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(json.dumps({"cmd": "login", "user": self.name,  # type: ignore[attr-defined]
                                    "features": ["presence"]}).encode() + b"\n")

    def data_received(self, data: bytes) -> None:
        data = self.buf + data
        cut = data.rfind(b"\n") + 1
        self.buf = data[cut:]
        for line in data[:cut].split(b"\n"):
            if not line:
                continue
            try:
                f = json.loads(line)
            except ValueError:
                continue
            cmd = f.get("cmd")
            if cmd == "users":
                self.members = set(f.get("list", []))
                if not self.logged.done():
                    self.logged.set_result(None)
            elif cmd == "broadcast":
                self.heard.append(str(f.get("msg")))
            elif cmd == "presence":
                self.members -= set(f.get("left", []))
                self.members |= set(f.get("joined", []))
            elif cmd == "error" and not self.logged.done():
                self.logged.set_exception(ConnectionError(f"{f.get('code')}: {f.get('msg')}"))
            self.changed.set()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.logged.done():
            self.logged.set_exception(ConnectionError(f"closed: {exc}"))
        self.changed.set()

    async def until(self, pred: Callable[[set[str]], bool], timeout: float) -> bool:
        return await self.until_true(lambda: pred(self.members), timeout)

    async def until_true(self, pred: Callable[[], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not pred():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), left)
            except TimeoutError:
                return pred()
        return True


async def failover(dep: Deployment, target: Target, *, users: int, limit: float,
                   log: Log) -> dict[str, Any]:
    """SIGKILL the last node with ``users`` logged in on it: how long until
    a client on the first node sees all of them gone from the room."""
    t0 = time.monotonic()
    watch = await login_watcher(dep.nodes[0].port, "watcher", 30.0)
    busy = time.monotonic() - t0
    if watch is None:
        return {"error": "the watcher could not log in within 30 s (server_busy?)"}
    victim = dep.nodes[-1]
    # Right after a login storm a node may still refuse logins (server_busy:
    # it lost Redis meanwhile and waits before taking names again).
    probe = await login_watcher(victim.port, "probe", 30.0)
    if probe is None:
        return {"error": "the node to kill refused logins for 30 s"}
    assert probe.transport is not None
    probe.transport.close()
    busy = time.monotonic() - t0
    doomed = Target(peer="chatserv", port=victim.port, pid=victim.pid, irc=False)
    cl, login = await connect_clients(doomed, users, start=200000, concurrency=64)
    names = {c.name for c in cl}
    if not names:
        return {"error": "no user could log in on the node to kill", "login": login}
    seen = await watch.until(lambda m: names <= m, 20)
    if not seen:
        await close_all(cl)
        return {"error": "the watcher never saw the doomed node's users", "login": login}
    victim.proc.kill()  # SIGKILL: no goodbye, its keys expire
    killed = time.monotonic()
    victim.proc.wait(10)
    gone = await watch.until(lambda m: not (names & m), limit)
    took = time.monotonic() - killed
    for c in cl:
        c.lost_conn = True  # closed by the kill, not by the server's choice
    if watch.transport is not None:
        watch.transport.close()
    log(f"  failover: {len(names)} users of the killed node gone from presence "
        f"{took:.2f} s after SIGKILL" if gone else f"  failover: still present after {limit} s")
    return {"users": len(names), "gone_s": round(took, 2) if gone else None, "limit_s": limit,
            # How long after the call both nodes took logins again.
            "logins_open_after_s": round(busy, 2)}


async def login_watcher(port: int, name: str, limit: float) -> Watcher | None:
    """A logged-in Watcher; a node that answers server_busy (it lost Redis
    for a moment, e.g. right after a login storm) is asked again."""
    loop = asyncio.get_running_loop()
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:  # bounded
        _, watch = await loop.create_connection(lambda: Watcher(name), "127.0.0.1", port)
        assert isinstance(watch, Watcher)
        try:
            await asyncio.wait_for(watch.logged, max(0.1, deadline - time.monotonic()))
            return watch
        except (ConnectionError, TimeoutError):
            if watch.transport is not None:
                watch.transport.close()
            await asyncio.sleep(0.5)
    return None


async def one_config(dep: Deployment, *, clients: int, senders: int, deliveries: float,
                     duration: float, probes: int, pad: int, storm_clients: int,
                     storm_timeout: float, failover_users: int, server_core: int | None,
                     gen_core: int | None, log: Log) -> dict[str, Any]:
    target = dep.target()
    target.server_core, target.gen_core = server_core, gen_core
    out: dict[str, Any] = {"config": dep.config, "nodes": len(dep.nodes)}
    # A part that fails is reported and the next one still runs.
    try:
        out["fanout"] = await fanout_step(target, clients=clients, senders=senders,
                                          deliveries=deliveries, duration=duration,
                                          probes=probes, pad=pad, log=log)
    except (OSError, RuntimeError) as e:
        out["fanout"] = {"error": f"{type(e).__name__}: {e}"}
    if storm_clients:
        await asyncio.sleep(0.5)  # the fan-out clients' leaving is pushed out first
        dep.refresh(target)
        try:
            out["storm"] = await storm(target, clients=storm_clients, timeout=storm_timeout,
                                       pad=pad, log=log)
        except (OSError, RuntimeError) as e:
            out["storm"] = {"error": f"{type(e).__name__}: {e}"}
    if failover_users and dep.config == "cluster" and len(dep.nodes) > 1:
        await asyncio.sleep(0.5)
        try:
            out["failover"] = await failover(dep, target, users=failover_users, limit=30.0,
                                             log=log)
        except (OSError, RuntimeError) as e:
            out["failover"] = {"error": f"{type(e).__name__}: {e}"}
    return out


def _median(values: list[Any]) -> float | None:
    xs = sorted(x for x in values if x is not None)
    if not xs:
        return None
    m = len(xs) // 2
    return xs[m] if len(xs) % 2 else round((xs[m - 1] + xs[m]) / 2, 3)


def _spread(xs: list[Any]) -> list[Any]:
    return sorted(x for x in xs if x is not None)


def summarize(rounds: list[list[dict[str, Any]]]) -> dict[str, Any]:
    """Per-round ratios (the configurations of one round ran back to back)
    and their medians and spreads."""
    cost, cost_pg, p99, p99x, storm_s, gone = [], [], [], [], [], []
    per: dict[str, dict[str, list[Any]]] = {}
    for rnd in rounds:
        by = {r["config"]: r for r in rnd}
        for name, r in by.items():
            f = r.get("fanout", {})
            d = per.setdefault(name, {"ms_per_1k": [], "pg_ms_per_1k": [], "p99_ms": [],
                                      "p99_cross_ms": [], "loss": [], "storm_s": [],
                                      "storm_broadcast_p99_ms": [],
                                      "storm_broadcast_missed": []})
            d["ms_per_1k"].append(f.get("server_cpu_ms_per_1k"))
            d["pg_ms_per_1k"].append(pg_ms(f))
            d["p99_ms"].append(f.get("p99_ms"))
            d["p99_cross_ms"].append(f.get("p99_cross_ms"))
            d["loss"].append(f.get("loss"))
            d["storm_s"].append((r.get("storm") or {}).get("all_logged_in_s"))
            b = (r.get("storm") or {}).get("broadcast") or {}
            d["storm_broadcast_p99_ms"].append(b.get("p99_ms"))
            d["storm_broadcast_missed"].append(b.get("loss"))
        c, lone = by.get("cluster", {}).get("fanout", {}), by.get("lone-pg", {}).get("fanout", {})
        if c.get("server_cpu_ms_per_1k") and lone.get("server_cpu_ms_per_1k"):
            cost.append(round(c["server_cpu_ms_per_1k"] / lone["server_cpu_ms_per_1k"], 3))
            cp, lp = pg_ms(c), pg_ms(lone)
            if cp is not None and lp is not None:
                cost_pg.append(round((c["server_cpu_ms_per_1k"] + cp)
                                     / (lone["server_cpu_ms_per_1k"] + lp), 3))
        if c.get("p99_ms") and lone.get("p99_ms"):
            p99.append(round(c["p99_ms"] / lone["p99_ms"], 2))
            if c.get("p99_cross_ms"):
                p99x.append(round(c["p99_cross_ms"] / lone["p99_ms"], 2))
        st = (by.get("cluster", {}).get("storm") or {}).get("all_logged_in_s")
        if st is not None:
            storm_s.append(st)
        g = (by.get("cluster", {}).get("failover") or {}).get("gone_s")
        if g is not None:
            gone.append(g)
    return {
        "per_config": {k: {m: _spread(v) for m, v in d.items()} for k, d in per.items()},
        "cost_ratio": {"median": _median(cost), "runs": cost, "target": 1.3},
        "cost_ratio_with_pg": {"median": _median(cost_pg), "runs": cost_pg},
        "p99_ratio": {"median": _median(p99), "runs": p99, "target": 2.0},
        "p99_cross_ratio": {"median": _median(p99x), "runs": p99x, "target": 2.0},
        "storm_all_logged_in_s": {"median": _median(storm_s), "runs": storm_s, "target": 5.0},
        "failover_gone_s": {"median": _median(gone), "runs": gone, "target": 15.0},
    }


def pg_ms(f: dict[str, Any]) -> float | None:
    """PostgreSQL backends' CPU per 1,000 deliveries of a fan-out step."""
    parts = f.get("part_cpu_s") or {}
    delivered = min(f.get("received") or 0, f.get("expected") or 0)
    if "pg" not in parts or not delivered:
        return None
    return round(1000 * parts["pg"] / (delivered / 1000), 3)


async def run(*, configs: tuple[str, ...], repeat: int, nodes: int, node_cores: list[int | None],
              redis_core: int | None, pg_core: int | None, extra: list[str], clients: int,
              senders: int, deliveries: float, duration: float, probes: int, pad: int,
              storm_clients: int, storm_timeout: float, failover_users: int,
              gen_core: int | None = None, telegram: bool = False, keep_logs: str = "",
              log: Log) -> dict[str, Any]:
    """Every configuration, ``repeat`` rounds interleaved; the summary."""
    rounds: list[list[dict[str, Any]]] = []
    tg: list[dict[str, Any]] = []
    for i in range(repeat):
        if telegram and "cluster" in configs:
            log(f"== round {i + 1}/{repeat}: Telegram failover")
            try:
                tg.append(await telegram_failover(nodes=max(2, nodes), node_cores=node_cores,
                                                  redis_core=redis_core, extra=extra,
                                                  limit=40.0, log=log))
            except (OSError, RuntimeError) as e:
                tg.append({"error": f"{type(e).__name__}: {e}"})
        rnd: list[dict[str, Any]] = []
        # Each round in a different order, so that no configuration always
        # follows the same one.
        order = list(configs[i % len(configs):]) + list(configs[:i % len(configs)])
        for config in order:
            log(f"== round {i + 1}/{repeat}: {config}")
            dep = await asyncio.to_thread(
                start_deployment, config, nodes=nodes, node_cores=node_cores,
                redis_core=redis_core, pg_core=pg_core, extra=extra, log=log)
            try:
                res = await one_config(dep, clients=clients, senders=senders,
                                       deliveries=deliveries, duration=duration, probes=probes,
                                       pad=pad, storm_clients=storm_clients,
                                       storm_timeout=storm_timeout,
                                       failover_users=failover_users,
                                       server_core=node_cores[0], gen_core=gen_core, log=log)
                dead = [i for i, n in enumerate(dep.nodes) if not n.alive()
                        and not (config == "cluster" and "failover" in res
                                 and i == len(dep.nodes) - 1)]
                if dead:
                    res["server_died"] = dep.nodes[dead[0]].log_tail(15)
                warnings = node_warnings(dep)
                if warnings:
                    res["node_warnings"] = warnings
                if keep_logs:
                    res["logs"] = keep_node_logs(dep, Path(keep_logs), f"r{i + 1}-{config}")
            finally:
                await asyncio.to_thread(dep.stop)
            res["round"] = i + 1
            rnd.append(res)
        rounds.append(rnd)
    out: dict[str, Any] = {"rounds": rounds, "summary": summarize(rounds)}
    if telegram:
        out["telegram"] = tg
        out["summary"]["telegram_relayed_s"] = {
            "median": _median([t.get("relayed_s") for t in tg]),
            "runs": [t.get("relayed_s") for t in tg], "target": 15.0}
        out["summary"]["telegram_poll_resumed_s"] = {
            "median": _median([t.get("poll_resumed_s") for t in tg]),
            "runs": [t.get("poll_resumed_s") for t in tg], "target": 15.0}
    return out


# The fake Bot API's token and group (tests/bridge/fakebot.py).
TG_TOKEN = "123456:FAKE-test-token-ABCdefGHIjkl"
TG_GROUP = -1001234567890
LEADER_MARK = "now runs the Telegram bridge"


class FakeBot:
    """benchmarks/fakebot_proc.py, driven over its standard input and output."""

    def __init__(self, proc: asyncio.subprocess.Process, port: int) -> None:
        self.proc = proc
        self.port = port
        self.polls: list[float] = []  # monotonic times of getUpdates calls seen
        self._reader = asyncio.get_running_loop().create_task(self._read())

    @classmethod
    async def start(cls, core: int | None) -> FakeBot:
        import sys

        root = Path(__file__).resolve().parent.parent
        cmd = pin_prefix(core) + [sys.executable, "-m", "benchmarks.fakebot_proc"]
        proc = await asyncio.create_subprocess_exec(
            *cmd, cwd=root, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL)
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 20)
        if not line.startswith(b"port "):
            proc.kill()
            raise RuntimeError(f"the fake Bot API did not start: {line!r}")
        return cls(proc, int(line.split()[1]))

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for line in self.proc.stdout:
            if line.startswith(b"call getUpdates ok"):
                self.polls.append(time.monotonic())

    def say(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"say {text}\n".encode())

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/bot"

    async def stop(self) -> None:
        self._reader.cancel()
        if self.proc.returncode is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


async def telegram_failover(*, nodes: int, node_cores: list[int | None],
                            redis_core: int | None, extra: list[str], limit: float,
                            log: Log) -> dict[str, Any]:
    """A cluster whose every node runs the Telegram bridge on the fake Bot
    API: SIGKILL the node that polls, say something on Telegram at once, and
    time how long until another node polls again and until the message
    reaches a chat client on a surviving node."""
    fake = await FakeBot.start(node_cores[0])
    tokdir = Path(tempfile.mkdtemp(prefix="bench-tg-"))
    dep: Deployment | None = None
    try:
        (tokdir / "token").write_text(TG_TOKEN)
        args = [*extra, "--telegram-chat", str(TG_GROUP), "--telegram-api-url", fake.url,
                "--telegram-token-file", str(tokdir / "token")]
        dep = await asyncio.to_thread(
            start_deployment, "cluster", nodes=nodes, node_cores=node_cores,
            redis_core=redis_core, pg_core=None, extra=args, log=log,
            # Without -r, --cluster has installed the default reactor before
            # the bridge could install asyncio's, and the node stops at start.
            reactor="asyncio")
        leader = await asyncio.to_thread(find_leader, dep, 30.0)
        if leader is None:
            return {"error": "no node took the Telegram lease within 30 s"}
        survivor = dep.nodes[(leader + 1) % len(dep.nodes)]
        watch = await login_watcher(survivor.port, "tgwatch", 30.0)
        if watch is None:
            return {"error": "the watcher could not log in"}
        fake.say("antes")  # the bridge works before the kill
        if not await watch.until_true(lambda: "antes" in watch.heard, 20):
            return {"error": "a Telegram message never reached the chat before the kill"}
        dep.nodes[leader].proc.kill()
        killed = time.monotonic()
        fake.say("despues")
        dep.nodes[leader].proc.wait(10)
        relayed = await watch.until_true(lambda: "despues" in watch.heard, limit)
        took = time.monotonic() - killed
        # A poll the killed leader sent just before the kill may be reported
        # a few ms after it: the first one 50 ms after the kill is the new leader's.
        polled = next((t - killed for t in fake.polls if t > killed + 0.05), None)
        if watch.transport is not None:
            watch.transport.close()
        dup = watch.heard.count("despues") + watch.heard.count("antes")
        log(f"  telegram: another node polled {polled if polled is None else round(polled, 2)} s "
            f"after SIGKILL of the leader; the update said at the kill reached the chat "
            + (f"{took:.2f} s after it" if relayed else f"not within {limit} s"))
        return {"poll_resumed_s": round(polled, 2) if polled is not None else None,
                "relayed_s": round(took, 2) if relayed else None, "limit_s": limit,
                "relayed_twice": dup > 2}
    finally:
        if dep is not None:
            await asyncio.to_thread(dep.stop)
        await fake.stop()
        shutil.rmtree(tokdir, ignore_errors=True)


def find_leader(dep: Deployment, timeout: float) -> int | None:
    """The index of the node whose log says it runs the Telegram bridge."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:  # bounded
        for i, n in enumerate(dep.nodes):
            logf = n.workdir / "twistd.log"
            if logf.exists() and LEADER_MARK in logf.read_text(errors="replace"):
                return i
        time.sleep(0.1)
    return None
