"""Smoke test of the cluster benchmark (``python -m benchmarks cluster``,
benchmarks/cluster.py) at a tiny size: two real nodes on a Redis server of
the benchmark's own and a PostgreSQL database of its own, against a lone
node. No timing is asserted: only that every part runs, loses nothing at a
trivial rate, measures every process, and reports the figures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import cluster

ROOT = Path(__file__).resolve().parent.parent.parent

pytestmark = pytest.mark.slow


def test_cluster_benchmark_runs_end_to_end() -> None:
    why = cluster.unavailable(("cluster",))
    if why:
        pytest.skip(f"the cluster benchmark needs Redis and PostgreSQL: {why}")
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "cluster", "--configs", "cluster",
         "--repeat", "1", "--clients", "10", "--senders", "2", "--deliveries", "1000",
         "--duration", "0.5", "--storm", "40", "--failover-users", "3",
         "--json-only", "--max-time", "60", "--noise-retries", "0"],
        cwd=ROOT, capture_output=True, text=True, timeout=90,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    assert lines, f"no JSON line; rc={proc.returncode}\nstdout:{proc.stdout}\nstderr:{proc.stderr}"
    res = json.loads(lines[-1])
    assert "error" not in res, res.get("error")
    assert proc.returncode == 0, proc.stderr
    (rnd,) = res["rounds"]
    by = {r["config"]: r for r in rnd}
    assert set(by) == {"cluster"}
    for r in rnd:
        assert "server_died" not in r, r["server_died"]
        f = r["fanout"]
        assert f["login"]["logged_in"] == 10
        assert f["expected"] == f["sent"] * 10 > 0
        assert f["loss"] == 0 and f["disconnects"] == 0 and f["disorder"] == 0
        assert r["storm"]["login"]["logged_in"] == 40
    c = by["cluster"]["fanout"]
    # Every process is measured on its own, the nodes and Redis count as
    # the server, PostgreSQL's backends were found.
    assert set(c["part_cpu_s"]) == {"node0", "node1", "redis", "pg"}
    # Half the deliveries crossed from one node to the other, and were timed.
    assert c["cross_samples"] > 0 and c["p99_cross_ms"] is not None
    assert c["senders"] == 2
    # The killed node's users left the survivor's presence.
    assert by["cluster"]["failover"]["users"] == 3
    assert by["cluster"]["failover"]["gone_s"] is not None
    s = res["summary"]
    assert s["storm_all_logged_in_s"]["runs"] and s["failover_gone_s"]["runs"]
    assert set(s["per_config"]) == {"cluster"}


def _round(config: str, ms: float, pg: float | None, p99: float, cross: float | None) -> dict:
    parts = {"node0": 1.0} | ({"pg": pg * 100 / 1000} if pg is not None else {})
    return {"config": config, "round": 1, "fanout": {
        "server_cpu_ms_per_1k": ms, "part_cpu_s": parts, "received": 100000, "expected": 100000,
        "p99_ms": p99, "p99_cross_ms": cross, "loss": 0}}


def test_summary_ratios_pair_configurations_of_one_round() -> None:
    """The ratios are taken within a round (the configurations that ran back
    to back), and the suite's table shows every run."""
    from benchmarks.report import cluster_markdown

    rounds = [
        [_round("cluster", 6.0, 1.0, 50.0, 60.0), _round("lone-pg", 5.0, 1.0, 40.0, None),
         _round("lone-sqlite", 4.0, None, 20.0, None)],
        [_round("lone-pg", 4.0, 0.5, 10.0, None), _round("cluster", 6.0, 0.5, 30.0, 30.0)],
    ]
    s = cluster.summarize(rounds)
    assert s["cost_ratio"]["runs"] == [1.2, 1.5] and s["cost_ratio"]["median"] == 1.35
    assert s["cost_ratio_with_pg"]["runs"] == [round(7 / 6, 3), round(6.5 / 4.5, 3)]
    assert s["p99_cross_ratio"]["runs"] == [1.5, 3.0]
    assert s["per_config"]["lone-sqlite"]["pg_ms_per_1k"] == []
    md = "\n".join(cluster_markdown({"params": {"nodes": 2, "deliveries": 1e5, "repeat": 2,
                                                "clients": 200, "senders": 20,
                                                "storm_clients": 0},
                                     "summary": s}))
    assert "| server CPU per 1,000 deliveries (nodes + Redis) | 6.00 ms / 6.00 ms |" in md
    assert "1.35 (runs 1.2, 1.5) (target ≤ 1.3)" in md
