"""Command line: ``python -m benchmarks {fanout,conns,private,cluster,suite} ...``."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from . import cluster, ramp, workloads
from .peers import PEERS, SUITE_PEERS, available, raise_nofile, start_server
from .report import print_cluster, print_result, suite_markdown
from .runner import Target

Log = Callable[[str], None]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def loop_name() -> str:
    try:
        import uvloop
    except ImportError:
        return "asyncio"
    return f"uvloop {uvloop.__version__}"


def pin_generator(core: int | None) -> str:
    """Pin this process to ``core`` (the server gets the other one)."""
    if core is None or core < 0 or (os.cpu_count() or 1) <= core:
        return "unpinned"
    os.sched_setaffinity(0, {core})
    return str(core)


def peer_version(peer: str) -> str:
    try:
        if peer == "floor":
            return "benchmarks/floor_server.py (uvloop)"
        if peer == "ngircd":
            out = subprocess.run(["ngircd", "--version"], capture_output=True, text=True, timeout=5)
            return out.stdout.splitlines()[0].split("-")[0]
        if peer == "inspircd":
            out = subprocess.run(["inspircd", "--version"], capture_output=True, text=True,
                                 timeout=5)
            return out.stdout.strip().splitlines()[0]
        import twisted
        if peer == "words":
            return f"Twisted {twisted.__version__}"
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=5, cwd=Path(__file__).parent).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "chatserv"], capture_output=True,
                               text=True, timeout=5, cwd=Path(__file__).parent.parent).stdout
        return f"chatserv {rev or '?'}{'+dirty' if dirty.strip() else ''}, Twisted {twisted.__version__}"
    except (OSError, subprocess.SubprocessError, IndexError):
        return "?"


def run_one(args: argparse.Namespace, peer: str, workload: str, params: dict[str, Any]) -> dict[str, Any]:
    """Start a fresh server, run one workload against it, stop it; return the result."""
    users = max(10000, int(params.get("clients", 0)), 2 * int(params.get("pairs", 0)))
    srv = None
    extra = list(args.chatserv_arg or [])
    if args.port:
        target = Target(peer=peer, port=args.port, pid=args.pid, irc=peer != "chatserv",
                                  password="x" if peer == "words" else args.irc_pass)
    else:
        srv = start_server(peer, core=args.server_core, users=users, chatserv_args=extra)
        target = Target(peer=peer, port=srv.port, pid=srv.pid, irc=srv.irc,
                                  password=srv.password or args.irc_pass, db=srv.db_path())
    if args.no_presence:
        target.features = ()
    if args.lazy_members:
        target.features = (*target.features, "lazy_members")
    target.server_core = args.server_core if srv else None
    target.gen_core = args.gen_core if args.gen_core >= 0 else None
    call = dict(params)
    if "features" in call:
        target.features = tuple(call.pop("features"))
    spy = start_py_spy(args.py_spy, target.pid) if args.py_spy else None
    if spy is not None:
        target.helpers.add(spy.pid)
    func: Callable[..., Awaitable[dict[str, Any]]] = getattr(workloads, workload)
    t0 = time.time()
    try:
        with asyncio.Runner(loop_factory=new_loop) as runner:
            res = runner.run(asyncio.wait_for(func(target, log=log, **call), args.max_time))
        error = res.pop("error", None)
    except TimeoutError:
        res, error = {}, f"workload exceeded --max-time {args.max_time}s"
    except (OSError, RuntimeError) as e:
        res, error = {}, f"{type(e).__name__}: {e}"
    finally:
        if spy is not None:
            stop_py_spy(spy)
        alive = srv.alive() if srv else True
        tail = srv.log_tail(15) if srv and not alive else ""
        if srv:
            srv.stop()
    out: dict[str, Any] = {
        "workload": workload, "peer": peer, "version": peer_version(peer), "params": params,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(t0)),
        "wall_s": round(time.time() - t0, 1), **res,
    }
    if peer == "chatserv":
        out["features"] = list(target.features)
    if error:
        out["error"] = error
    if not alive:
        out["server_died"] = tail
    return out


def start_py_spy(out: str, pid: int | None) -> subprocess.Popen[bytes] | None:
    """Sample the server with py-spy (Python servers only) for the whole workload."""
    exe = Path(sys.executable).with_name("py-spy")
    if pid is None or not exe.exists():
        log("py-spy: not installed next to the interpreter, or no server PID; not profiling")
        return None
    # --nonblocking: do not pause the server to sample it, so the profile
    # does not change the latency being measured.
    cmd = [str(exe), "record", "--pid", str(pid), "--rate", "250", "--nonblocking",
           "--format", "raw" if out.endswith(".txt") else "speedscope", "--output", out]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    return proc


def stop_py_spy(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--peer", default="chatserv", choices=PEERS,
                   help="server under test (started fresh for each workload)")
    p.add_argument("--port", type=int, default=0,
                   help="use a server already listening on 127.0.0.1:PORT instead")
    p.add_argument("--pid", type=int, default=None,
                   help="with --port: the server's PID, for its CPU and RSS")
    p.add_argument("--server-core", type=int, default=0, help="core for the server (taskset)")
    p.add_argument("--gen-core", type=int, default=1,
                   help="core for this load generator (-1: unpinned)")
    p.add_argument("--irc-pass", default=None, help="PASS sent by IRC clients (words: x)")
    p.add_argument("--no-presence", action="store_true",
                   help="chatserv clients do not ask for the presence feature (seed-000 clients)")
    p.add_argument("--lazy-members", action="store_true",
                   help="chatserv clients ask for lazy_members (count and first page of large "
                        "rooms' member lists instead of whole lists)")
    p.add_argument("--chatserv-arg", action="append", metavar="ARG",
                   help="extra argument for `twistd chatserv` (repeatable)")
    p.add_argument("--pad", type=int, default=24,
                   help="padding bytes after the stamp in every message text (default 24)")
    p.add_argument("--concurrency", type=int, default=0,
                   help="logins in flight at once (0: all at once)")
    p.add_argument("--max-time", type=float, default=600.0,
                   help="hard limit on one workload's run time, s")
    p.add_argument("--json-only", action="store_true", help="print only the JSON line")
    p.add_argument("--noise-retries", type=int, default=ramp.NOISY_RETRIES,
                   help="times a step is measured again when other processes took over "
                        f"{ramp.NOISY * 100:.0f}%% of a core meanwhile (default %(default)s)")
    p.add_argument("--py-spy", metavar="OUT", default="",
                   help="profile the server with py-spy during the workload (OUT.txt: collapsed "
                        "stacks, else speedscope JSON)")


def add_rate(p: argparse.ArgumentParser, dflt_deliveries: float) -> None:
    p.add_argument("--rate", type=float, default=0.0,
                   help="aggregate messages/s sent (open loop); or give --deliveries")
    p.add_argument("--deliveries", type=float, default=0.0,
                   help=f"target deliveries/s (default {dflt_deliveries:,.0f})")
    p.add_argument("--duration", type=float, default=5.0, help="seconds per measured step")
    p.add_argument("--find-max", action="store_true",
                   help="ramp the rate until p99 > 200 ms or any loss; report the best step")
    p.add_argument("--start", type=float, default=25000.0, help="find-max: first deliveries/s")
    p.add_argument("--factor", type=float, default=1.5, help="find-max: growth per step")
    p.add_argument("--ceiling", type=float, default=20e6, help="find-max: highest deliveries/s")
    p.add_argument("--refine", type=int, default=2, help="find-max: bisection steps after a fail")
    p.add_argument("--probes", type=int, default=20,
                   help="receivers that time every message (0: all); all receivers count")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)

    f = sub.add_parser("fanout", help="N clients in one room, S senders at rate R")
    add_common(f)
    f.add_argument("--clients", "-N", type=int, default=200)
    f.add_argument("--senders", "-S", type=int, default=10)
    f.add_argument("--repeat", type=int, default=1, help="find-max: ramps; the median is reported")
    add_rate(f, 100000)

    c = sub.add_parser("conns", help="K clients log in to one room at once, then one broadcast")
    add_common(c)
    c.add_argument("--clients", "-K", type=int, default=1000)
    c.add_argument("--timeout", type=float, default=20.0, help="seconds allowed for the logins")

    pr = sub.add_parser("private", help="pairs exchanging private messages")
    add_common(pr)
    pr.add_argument("--pairs", type=int, default=100)
    add_rate(pr, 50000)

    cl = sub.add_parser("cluster", help="one room over several nodes (Redis + PostgreSQL) against "
                        "one node: CPU per delivery, latency, login storm, failover")
    add_common(cl)
    add_cluster(cl)

    s = sub.add_parser("suite", help="the full side-by-side comparison (make bench)")
    add_common(s)
    s.add_argument("--peers", default=",".join(SUITE_PEERS),
                   help="comma-separated peers (those not installed are skipped)")
    s.add_argument("--only", default="", help="comma-separated suite items to run (default all)")
    s.add_argument("--quick", action="store_true", help="small and short: a minute or two")
    s.add_argument("--repeat", type=int, default=1, help="find-max ramps per item (median)")
    s.add_argument("--cluster", choices=("auto", "on", "off"), default="auto",
                   help="the cluster rows (benchmarks/cluster.py): auto runs them when Redis "
                        "(redis-server) and PostgreSQL are at hand")
    s.add_argument("--out", default=None,
                   help="append every result as a JSON line to this file (default: "
                        "benchmarks/results/latest.jsonl, or quick.jsonl, rewritten each run)")
    s.add_argument("--markdown", default=None,
                   help="write the comparison table to this file (default: "
                        "benchmarks/results/latest.md, or quick.md)")
    return ap


def add_cluster(p: argparse.ArgumentParser) -> None:
    p.add_argument("--nodes", type=int, default=2, help="cluster nodes (default 2)")
    p.add_argument("--configs", default=",".join(cluster.CONFIGS),
                   help="comma-separated: cluster, lone-pg (one node, same PostgreSQL, no "
                        "--cluster), lone-sqlite (one node, SQLite)")
    p.add_argument("--repeat", type=int, default=2,
                   help="rounds; the configurations are interleaved within each")
    p.add_argument("--node-cores", default="",
                   help="comma-separated cores for the nodes, cycled (default: --server-core "
                        "and --gen-core, one node on each)")
    p.add_argument("--redis-core", type=int, default=None,
                   help="core for the Redis server (default: --server-core; -1 unpinned)")
    p.add_argument("--pg-core", type=int, default=None,
                   help="core the run's PostgreSQL backends are moved to (default: "
                        "--server-core; -1: left unpinned)")
    p.add_argument("--clients", "-N", type=int, default=200)
    p.add_argument("--senders", "-S", type=int, default=20)
    p.add_argument("--deliveries", type=float, default=100000.0,
                   help="fan-out deliveries/s offered (default 100,000)")
    p.add_argument("--duration", type=float, default=5.0, help="seconds of the measured step")
    p.add_argument("--probes", type=int, default=20, help="receivers that time every message")
    p.add_argument("--storm", type=int, default=10000,
                   help="clients of the login storm, spread over the nodes (0: none)")
    p.add_argument("--storm-timeout", type=float, default=20.0)
    p.add_argument("--failover-users", type=int, default=50,
                   help="users on the node that is SIGKILLed (0: no failover)")
    p.add_argument("--keep-logs", default="", metavar="DIR",
                   help="copy every node's log into DIR before its folder is removed")
    p.add_argument("--telegram", action="store_true",
                   help="also, once per round: the Telegram bridge's failover (every node "
                        "bridges to the tests' fake Bot API; the polling one is SIGKILLed)")


def default_node_cores(a: argparse.Namespace) -> list[int | None]:
    """The nodes' cores unless ``--node-cores`` says: the server's core and the
    generator's, in turn, so that two nodes run on two cores as a cluster is
    deployed (one node per core; ``--workers``), the second beside the load
    generator. ``--node-cores 0`` puts every node on one core instead."""
    server = a.server_core if a.server_core is not None and a.server_core >= 0 else None
    gen = a.gen_core if a.gen_core is not None and a.gen_core >= 0 else None
    cpus = os.cpu_count() or 1
    if server is None or gen is None or gen == server or gen >= cpus:
        return [server]
    return [server, gen]


def cluster_params(a: argparse.Namespace) -> dict[str, Any]:
    def core(v: int | None) -> int | None:
        v = a.server_core if v is None else v
        return None if v is None or v < 0 else v

    node_cores = [core(int(x)) for x in a.node_cores.split(",") if x] or default_node_cores(a)
    configs = tuple(c for c in a.configs.split(",") if c)
    for c in configs:
        if c not in cluster.CONFIGS:
            raise SystemExit(f"unknown configuration {c}; one of {', '.join(cluster.CONFIGS)}")
    return {
        "configs": configs, "repeat": max(1, a.repeat), "nodes": max(1, a.nodes),
        "node_cores": node_cores, "redis_core": core(a.redis_core), "pg_core": core(a.pg_core),
        "extra": list(a.chatserv_arg or []), "clients": a.clients, "senders": a.senders,
        "deliveries": a.deliveries, "duration": a.duration, "probes": a.probes, "pad": a.pad,
        "storm_clients": a.storm, "storm_timeout": a.storm_timeout,
        "failover_users": a.failover_users, "telegram": a.telegram, "keep_logs": a.keep_logs,
        "gen_core": a.gen_core if a.gen_core >= 0 else None,
    }


def run_cluster(a: argparse.Namespace, params: dict[str, Any]) -> dict[str, Any]:
    """The cluster workload (benchmarks/cluster.py), as one result."""
    t0 = time.time()
    why = cluster.unavailable(params["configs"])
    res: dict[str, Any]
    if why:
        res, error = {}, f"unavailable: {why}"
    else:
        try:
            with asyncio.Runner(loop_factory=new_loop) as runner:
                res = runner.run(asyncio.wait_for(cluster.run(log=log, **params), a.max_time))
            error = None
        except TimeoutError:
            res, error = {}, f"workload exceeded --max-time {a.max_time}s"
        except (OSError, RuntimeError) as e:
            res, error = {}, f"{type(e).__name__}: {e}"
    out: dict[str, Any] = {
        "workload": "cluster", "peer": "chatserv", "version": peer_version("chatserv"),
        "params": {k: v for k, v in params.items() if k != "extra"} | {"extra": params["extra"]},
        "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(t0)),
        "wall_s": round(time.time() - t0, 1), **res,
    }
    if error:
        out["error"] = error
    return out


def rate_params(a: argparse.Namespace, default_deliveries: float) -> dict[str, Any]:
    return {
        "deliveries": a.deliveries or (0.0 if a.rate else default_deliveries),
        "rate": a.rate, "duration": a.duration, "find": a.find_max, "start": a.start,
        "factor": a.factor, "ceiling": a.ceiling, "refine": a.refine, "probes": a.probes,
    }


def suite_plan(a: argparse.Namespace) -> list[tuple[str, str, dict[str, Any]]]:
    """(item, workload, params) for the comparison table of issue 3.

    The item names are the full run's; ``--quick`` runs smaller and shorter
    versions of a subset (the table says what was actually run).
    """
    ramp = {"find": True, "start": 25000.0, "factor": 1.5, "ceiling": 20e6, "refine": 2,
            "duration": 3.0, "probes": 20, "rate": 0.0, "deliveries": 0.0}
    fixed = {"find": False, "rate": 0.0, "start": 0.0, "factor": 1.0, "ceiling": 0.0,
             "refine": 0, "probes": 20, "repeat": 1}
    if a.quick:
        qramp = {**ramp, "start": 10000.0, "factor": 2.5, "refine": 0, "duration": 1.0}
        return [
            ("fanout200_max", "fanout", {"clients": 50, "senders": 10, "repeat": 1, **qramp}),
            ("fanout200_100k", "fanout", {"clients": 50, "senders": 10, "deliveries": 20000.0,
                                          "duration": 2.0, **fixed}),
            ("conns1000", "conns", {"clients": 1000, "timeout": 10.0}),
            ("private100_max", "private", {"pairs": 20, **qramp}),
        ]
    return [
        ("fanout200_max", "fanout", {"clients": 200, "senders": 10, "repeat": a.repeat, **ramp}),
        ("fanout1000_max", "fanout", {"clients": 1000, "senders": 10, "repeat": a.repeat, **ramp}),
        ("fanout200_100k", "fanout", {"clients": 200, "senders": 10, "deliveries": 100000.0,
                                      "duration": 10.0, **fixed}),
        ("fanout1000_100k", "fanout", {"clients": 1000, "senders": 10, "deliveries": 100000.0,
                                       "duration": 10.0, **fixed}),
        ("conns1000", "conns", {"clients": 1000, "timeout": 20.0}),
        ("conns5000", "conns", {"clients": 5000, "timeout": 20.0}),
        ("conns10000", "conns", {"clients": 10000, "timeout": 20.0}),
        # chatserv only: clients that do not ask for presence deltas (seed 000).
        ("conns10000_fulllists", "conns", {"clients": 10000, "timeout": 20.0, "features": []}),
        # chatserv only: clients that ask for lazy_members (a count and a
        # first page of a large room's member list), with and without presence.
        ("conns10000_lazy", "conns", {"clients": 10000, "timeout": 20.0,
                                      "features": ["presence", "lazy_members"]}),
        ("conns10000_lazy_nopresence", "conns", {"clients": 10000, "timeout": 20.0,
                                                 "features": ["lazy_members"]}),
        ("private100_max", "private", {"pairs": 100, **ramp}),
    ]


def suite_cluster_params(a: argparse.Namespace) -> dict[str, Any]:
    """The suite's cluster rows: 2 nodes, the three configurations interleaved."""
    core = a.server_core if a.server_core is not None and a.server_core >= 0 else None
    base: dict[str, Any] = {
        "configs": cluster.CONFIGS, "nodes": 2, "node_cores": default_node_cores(a),
        "redis_core": core,
        "pg_core": core, "extra": list(a.chatserv_arg or []), "senders": 20, "probes": 20,
        "pad": a.pad, "storm_timeout": 20.0, "failover_users": 50, "telegram": not a.quick,
        "gen_core": a.gen_core if a.gen_core >= 0 else None,
    }
    if a.quick:
        return {**base, "repeat": 1, "clients": 50, "deliveries": 20000.0, "duration": 2.0,
                "storm_clients": 1000}
    return {**base, "repeat": max(2, a.repeat), "clients": 200, "deliveries": 100000.0,
            "duration": 5.0, "storm_clients": 10000}


def main(argv: list[str] | None = None) -> int:
    a = parser().parse_args(argv)
    # A SIGTERM (e.g. from `timeout`) unwinds like Ctrl-C, so the server we
    # started is stopped by run_one's finally rather than left running.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    raise_nofile()
    ramp.NOISY_RETRIES = max(0, a.noise_retries)
    gen_core = pin_generator(a.gen_core)
    meta = {"python": platform.python_version(), "loop": loop_name(), "gen_core": gen_core,
            "server_core": a.server_core, "cpus": os.cpu_count(), "kernel": platform.release()}
    common = {"pad": a.pad, "concurrency": a.concurrency}
    command = "python -m benchmarks " + " ".join(argv if argv is not None else sys.argv[1:])
    if a.cmd == "cluster":
        res = run_cluster(a, cluster_params(a))
        res["meta"] = meta
        res["command"] = command
        if not a.json_only:
            print_cluster(res)
        print(json.dumps(res, separators=(",", ":")), flush=True)
        return 1 if "error" in res else 0
    if a.cmd != "suite":
        if a.cmd == "fanout":
            params = {"clients": a.clients, "senders": a.senders, "repeat": a.repeat,
                      **rate_params(a, 100000.0), **common}
        elif a.cmd == "private":
            params = {"pairs": a.pairs, **rate_params(a, 50000.0), **common}
        else:
            params = {"clients": a.clients, "timeout": a.timeout, **common}
        res = run_one(a, a.peer, a.cmd, params)
        res["meta"] = meta
        res["command"] = "python -m benchmarks " + " ".join(argv if argv is not None else sys.argv[1:])
        if not a.json_only:
            print_result(res)
        print(json.dumps(res, separators=(",", ":")), flush=True)
        return 1 if "error" in res else 0

    peers = [p for p in a.peers.split(",") if p]
    for p in peers:
        if p not in PEERS:
            raise SystemExit(f"unknown peer {p}")
    skipped = [p for p in peers if not available(p)]
    peers = [p for p in peers if available(p)]
    if skipped:
        log(f"not installed, skipped: {', '.join(skipped)}")
    only = {x for x in a.only.split(",") if x}
    results: list[dict[str, Any]] = []
    t_start = time.time()
    results_dir = Path(__file__).resolve().parent / "results"
    stem = "quick" if a.quick else "latest"
    out_path: Path | None
    if a.out is None:
        results_dir.mkdir(exist_ok=True)
        out_path, mode = results_dir / f"{stem}.jsonl", "w"
    else:
        out_path, mode = (Path(a.out) if a.out else None), "a"
    if a.markdown is None:
        a.markdown = str(results_dir / f"{stem}.md")
    out = open(out_path, mode) if out_path else None

    def record(item: str, res: dict[str, Any], show: Callable[[dict[str, Any]], None]) -> None:
        """Keep *res* for the table, show it, and print and save its JSON line."""
        res["item"] = item
        res["meta"] = meta
        results.append(res)
        if not a.json_only:
            show(res)
        line = json.dumps(res, separators=(",", ":"))
        print(line, flush=True)
        if out:
            out.write(line + "\n")
            out.flush()

    try:
        for item, workload, params in suite_plan(a):
            if only and item not in only:
                continue
            for peer in peers:
                if "features" in params and peer != "chatserv":
                    continue
                log(f"== {item} ({workload}) on {peer}")
                record(item, run_one(a, peer, workload, {**params, **common}), print_result)
        if a.cluster != "off" and (not only or "cluster" in only) and "chatserv" in peers:
            why = cluster.unavailable()
            if why and a.cluster == "auto":
                log(f"cluster rows skipped: {why} (--cluster on to insist)")
            else:
                log("== cluster (cluster) on chatserv")
                record("cluster", run_cluster(a, suite_cluster_params(a)), print_cluster)
    finally:
        if out:
            out.close()
    md = suite_markdown(results, meta, time.time() - t_start,
                        "python -m benchmarks " + " ".join(argv if argv is not None else sys.argv[1:]))
    print(md)
    if a.markdown:
        Path(a.markdown).write_text(md)
        log(f"table written to {a.markdown}" + (f", results to {out_path}" if out_path else ""))
    return 0
