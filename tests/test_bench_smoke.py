"""Smoke test of the benchmark harness (issue 3): each workload for about a second
against a real `twistd chatserv` subprocess. No timing is asserted: only that
the run completes, loses nothing at a trivial rate, and reports sane JSON.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from benchmarks.client import Phase, make_text
from benchmarks.runner import percentile, pick_probes

ROOT = Path(__file__).resolve().parent.parent


def bench(*args: str, timeout: float = 60) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", *args, "--json-only", "--max-time", "40",
         # The test machine may be busy: no re-measuring of noisy steps here.
         "--noise-retries", "0"],
        cwd=ROOT, capture_output=True, text=True, timeout=timeout,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    assert lines, f"no JSON line; rc={proc.returncode}\nstdout:{proc.stdout}\nstderr:{proc.stderr}"
    res: dict[str, Any] = json.loads(lines[-1])
    assert "error" not in res, res
    assert "server_died" not in res, res
    assert proc.returncode == 0, proc.stderr
    return res


def test_fanout_fixed_rate() -> None:
    res = bench("fanout", "--clients", "20", "--senders", "4", "--deliveries", "2000",
                "--duration", "1")
    assert res["workload"] == "fanout" and res["peer"] == "chatserv"
    assert res["login"]["logged_in"] == 20
    assert res["recipients_per_msg"] == 20  # chatserv echoes a broadcast to its sender
    assert res["expected"] == res["sent"] * 20 > 0
    assert res["loss"] == 0 and res["disconnects"] == 0 and res["disorder"] == 0
    assert 0 <= res["p50_ms"] <= res["p99_ms"] <= res["max_ms"]
    assert res["server_cpu_s"] >= 0 and res["server_rss_kb"] > 0
    assert res["stored_s"] is not None


def test_fanout_find_max_ramp() -> None:
    # A ceiling just above the start: the ramp takes two short steps and stops.
    res = bench("fanout", "--clients", "10", "--find-max", "--start", "1000", "--factor", "2",
                "--ceiling", "2000", "--duration", "0.5", "--refine", "0")
    steps = res["ramps"][0]["steps"]
    assert len(steps) == 2
    assert res["max_deliveries_s"] > 0
    assert res["limit"].startswith("ceiling")


def test_conns() -> None:
    res = bench("conns", "--clients", "100", "--timeout", "20")
    assert res["logged_in"] == 100, res["login"]
    assert res["all_logged_in_s"] is not None
    assert res["rss_per_conn_kb"] is not None
    b = res["broadcast"]
    assert b["expected"] == b["received"] == 100 and b["loss"] == 0


def test_private() -> None:
    res = bench("private", "--pairs", "5", "--deliveries", "500", "--duration", "1")
    assert res["pairs"] == 5
    assert res["expected"] == res["sent"] > 0
    assert res["loss"] == 0 and res["disconnects"] == 0


class _FakeTransport:
    def is_closing(self) -> bool:
        return False

    def write(self, data: bytes) -> None:
        pass


@pytest.mark.parametrize("cut", range(1, 12))
def test_counting_survives_any_read_boundary(cut: int) -> None:
    """A marker split between two reads is counted once, on probes and on others."""
    import asyncio

    from benchmarks.client import ChatservClient

    loop = asyncio.new_event_loop()
    try:
        lines = b"".join(
            b'{"cmd":"broadcast","msg":"' + make_text(3, 100 + i, 0, i, "").encode() + b'"}\n'
            for i in range(3))
        for probe in (False, True):
            c = ChatservClient(0, loop)
            c.logged.set_result(0.0)
            ph = Phase(3)
            c.set_phase(ph, probe)
            for i in range(0, len(lines), cut):
                c.data_received(lines[i:i + cut])
            assert c.count == 3
            if probe:
                assert len(ph.lat) == 3 and ph.disorder == 0
    finally:
        loop.close()


def test_helpers() -> None:
    assert pick_probes(10, 0) == set(range(10))
    assert pick_probes(200, 5) == {0, 50, 100, 149, 199}
    assert percentile([], 0.5) is None
    assert percentile([1000, 2000, 3000, 4000], 0.99) == 4.0
    assert percentile([1000, 2000, 3000, 4000], 0.5) == 2.0
