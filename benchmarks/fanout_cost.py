"""Server CPU per room delivery, in one process: ``python -m benchmarks.fanout_cost``.

A fixed workload, so that two versions can be compared by instruction counts
(``valgrind --tool=callgrind``), which do not depend on what else the machine
runs: a hub and a ``ChatFactory`` on the real reactor and loopback TCP,
``--clients`` raw sockets logged in to ``general``, then ``--rounds`` reactor
turns in each of which ``--per-turn`` members post a message that reaches
everyone. The clients live in a child process that reads everything (so
that, under callgrind, the counts are the server's alone: the child is not
traced).

Run another checkout's code with ``PYTHONPATH=/that/checkout``; the script
only uses ``Hub``, ``ChatFactory`` and ``Limits``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from typing import Any


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--clients", type=int, default=200)
    p.add_argument("--rounds", type=int, default=300)
    p.add_argument("--per-turn", type=int, default=1)
    a = p.parse_args()

    from twisted.internet import reactor

    import chatserv
    from chatserv.hub import Hub
    from chatserv.protocol import ChatFactory, Limits

    r: Any = reactor
    hub = Hub(r, history_size=50)
    factory = ChatFactory(hub, r, Limits(rate_limit=0, max_per_address=0, login_timeout=0, idle_timeout=0))
    listener = r.listenTCP(0, factory, interface="127.0.0.1")
    port = listener.getHost().port
    reader = subprocess.Popen(
        [sys.executable, "-c", READER, str(port), str(a.clients)], stdin=subprocess.PIPE
    )
    deadline = time.monotonic() + 60
    while len(hub.sessions) < a.clients and time.monotonic() < deadline:
        r.iterate(0.01)
    assert len(hub.sessions) == a.clients, "not every client logged in"
    hub.flush_all_presence()
    for _ in range(20):
        r.iterate(0.01)
    senders = list(hub.sessions.values())
    text = "x" * 24
    spent = 0.0
    for n in range(a.rounds):
        t0 = time.process_time()
        for j in range(a.per_turn):
            hub.broadcast(senders[(n * a.per_turn + j) % len(senders)], text)
        r.iterate(0)  # the log commits, the hub fans out
        r.iterate(0)  # the end of the turn: output is written
        spent += time.process_time() - t0
    deliveries = a.rounds * a.per_turn * a.clients
    print(json.dumps({
        "version": getattr(chatserv, "__file__", "?"),
        "clients": a.clients, "deliveries": deliveries,
        "us_per_delivery": round(spent / deliveries * 1e6, 3),
    }))
    assert len(hub.sessions) == a.clients, "a client was disconnected"
    listener.stopListening()
    reader.kill()
    reader.wait()


#: The clients: log in, then read everything until killed.
READER = """
import json, selectors, socket, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
sel = selectors.DefaultSelector()
for i in range(n):
    c = socket.create_connection(("127.0.0.1", port))
    c.sendall(json.dumps({"cmd": "login", "user": f"u{i}"}).encode() + b"\\n")
    c.setblocking(False)
    sel.register(c, selectors.EVENT_READ)
while True:
    for key, _ in sel.select():
        key.fileobj.recv(1 << 20)
"""


if __name__ == "__main__":
    main()
