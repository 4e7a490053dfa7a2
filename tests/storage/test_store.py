"""The threaded store: group commit, ordering, failures, restart, closing."""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import defer

from chatserv.events import ChatMessage
from chatserv.storage import StorageClosed, open_store
from tests.support import sleep


@pytest_twisted.async_yield_fixture
async def store(db_url):
    from twisted.internet import reactor

    s = open_store(db_url, reactor)
    yield s
    await s.close()


def msg(id_: int, room: str = "general") -> ChatMessage:
    return ChatMessage(id_, 1_700_000_000.0 + id_, "Ana", f"m{id_}", room=room)


@pytest_twisted.ensureDeferred
async def test_a_burst_is_committed_in_few_transactions_and_fires_in_order(store):
    fired: list[int] = []
    ds = []
    for i in range(1, 2001):
        d = store.append(msg(i))
        d.addCallback(lambda _, i=i: fired.append(i))
        ds.append(d)
    await defer.gatherResults(ds)
    assert fired == list(range(1, 2001))
    # Everything appended in one reactor turn is one transaction.
    assert store.commits == 1 and store.stored == 2000
    page = await store.room_page("general", None, 200)
    assert [m.id for m in page] == list(range(1801, 2001))


@pytest_twisted.ensureDeferred
async def test_appends_during_a_commit_join_the_next_one(store):
    fired: list[int] = []
    first = store.append(msg(1))
    first.addCallback(lambda _: fired.append(1))
    await sleep(0)  # the first commit is now in flight
    rest = []
    for i in range(2, 102):
        d = store.append(msg(i))
        d.addCallback(lambda _, i=i: fired.append(i))
        rest.append(d)
    await defer.gatherResults([first, *rest])
    assert fired == list(range(1, 102))
    assert store.commits <= 3, store.commits


@pytest_twisted.ensureDeferred
async def test_a_refused_message_fails_alone(store):
    await store.append(msg(1))
    results = await defer.DeferredList(
        [store.append(msg(2)), store.append(msg(1)), store.append(msg(3))], consumeErrors=True
    )
    assert [ok for ok, _ in results] == [True, False, True]
    page = await store.room_page("general", None, 10)
    assert [m.id for m in page] == [1, 2, 3]
    # The store goes on working.
    await store.append(msg(4))
    assert store.stored == 4


@pytest_twisted.ensureDeferred
async def test_close_commits_what_is_queued(db_url):
    from twisted.internet import reactor

    s = open_store(db_url, reactor)
    pending = [s.append(msg(i)) for i in range(1, 51)]
    await s.close()
    assert all(d.called for d in pending)
    with pytest.raises(StorageClosed):
        await s.append(msg(51))
    s = open_store(db_url, reactor)
    try:
        assert s.next_id() == 51
        assert [m.id for m in s.recent_now("general", 3)] == [48, 49, 50]
    finally:
        await s.close()


@pytest_twisted.ensureDeferred
async def test_registered_lookups_are_batched(store):
    assert await store.create_account("Ana", "hash", 1.0)
    assert not await store.create_account("ana", "hash", 1.0)
    names = ["Ana", "Luis", "ANA", "Eva"] * 50
    results = await defer.gatherResults([store.is_registered(n) for n in names])
    assert results == [n.casefold() == "ana" for n in names]
    account = await store.account("ＡＮＡ")
    assert account is not None and account.name == "Ana"


@pytest_twisted.ensureDeferred
async def test_memory_store_serves_reads_and_writes(reactor):
    s = open_store(":memory:", reactor)
    try:
        await defer.gatherResults([s.append(msg(i)) for i in range(1, 11)])
        assert [m.id for m in await s.room_page("general", 5, 2)] == [3, 4]
        assert s.next_id() == 11
    finally:
        await s.close()


@pytest_twisted.ensureDeferred
async def test_append_then_calls_back_in_order_and_logs_what_fails(store):
    from twisted.logger import globalLogPublisher

    delivered: list[int] = []
    logged: list[dict] = []
    globalLogPublisher.addObserver(logged.append)
    try:
        await store.append(msg(1))
        for i in (2, 1, 3):  # 1 again: refused by the database
            store.append_then(msg(i), lambda m: delivered.append(m.id))
        await store.append(msg(4))  # committed after the three above
    finally:
        globalLogPublisher.removeObserver(logged.append)
    assert delivered == [2, 3]
    assert any("could not store" in (e.get("log_format") or "") for e in logged)
    assert [m.id for m in await store.room_page("general", None, 10)] == [1, 2, 3, 4]


@pytest_twisted.ensureDeferred
async def test_a_delivery_that_raises_does_not_stop_the_store(store):
    from twisted.logger import globalLogPublisher

    delivered: list[int] = []
    logged: list[dict] = []

    def deliver(m: ChatMessage) -> None:
        if m.id == 2:
            raise RuntimeError("a recipient's bug")
        delivered.append(m.id)

    globalLogPublisher.addObserver(logged.append)
    try:
        for i in (1, 2, 3):  # one batch: the rest of it is still told
            store.append_then(msg(i), deliver)
        await store.append(msg(4))  # and the next batch still commits
        store.append_then(msg(5), deliver)
        await store.append(msg(6))
    finally:
        globalLogPublisher.removeObserver(logged.append)
    assert delivered == [1, 3, 5]
    assert any("delivering a committed" in (e.get("log_format") or "") for e in logged)
    assert store.stored == 6


@pytest_twisted.ensureDeferred
async def test_lookups_after_close_fail_at_once(db_url):
    from twisted.internet import reactor

    s = open_store(db_url, reactor)
    await s.close()
    with pytest.raises(StorageClosed):
        await s.is_registered("Ana")
