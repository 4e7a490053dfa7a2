#!/bin/bash
# A/B: private messages, 100 pairs at 15 k deliveries/s, server CPU per 1k; base f7d867c vs HEAD.
# Usage: git archive f7d867c | tar -x -C /tmp/base-pv; BASE=/tmp/base-pv scripts/ab_private.sh
cd "$(dirname "$0")/.."
for round in 1 2; do
for which in base new; do
  port=$((23000 + RANDOM % 1000)); db=/tmp/pvab-$which-$round.db; rm -f $db*
  if [ $which = base ]; then pp=${BASE:-/tmp/base-pv}; else pp=; fi
  PYTHONPATH=$pp taskset -c 0 .venv/bin/twistd -n --pidfile= chatserv --listen tcp:$port:interface=127.0.0.1 --rate-limit 0 --db $db --max-per-address 0 --login-timeout 0 --idle-timeout 0 > /tmp/pvab-$which.log 2>&1 &
  pid=$!; sleep 2.5
  out=$(.venv/bin/python -m benchmarks private --port $port --pid $pid --gen-core 1 --pairs 100 --deliveries 15000 --duration 5 --json-only 2>/dev/null | tail -1)
  echo "$round $which $(echo "$out" | python3 -c 'import sys,json; d=json.loads(sys.stdin.read()); s=d.get("steps",[d])[-1] if "steps" in d else d; r=d.get("result", d); import re; print({k: v for k, v in (d.get("at_max") or d.get("step") or d).items() if k in ("deliveries_s","server_cpu_ms_per_1k","p99_ms","loss","other_cpu_pct")})' 2>&1 | tail -1)"
  kill $pid; wait $pid 2>/dev/null
done; done
