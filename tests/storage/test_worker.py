"""The store's threads (chatserv/storage/worker.py), on the real reactor."""

from __future__ import annotations

import threading
from functools import partial

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.python.failure import Failure

from chatserv.storage.worker import Worker, WorkerStopped


@pytest.fixture
def worker():
    running = Worker(reactor, "test-worker")
    running.start()
    yield running
    running.stop()


@pytest_twisted.ensureDeferred
async def test_jobs_run_in_order_on_the_thread_and_answer_on_the_reactor(worker) -> None:
    ran: list[tuple[int, str]] = []
    answered: list[tuple[int, str]] = []

    def job(n: int) -> int:
        ran.append((n, threading.current_thread().name))
        return n * 10

    failures: list[Failure] = []
    for n in range(50):
        worker.run(
            partial(job, n),
            lambda result: answered.append((result, threading.current_thread().name)),
            failures.append,
        )
    assert await worker.defer(lambda: "last") == "last"
    assert failures == []
    assert ran == [(n, "test-worker") for n in range(50)]
    assert answered == [(n * 10, threading.main_thread().name) for n in range(50)]


@pytest_twisted.ensureDeferred
async def test_a_job_that_raises_fails_alone(worker) -> None:
    def broken() -> None:
        raise ValueError("the database said no")

    with pytest.raises(ValueError, match="said no"):
        await worker.defer(broken)
    failures: list[Failure] = []
    worker.run(broken, lambda _: None, failures.append)
    # The thread is still there for the next job, and answers in order.
    assert await worker.defer(lambda x: x + 1, 41) == 42
    assert [f.type for f in failures] == [ValueError]


def test_stop_lets_queued_jobs_finish_first_and_refuses_later_ones() -> None:
    worker = Worker(reactor, "test-worker-stop")
    worker.start()
    release = threading.Event()
    ran: list[int] = []
    worker.run(release.wait, lambda _: None, lambda _: None)
    for n in range(3):
        worker.run(partial(ran.append, n), lambda _: None, lambda _: None)
    # stop() is called while the jobs are still queued behind the blocked one.
    threading.Timer(0.2, release.set).start()
    assert ran == []
    worker.stop()
    assert ran == [0, 1, 2]
    refused: list[Failure] = []
    worker.run(lambda: None, lambda _: None, refused.append)
    assert [f.type for f in refused] == [WorkerStopped]
    worker.stop()  # a second stop is harmless
