"""Readable tables for one result and for a whole suite run."""

from __future__ import annotations

import time
from typing import Any

from .runner import P99_LIMIT_MS


def _f(v: Any, unit: str = "", digits: int = 1) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:,.{digits}f}{unit}"
    if isinstance(v, int):
        return f"{v:,}{unit}"
    return f"{v}{unit}"


def _kv(rows: list[tuple[str, str]]) -> str:
    w = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k:<{w}}  {v}" for k, v in rows)


def step_rows(r: dict[str, Any]) -> list[tuple[str, str]]:
    return [
        ("offered deliveries/s", _f(r["target_deliveries_s"])),
        ("messages/s sent", _f(r["rate_msgs_s"])),
        ("deliveries/s", _f(r["deliveries_s"])),
        ("sent / expected / received", f"{r['sent']:,} / {r['expected']:,} / {r['received']:,}"),
        ("loss", _f(r["loss"])),
        ("latency p50 / p99 / max", f"{_f(r['p50_ms'], digits=2)} / {_f(r['p99_ms'], digits=2)} / "
                                    f"{_f(r['max_ms'], digits=2)} ms ({r['latency_samples']:,} samples)"),
        ("server CPU", f"{_f(r['server_cpu_pct'])} % of a core, "
                       f"{_f(r['server_cpu_ms_per_1k'], digits=2)} ms per 1000 deliveries"),
        ("server core busy (kernel incl.)", _f(r.get("server_core_busy_pct"), " %")),
        ("generator core busy", _f(r.get("gen_core_busy_pct"), " %")),
        ("server RSS", _f(r["server_rss_kb"], " kB")),
        ("generator CPU", f"{_f(r['gen_cpu_pct'])} % of a core"
                          + ("  <- the generator is the limit" if r["limit"] == "generator" else "")),
        ("other processes' CPU", f"{_f(r.get('other_cpu_pct'))} % of a core"
                                 + ("  <- noisy machine" if (r.get("other_cpu_pct") or 0) >= 15 else "")),
        ("send lag max", _f(r["send_lag_max_ms"], " ms")),
        ("disconnects / out of order", f"{r['disconnects']} / {r['disorder']}"),
        ("stored messages/s (backlog)", "—" if r.get("stored_s") is None
         else f"{r['stored_s']:,} ({r['store_backlog']:,} not yet stored at the end)"),
        ("verdict", ("PASS" if r["passed"] else "FAIL") + f" (p99 ≤ {P99_LIMIT_MS:.0f} ms, no loss)"),
    ]


def print_result(res: dict[str, Any]) -> None:
    """A human table for one workload result (the JSON line follows it)."""
    head = f"{res['workload']} on {res['peer']} ({res.get('version', '?')})"
    print(head)
    print("-" * len(head))
    rows: list[tuple[str, str]] = []
    if "login" in res:
        lg = res["login"]
        rows.append(("logged in", f"{lg['logged_in']:,}/{lg['requested']:,} in "
                                  f"{lg['login_time_s']} s" + (f", errors {lg['errors']}"
                                                               if lg["errors"] else "")))
    if res["workload"] == "conns":
        rows += [
            ("all logged in after", _f(res.get("all_logged_in_s"), " s", 2)),
            ("server RSS base / after", f"{_f(res.get('server_rss_base_kb'), ' kB')} / "
                                        f"{_f(res.get('server_rss_kb'), ' kB')}"),
            ("RSS per connection", _f(res.get("rss_per_conn_kb"), " kB", 2)),
            ("server CPU for the logins", _f(res.get("server_cpu_login_s"), " s", 2)),
            ("generator CPU during logins", _f(res.get("gen_cpu_login_pct"), " %")),
            ("bytes to the clients while logging in",
             _f((res.get("login_bytes_to_clients") or 0) / 1e6, " MB", 1)),
        ]
        b = res.get("broadcast")
        if b:
            rows += [
                ("broadcast received", f"{b['received']:,}/{b['expected']:,}"),
                ("broadcast p50 / p99 / max", f"{_f(b['p50_ms'], digits=2)} / "
                                              f"{_f(b['p99_ms'], digits=2)} / "
                                              f"{_f(b['max_ms'], digits=2)} ms"),
            ]
    elif "max_deliveries_s" in res:
        rows.append(("max deliveries/s", _f(res["max_deliveries_s"])
                     + (f"  (runs: {res['max_runs']})" if len(res.get("max_runs", [])) > 1 else "")))
        rows.append(("what stopped the ramp", str(res.get("limit"))))
        if res.get("at_max"):
            rows += [("  at max: " + k, v) for k, v in step_rows(res["at_max"])]
    elif "deliveries_s" in res:
        rows += step_rows(res)
    if res.get("error"):
        rows.append(("ERROR", res["error"]))
    if res.get("server_died"):
        rows.append(("SERVER DIED", res["server_died"].replace("\n", " | ")[-300:]))
    rows.append(("wall time", f"{res['wall_s']} s"))
    print(_kv(rows))


def _by(results: list[dict[str, Any]], item: str) -> dict[str, dict[str, Any]]:
    return {r["peer"]: r for r in results if r.get("item") == item}


def _max_cell(r: dict[str, Any] | None) -> str:
    if r is None:
        return "not run"
    if r.get("error"):
        return f"error: {r['error'][:60]}"
    best = r.get("at_max") or {}
    gen = " (generator at its limit)" if "generator" in str(r.get("limit")) else ""
    if "server core" in str(r.get("limit")):
        gen = " (server's core full, kernel incl.)"
    cell = f"{r['max_deliveries_s'] / 1000:,.0f} k{gen}"
    if best:
        cell += f"; p99 {_f(best.get('p99_ms'), ' ms')}, srv {_f(best.get('server_cpu_pct'))}%"
    return cell + _noise(best)


def _noise(step: dict[str, Any] | None) -> str:
    o = (step or {}).get("other_cpu_pct") or 0
    return f" (noisy: others {o:.0f}%)" if o >= 15 else ""


def _cpu_cell(r: dict[str, Any] | None) -> str:
    if r is None:
        return "not run"
    if r.get("error"):
        return f"error: {r['error'][:60]}"
    ok = "" if r.get("passed") else f" (FAIL: loss {r.get('loss')})"
    return f"{_f(r.get('server_cpu_ms_per_1k'), ' ms', 2)}{ok}{_noise(r)}"


def _p99_cell(r: dict[str, Any] | None) -> str:
    if r is None:
        return "not run"
    if r.get("error"):
        return f"error: {r['error'][:60]}"
    return f"{_f(r.get('p99_ms'), ' ms', 2)} (p50 {_f(r.get('p50_ms'), ' ms', 2)}){_noise(r)}"


def _conns_cell(r: dict[str, Any] | None) -> str:
    if r is None:
        return "not run"
    timeout = f"{r['params'].get('timeout', 20):g}"
    lg = r.get("login")
    if not lg:
        return f"error: {r.get('error', '?')[:60]}"
    if lg["logged_in"] == lg["requested"]:
        cell = f"all ({lg['all_logged_in_s']:.1f} s)"
    else:
        cell = f"{lg['logged_in']:,} in {timeout} s"
    b = r.get("broadcast")
    if b and b.get("p99_ms") is not None:
        cell += f"; broadcast p99 {b['p99_ms']:.0f} ms"
        if b.get("loss"):
            cell += f", {b['received']:,}/{b['expected']:,} got it within 10 s"
    elif b:
        cell += f"; broadcast: {b['received']:,}/{b['expected']:,} got it within 10 s"
    o = r.get("other_cpu_login_pct") or 0
    return cell + (f" (noisy: others {o:.0f}%)" if o >= 15 else "")


def _rss_cell(r: dict[str, Any] | None) -> str:
    if r is None:
        return "not run"
    v = r.get("rss_per_conn_kb")
    return "—" if v is None else f"{v:.1f} kB"


def suite_markdown(results: list[dict[str, Any]], meta: dict[str, Any], wall: float,
                   command: str) -> str:
    """The side-by-side table of issue 3, from one suite run."""
    peers: list[str] = []
    for r in results:
        if r.get("workload") != "cluster" and r["peer"] not in peers:
            peers.append(r["peer"])
    f200, f1000 = _by(results, "fanout200_max"), _by(results, "fanout1000_max")
    fx = _by(results, "fanout200_100k")
    fx1000 = _by(results, "fanout1000_100k")
    c1, c5, c10 = _by(results, "conns1000"), _by(results, "conns5000"), _by(results, "conns10000")
    c10f = _by(results, "conns10000_fulllists")
    c10l = _by(results, "conns10000_lazy")
    c10ln = _by(results, "conns10000_lazy_nopresence")
    pv = _by(results, "private100_max")

    def n_of(d: dict[str, dict[str, Any]], key: str, default: str) -> str:
        for r in d.values():
            return str(r["params"].get(key, default))
        return default

    rows = [
        (f"fan-out, {n_of(f200, 'clients', '200')} clients, max deliveries/s "
         "(p99 ≤ 200 ms, no loss)", f200, _max_cell),
        (f"fan-out, {n_of(f1000, 'clients', '1000')} clients, same", f1000, _max_cell),
        (f"server CPU per 1,000 deliveries at {float(n_of(fx, 'deliveries', '0')) / 1000:.0f} k "
         f"deliveries/s ({n_of(fx, 'clients', '200')} clients)", fx, _cpu_cell),
        (f"p99 latency at {float(n_of(fx, 'deliveries', '0')) / 1000:.0f} k deliveries/s", fx,
         _p99_cell),
        (f"server CPU per 1,000 deliveries at {float(n_of(fx1000, 'deliveries', '0')) / 1000:.0f} k "
         f"deliveries/s ({n_of(fx1000, 'clients', '1000')} clients)", fx1000, _cpu_cell),
        (f"p99 latency at {float(n_of(fx1000, 'deliveries', '0')) / 1000:.0f} k deliveries/s "
         f"({n_of(fx1000, 'clients', '1000')} clients)", fx1000, _p99_cell),
        (f"{n_of(c1, 'clients', '1000')} clients logging in to one room "
         f"({n_of(c1, 'timeout', '20').split('.')[0]} s allowed)", c1, _conns_cell),
        (f"{n_of(c5, 'clients', '5000')} clients logging in to one room (20 s allowed)", c5,
         _conns_cell),
        (f"{n_of(c10, 'clients', '10000')} clients logging in to one room (20 s allowed)", c10,
         _conns_cell),
        (f"{n_of(c10f, 'clients', '10000')} clients logging in, clients without the presence "
         "feature (full users lists)", c10f, _conns_cell),
        (f"{n_of(c10l, 'clients', '10000')} clients logging in, clients with the presence and "
         "lazy_members features (count and first page)", c10l, _conns_cell),
        (f"{n_of(c10ln, 'clients', '10000')} clients logging in, clients with lazy_members only",
         c10ln, _conns_cell),
        (f"RSS per logged-in connection ({n_of(c1, 'clients', '1000')} clients)", c1, _rss_cell),
        (f"RSS per logged-in connection ({n_of(c10, 'clients', '10000')} clients)", c10, _rss_cell),
        (f"private messages, {n_of(pv, 'pairs', '100')} pairs, max deliveries/s", pv, _max_cell),
    ]
    lines = [
        f"Run {time.strftime('%Y-%m-%d %H:%M')}, {wall / 60:.1f} min; `{command}`; "
        f"Python {meta['python']}, {meta['loop']}, generator on core {meta['gen_core']}, "
        f"server on core {meta['server_core']}, kernel {meta['kernel']}.",
    ]
    if peers:
        lines += ["", "| workload | " + " | ".join(peers) + " |", "|---|" + "---|" * len(peers)]
    for label, d, cell in rows:
        if not d:
            continue
        lines.append(f"| {label} | " + " | ".join(cell(d[p]) if p in d else "—" for p in peers)
                     + " |")
    for r in results:
        if r.get("workload") == "cluster":
            lines += cluster_markdown(r)
    vers = {r["peer"]: r.get("version", "?") for r in results}
    lines += ["", "Versions: " + "; ".join(f"{p}: {v}" for p, v in vers.items()) + "."]
    return "\n".join(lines) + "\n"


def _pg_ms(f: dict[str, Any]) -> float | None:
    parts = f.get("part_cpu_s") or {}
    delivered = min(f.get("received") or 0, f.get("expected") or 0)
    if "pg" not in parts or not delivered:
        return None
    return round(1000 * parts["pg"] / (delivered / 1000), 3)


def cluster_lines(res: dict[str, Any]) -> list[str]:
    """One line per configuration and round, then the ratios (benchmarks/cluster.py)."""
    lines = []
    for rnd in res.get("rounds", []):
        for r in rnd:
            f = r.get("fanout") or {}
            if f.get("error") or "server_cpu_ms_per_1k" not in f:
                lines.append(f"round {r['round']} {r['config']:<11} fan-out error: "
                             f"{f.get('error', '?')}")
                continue
            parts = f.get("part_cpu_pct") or {}
            split = ", ".join(f"{k} {v:.0f}%" for k, v in parts.items())
            st = r.get("storm") or {}
            fo = r.get("failover") or {}
            lines.append(
                f"round {r['round']} {r['config']:<11} {f['deliveries_s']:>7,}/s "
                f"cpu {_f(f['server_cpu_ms_per_1k'], ' ms', 2)}/1k (+pg {_f(_pg_ms(f), ' ms', 2)}) "
                f"p50 {_f(f['p50_ms'], digits=2)} p99 {_f(f['p99_ms'], digits=2)} "
                f"cross p99 {_f(f.get('p99_cross_ms'), digits=2)} ms loss {f['loss']} "
                f"others {f['other_cpu_pct']:.0f}% [{split}]"
                + (f"; storm {st['login']['logged_in']:,} in {_f(st.get('all_logged_in_s'), ' s', 2)}"
                   if st.get("login") else "")
                + (f", broadcast p99 {_f((st.get('broadcast') or {}).get('p99_ms'), ' ms', 0)}"
                   if st.get("broadcast") else "")
                + (f"; failover {_f(fo.get('gone_s'), ' s', 2)}" if fo else "")
                + ("  SERVER DIED" if r.get("server_died") else ""))
    s = res.get("summary") or {}

    def ratio(key: str, label: str) -> None:
        v = s.get(key) or {}
        if v.get("runs"):
            tgt = f" (target ≤ {v['target']})" if "target" in v else ""
            lines.append(f"{label}: median {v['median']}, runs {v['runs']}{tgt}")

    ratio("cost_ratio", "CPU per delivery, cluster (nodes + Redis) / lone node (same PostgreSQL)")
    ratio("cost_ratio_with_pg", "same, PostgreSQL backends included on both sides")
    ratio("p99_ratio", "p99, cluster (all deliveries) / lone node")
    ratio("p99_cross_ratio", "p99, cluster (cross-node deliveries) / lone node")
    ratio("storm_all_logged_in_s", "login storm over the nodes, all logged in after (s)")
    ratio("failover_gone_s", "SIGKILL of a node until its users left presence (s)")
    ratio("telegram_poll_resumed_s", "SIGKILL of the Telegram leader until another node polls (s)")
    ratio("telegram_relayed_s", "... until an update said at the kill reached the chat (s)")
    return lines


def print_cluster(res: dict[str, Any]) -> None:
    head = f"cluster on chatserv ({res.get('version', '?')})"
    print(head)
    print("-" * len(head))
    for line in cluster_lines(res):
        print("  " + line)
    if res.get("error"):
        print(f"  ERROR {res['error']}")
    print(f"  wall time {res['wall_s']} s")


def cluster_markdown(res: dict[str, Any]) -> list[str]:
    """The suite's cluster rows: a small table of its own (its columns are
    configurations, not peers)."""
    p = res.get("params", {})
    if res.get("error"):
        return ["", f"Cluster rows: {res['error']}"]
    s = res.get("summary") or {}
    per = s.get("per_config") or {}

    def runs(cfg: str, key: str, unit: str = "", digits: int = 2) -> str:
        vals = (per.get(cfg) or {}).get(key) or []
        return " / ".join("—" if v is None else f"{v:.{digits}f}{unit}" for v in vals) if vals else "—"

    def broadcast(cfg: str) -> str:
        # The p99 is of those that got it: say how many did not.
        missed = [m for m in (per.get(cfg) or {}).get("storm_broadcast_missed") or [] if m]
        shown = runs(cfg, "storm_broadcast_p99_ms", " ms", 0)
        return shown + (f" ({' / '.join(map(str, missed))} missed it)" if missed else "")

    cfgs = [c for c in ("cluster", "lone-pg", "lone-sqlite") if c in per]
    head = {"cluster": f"{p.get('nodes', 2)} nodes + Redis (PostgreSQL)",
            "lone-pg": "1 node (PostgreSQL)", "lone-sqlite": "1 node (SQLite)"}
    rate = f"{float(p.get('deliveries', 0)) / 1000:.0f} k"
    lines = [
        "",
        f"Cluster ({p.get('clients')} clients in one room spread over the nodes, "
        f"{p.get('senders')} senders, {rate} deliveries/s; {p.get('repeat')} interleaved "
        f"rounds, every run shown; nodes on cores {p.get('node_cores')}, the lone node on "
        f"core {(p.get('node_cores') or [None])[0]}):",
        "",
        "| | " + " | ".join(head[c] for c in cfgs) + " |",
        "|---|" + "---|" * len(cfgs),
        "| server CPU per 1,000 deliveries (nodes + Redis) | "
        + " | ".join(runs(c, "ms_per_1k", " ms") for c in cfgs) + " |",
        "| PostgreSQL backends' CPU per 1,000 deliveries | "
        + " | ".join(runs(c, "pg_ms_per_1k", " ms") for c in cfgs) + " |",
        "| p99 latency, all deliveries | " + " | ".join(runs(c, "p99_ms", " ms", 1) for c in cfgs)
        + " |",
        "| p99 latency, deliveries that crossed nodes | "
        + " | ".join(runs(c, "p99_cross_ms", " ms", 1) if c == "cluster" else "—" for c in cfgs)
        + " |",
        f"| {p.get('storm_clients', 0):,} clients log in at once, all in | "
        + " | ".join(runs(c, "storm_s", " s") for c in cfgs) + " |",
        "| then one broadcast reaches them all, p99 (kernel timestamps) | "
        + " | ".join(broadcast(c) for c in cfgs) + " |",
        "",
    ]

    def ratio(key: str, label: str) -> None:
        v = s.get(key) or {}
        if v.get("runs"):
            tgt = f" (target ≤ {v['target']})" if "target" in v else ""
            lines.append(f"* {label}: {v['median']} (runs {', '.join(map(str, v['runs']))}){tgt}")

    ratio("cost_ratio", "cluster / lone node, CPU per delivery")
    ratio("cost_ratio_with_pg", "the same with PostgreSQL's backends on both sides")
    ratio("p99_cross_ratio", "cluster cross-node p99 / lone node p99")
    ratio("failover_gone_s", "SIGKILL of a node until its users left presence, s")
    ratio("telegram_poll_resumed_s", "SIGKILL of the node polling Telegram until another polls, s")
    ratio("telegram_relayed_s", "... until an update said at the kill reached the chat, s")
    return lines
