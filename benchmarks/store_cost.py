"""CPU the storage path costs per message at a fixed rate: ``python -m benchmarks.store_cost``.

In one process, on the real reactor: ``--rate`` messages a second for
``--seconds`` are handed to the server's store (``ThreadedStore.append_then``
on a fresh SQLite file, or ``--db memory-log``: the hub's no-database log,
as a baseline; ``--db sqlite-memory``: the store on SQLite's ``:memory:``,
which has no file to write) by a 1 ms tick, the way the hub hands them over. Reports the
CPU per message of the reactor thread (submission, the batch's notification
and the callbacks) and of the writer thread (the transaction), the commits
and the mean batch. ``--private`` makes them private messages;
``--synchronous NORMAL`` runs the SQLite file without an fsync per commit
(the server always uses FULL), to show what that fsync costs. Pin it
(``taskset -c 0``) to share one core as the server does.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from typing import Any


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rate", type=float, default=500.0)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--private", action="store_true")
    p.add_argument("--db", default="file", choices=("file", "sqlite-memory", "memory-log"),
                   help="a fresh SQLite file, SQLite's :memory:, or the hub's no-database log")
    p.add_argument("--synchronous", default="FULL", choices=("FULL", "NORMAL"),
                   help="SQLite's synchronous setting for the file (the server's is FULL)")
    a = p.parse_args()
    if a.synchronous != "FULL" and a.db != "file":
        p.error("--synchronous applies to --db file only")

    from twisted.internet import reactor, task

    from chatserv.events import ChatMessage
    from chatserv.local import MemoryLog
    from chatserv.storage.store import open_store

    r: Any = reactor
    work = tempfile.mkdtemp(prefix="store-cost-")
    if a.db == "memory-log":
        store: Any = MemoryLog(r)
    else:
        store = open_store(":memory:" if a.db == "sqlite-memory" else os.path.join(work, "s.db"), r)
        store.writer.conn.execute(f"PRAGMA synchronous={a.synchronous}")
    done = [0]
    next_id = [1]

    def delivered(_: ChatMessage) -> None:
        done[0] += 1

    def message() -> ChatMessage:
        i = next_id[0]
        next_id[0] = i + 1
        if a.private:
            return ChatMessage(i, time.time(), "ana", "x" * 24, recipient="luis")
        return ChatMessage(i, time.time(), "ana", "x" * 24, room="general")

    total = int(a.rate * a.seconds)
    t_start = [0.0]
    submitted = [0]

    def tick() -> None:
        due = min(total, int((time.monotonic() - t_start[0]) * a.rate))
        while submitted[0] < due:
            submitted[0] += 1
            store.append_then(message(), delivered)

    # Warm-up: threads started, schema cached.
    store.append_then(message(), delivered)
    while done[0] < 1:
        r.iterate(0.01)
    done[0] = 0
    cpu0, main0 = os.times(), time.thread_time()
    t_start[0] = time.monotonic()
    loop = task.LoopingCall(tick)
    loop.start(0.001)
    deadline = time.monotonic() + a.seconds + 10
    while done[0] < total and time.monotonic() < deadline:
        r.iterate(0.001)
    loop.stop()
    cpu1, main1 = os.times(), time.thread_time()
    wall = time.monotonic() - t_start[0]
    all_cpu = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    reactor_cpu = main1 - main0
    commits = getattr(store, "commits", None)
    print(json.dumps({
        "db": a.db, "synchronous": a.synchronous, "rate": a.rate, "private": a.private,
        "messages": done[0], "wall_s": round(wall, 2),
        "us_per_msg_all": round(all_cpu / max(1, done[0]) * 1e6, 1),
        "us_per_msg_reactor": round(reactor_cpu / max(1, done[0]) * 1e6, 1),
        "us_per_msg_other_threads": round((all_cpu - reactor_cpu) / max(1, done[0]) * 1e6, 1),
        "commits": commits, "mean_batch": round(done[0] / commits, 1) if commits else None,
    }))
    if hasattr(store, "close"):
        from twisted.internet.defer import Deferred

        d = Deferred.fromCoroutine(store.close())
        while not d.called:
            r.iterate(0.01)


if __name__ == "__main__":
    main()
