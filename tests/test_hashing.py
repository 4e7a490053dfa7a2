"""The hashing queue (issue 11, item 5): bounded, logins first, cancellable.

The jobs run through a *run* that hands back Deferreds the test fires, so
what is running at any moment is exactly known.
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.defer import CancelledError, Deferred

from chatserv.errors import ServerBusy
from chatserv.hashing import HIGH, LOW, HashQueue


class Threads:
    """Stands for the thread pool: records what runs, finishes it on demand."""

    def __init__(self) -> None:
        self.running: list[tuple[Any, Deferred[Any]]] = []
        self.ran: list[Any] = []

    def run(self, fn: Any, *args: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.running.append((args[0], d))
        self.ran.append(args[0])
        return d

    def finish(self, index: int = 0) -> None:
        name, d = self.running.pop(index)
        d.callback(f"hash of {name}")


def results(d: Deferred[Any]) -> list[Any]:
    out: list[Any] = []
    d.addBoth(out.append)
    return out


def test_logins_run_before_waiting_registrations():
    threads = Threads()
    q = HashQueue(threads.run, threads=2)
    for i in range(5):
        q.submit(LOW, f"10.0.0.{i}", str, f"reg{i}")
    owner = results(q.submit(HIGH, "10.9.9.9", str, "owner"))
    assert [name for name, _ in threads.running] == ["reg0", "reg1"]
    threads.finish()
    # The owner's login takes the first free thread, ahead of reg2..reg4.
    assert [name for name, _ in threads.running] == ["reg1", "owner"]
    threads.finish(1)
    assert owner == ["hash of owner"]


def test_a_full_queue_refuses_at_once_and_registrations_cannot_fill_it():
    threads = Threads()
    q = HashQueue(threads.run, threads=1, max_waiting=4, max_low=2, max_per_key=100)
    q.submit(HIGH, "a", str, "running")
    for i in range(2):
        q.submit(LOW, "a", str, f"reg{i}")
    refused = results(q.submit(LOW, "a", str, "reg2"))
    assert isinstance(refused[0].value, ServerBusy) and refused[0].value.code == "server_busy"
    # Logins still have room...
    for i in range(2):
        q.submit(HIGH, "a", str, f"login{i}")
    # ...up to the bound.
    refused = results(q.submit(HIGH, "a", str, "login2"))
    assert isinstance(refused[0].value, ServerBusy)
    assert q.waiting == 4


def test_one_address_cannot_take_the_whole_queue():
    threads = Threads()
    q = HashQueue(threads.run, threads=1, max_waiting=64, max_per_key=3)
    for i in range(3):
        q.submit(HIGH, "10.6.6.6", str, f"g{i}")
    assert isinstance(results(q.submit(HIGH, "10.6.6.6", str, "g3"))[0].value, ServerBusy)
    assert results(q.submit(HIGH, "10.0.0.1", str, "owner")) == []  # waiting, not refused
    threads.finish()
    assert results(q.submit(HIGH, "10.6.6.6", str, "g4")) == []  # a slot came free


def test_a_cancelled_job_never_runs_and_frees_its_place():
    threads = Threads()
    q = HashQueue(threads.run, threads=1, max_waiting=1)
    q.submit(HIGH, "a", str, "running")
    waiting = q.submit(LOW, "b", str, "gone")
    waiting.cancel()
    with pytest.raises(CancelledError):
        raise results(waiting)[0].value
    assert q.waiting == 0
    later = results(q.submit(HIGH, "c", str, "next"))
    threads.finish()
    threads.finish()
    assert threads.ran == ["running", "next"]
    assert later == ["hash of next"]


def test_a_job_cancelled_while_running_keeps_its_thread_until_it_ends():
    threads = Threads()
    q = HashQueue(threads.run, threads=1)
    running = q.submit(HIGH, "a", str, "slow")
    queued = results(q.submit(HIGH, "b", str, "next"))
    running.addErrback(lambda f: f.trap(CancelledError))
    running.cancel()
    assert [name for name, _ in threads.running] == ["slow"]  # the thread cannot be stopped
    threads.finish()  # its result goes nowhere
    threads.finish()
    assert queued == ["hash of next"]
