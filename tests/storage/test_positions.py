"""Stream positions and client message ids on both databases (issue 9's foundation).

Every committed message and correction takes the next position of one
stream per database, in commit order; ``events_after`` reads the stream back
for catch-up; a ``cid`` repeated by its sender is stored once, on one store or
on two stores sharing a PostgreSQL database.
"""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import defer

from chatserv.events import ChatMessage, Correction, sender_key
from chatserv.storage import LATEST, open_engine, open_store
from tests.storage.test_engine import seed_v1_message
from tests.support import sleep


@pytest_twisted.async_yield_fixture
async def store(db_url):
    from twisted.internet import reactor

    s = open_store(db_url, reactor)
    yield s
    await s.close()


def msg(id_: int, room: str | None = "general", cid: str | None = None, sender: str = "Ana") -> ChatMessage:
    m = ChatMessage(id_, 1_700_000_000.0 + id_, sender, f"m{id_}", room=room)
    if room is None:
        m.recipient = "Luis"
    if cid is not None:
        m.cid, m.sender_key = cid, sender_key(sender.casefold(), False)
    return m


def commit_all(store, messages: list[ChatMessage]) -> defer.Deferred[list[ChatMessage]]:
    """Append *messages*; fire with what each delivery was called with, in order."""
    delivered: list[ChatMessage] = []
    done: defer.Deferred[list[ChatMessage]] = defer.Deferred()
    left = [len(messages)]

    def deliver(m: ChatMessage) -> None:
        delivered.append(m)
        left[0] -= 1
        if not left[0]:
            done.callback(delivered)

    for m in messages:
        store.append_then(m, deliver)
    return done


@pytest_twisted.ensureDeferred
async def test_positions_follow_commit_order_and_are_contiguous_over_messages_and_corrections(store):
    assert await store.current_position() == 0
    first = await commit_all(store, [msg(i) for i in range(1, 6)])
    assert [m.pos for m in first] == [1, 2, 3, 4, 5]
    await sleep(0)
    # A batch committing while another is in flight, and a private message.
    second = commit_all(store, [msg(6), msg(7, room=None)])
    await sleep(0)
    third = commit_all(store, [msg(8)])
    delivered = (await second) + (await third)
    assert [(m.id, m.pos) for m in delivered] == [(6, 6), (7, 7), (8, 8)]

    fixed: defer.Deferred[Correction] = defer.Deferred()
    edit = Correction(3, 1_700_000_100.0, "Ana", "m3 bis", room="general")
    store.correct_then(edit, fixed.callback)
    assert (await fixed).pos == 9
    gone: defer.Deferred[Correction] = defer.Deferred()
    store.correct_then(Correction(7, 1_700_000_101.0, "Ana", None, recipient="Luis"), gone.callback)
    assert (await gone).pos == 10
    after = await commit_all(store, [msg(9)])
    assert after[0].pos == 11
    assert await store.current_position() == 11
    assert store.position_now() == 11

    events = await store.events_after(0, 100)
    assert [e.pos for e in events] == list(range(1, 12))
    kinds = [(type(e).__name__, e.id) for e in events]
    assert kinds[8:10] == [("Correction", 3), ("Correction", 7)]
    # Messages read as they read now; corrections say what changed.
    assert events[2].text == "m3 bis" and events[2].edited is not None
    assert events[8].text == "m3 bis" and events[8].room == "general"
    assert events[9].deleted and events[9].recipient == "Luis" and events[9].sender == "Ana"
    assert events[6].recipient == "Luis" and events[6].text == "" and events[6].deleted is not None
    # Paging the stream: limit, then on from the last position seen.
    page = await store.events_after(4, 3)
    assert [e.pos for e in page] == [5, 6, 7]
    assert await store.events_after(11, 10) == []


@pytest_twisted.ensureDeferred
async def test_room_and_private_pages_after_a_position(store):
    messages = [msg(i, room="general" if i % 3 else None) for i in range(1, 31)]
    messages += [msg(31, room="Cine")]
    await commit_all(store, messages)
    room = await store.room_after("GENERAL", 0, 5)
    assert [m.pos for m in room] == [1, 2, 4, 5, 7]
    room = await store.room_after("general", 7, 100)
    assert room[0].pos == 8 and all(m.room == "general" for m in room) and len(room) == 15
    private = await store.private_after("luis", "ANA", 3, 2)
    assert [m.pos for m in private] == [6, 9]
    # The horizon (a guest's login time) still applies.
    since = messages[20].ts
    private = await store.private_after("Ana", "Luis", 0, 100, since)
    assert [m.pos for m in private] == [21, 24, 27, 30]
    assert [m.pos for m in await store.room_after("cine", 0, 10)] == [31]


async def correct(store, correction: Correction) -> Correction:
    done: defer.Deferred[Correction] = defer.Deferred()
    store.correct_then(correction, done.callback)
    return await done


@pytest_twisted.ensureDeferred
async def test_a_page_forward_has_the_corrections_of_the_messages_before_it(store):
    await commit_all(store, [msg(1), msg(2), msg(3, room=None)])
    await correct(store, Correction(1, 1_700_000_050.0, "Ana", "m1 bis", room="general"))  # pos 4
    await commit_all(store, [msg(4)])  # pos 5
    await correct(store, Correction(4, 1_700_000_051.0, "Ana", "m4 bis", room="general"))  # pos 6
    await correct(store, Correction(3, 1_700_000_052.0, "Ana", None, recipient="Luis"))  # pos 7

    def shape(events):
        return [(type(e).__name__, e.id, e.pos) for e in events]

    # Message 4 comes as it reads now; its edit is not repeated, 1's is there.
    events = await store.room_events_after("general", 2, 10)
    assert shape(events) == [("Correction", 1, 4), ("ChatMessage", 4, 5)]
    assert events[1].text == "m4 bis"
    assert shape(await store.room_events_after("general", 2, 1)) == [("Correction", 1, 4)]
    assert shape(await store.room_events_after("general", 5, 10)) == [("Correction", 4, 6)]
    private = await store.private_events_after("Luis", "Ana", 3, 10)
    assert shape(private) == [("Correction", 3, 7)] and private[0].deleted
    # Before the private horizon nothing is shown, corrections included.
    assert await store.private_events_after("Luis", "Ana", 0, 10, since=1_700_000_004.0) == []


@pytest_twisted.ensureDeferred
async def test_a_repeated_cid_is_stored_once_and_answered_with_the_original(store):
    # Within one batch, and in a later batch: the later ones take no position.
    first = msg(1, cid="c-1")
    delivered = await commit_all(store, [first, msg(2, cid="c-1"), msg(3, cid="c-2")])
    assert delivered[0] is first and delivered[1] is first
    assert [m.pos for m in (delivered[0], delivered[2])] == [1, 2]
    again = await commit_all(store, [msg(4, cid="c-2"), msg(5)])
    assert again[0].id == 3 and again[0].pos == 2 and again[0].cid == "c-2"
    assert again[1].pos == 3
    # Another sender may use the same cid; so may the account of the same name.
    other = msg(6, cid="c-1", sender="Luis")
    account = msg(7, cid="c-1")
    account.sender_key = sender_key("ana", True)
    assert await commit_all(store, [other, account]) == [other, account]
    assert [m.pos for m in (other, account)] == [4, 5]
    assert [m.id for m in await store.events_after(0, 100)] == [1, 3, 5, 6, 7]
    # Deferred form: None when stored, the original when repeated.
    assert (await store.append(msg(8, cid="c-9"))) is None
    original = await store.append(msg(9, cid="c-9"))
    assert original.id == 8


@pytest_twisted.ensureDeferred
async def test_a_repeat_through_another_store_after_a_restart_is_recognised(db_url):
    from twisted.internet import reactor

    s = open_store(db_url, reactor)
    await commit_all(s, [msg(1, cid="x")])
    await s.close()
    s = open_store(db_url, reactor)
    try:
        got = await commit_all(s, [msg(2, cid="x"), msg(3)])
        assert got[0].id == 1 and got[0].pos == 1
        assert got[1].pos == 2
    finally:
        await s.close()


# -- several stores on one PostgreSQL database (the cluster's case) -------------


@pytest.fixture
def pg_url(pg_schema_url):
    return pg_schema_url


@pytest_twisted.ensureDeferred
async def test_two_stores_on_one_postgresql_take_positions_in_commit_order(pg_url):
    from twisted.internet import reactor

    a, b = open_store(pg_url, reactor), open_store(pg_url, reactor)
    try:
        batches = []
        for round_ in range(20):
            base = 1000 * round_
            batches.append(commit_all(a, [msg(base + i) for i in range(1, 6)]))
            batches.append(commit_all(b, [msg(base + 500 + i) for i in range(1, 4)]))
            if round_ % 5 == 0:
                await sleep(0)
        results = [await d for d in batches]
        delivered = [m for result in results for m in result]
        positions = sorted(m.pos for m in delivered)
        assert positions == list(range(1, 20 * 8 + 1))  # contiguous, none shared
        events = await a.events_after(0, 1000)
        assert [e.pos for e in events] == positions
        # Each store's own commits keep their order.
        for store in (a, b):
            own = [m for m in delivered if (m.id % 1000 >= 500) == (store is b)]
            assert [m.pos for m in own] == sorted(m.pos for m in own)
    finally:
        await a.close()
        await b.close()


@pytest_twisted.ensureDeferred
async def test_a_concurrent_resend_through_two_stores_is_stored_once(pg_url):
    from twisted.internet import reactor

    a, b = open_store(pg_url, reactor), open_store(pg_url, reactor)
    try:
        for round_ in range(10):
            cid = f"retry-{round_}"
            one = msg(2 * round_ + 1, cid=cid)
            two = msg(2 * round_ + 2, cid=cid)
            got_a, got_b = await defer.gatherResults([commit_all(a, [one]), commit_all(b, [two])])
            winner = got_a[0]
            assert got_b[0].id == winner.id and got_b[0].pos == winner.pos, (got_a, got_b)
            assert winner.id in (one.id, two.id)
        events = await a.events_after(0, 100)
        assert [e.pos for e in events] == list(range(1, 11))
        assert sorted(e.cid for e in events) == sorted(f"retry-{i}" for i in range(10))
    finally:
        await a.close()
        await b.close()


# -- migration 6 ------------------------------------------------------------------


def test_migration_6_numbers_what_older_versions_stored(db_url):
    engine = open_engine(db_url)
    try:
        assert engine.migrate(target=5) == 5
        for id_ in (3, 5, 9):  # gaps in ids, as retention leaves them
            seed_v1_message(engine, id_, f"old {id_}")
        body = b"fixed" if engine.dialect == "postgresql" else "fixed"

        def edit() -> None:
            with engine._transaction():
                sql = "INSERT INTO message_edits (message_id, ts, body) VALUES (?, ?, ?)"
                engine._execute(sql, (5, 2e9, body))
                engine._execute(sql, (3, 1e9, None))

        engine._call(edit)
    finally:
        engine.close()
    engine = open_engine(db_url)
    try:
        assert engine.migrate() == LATEST
        assert engine.position() == 5
        events = engine.events_after(0, 10)
        assert [(type(e).__name__, e.id, e.pos) for e in events] == [
            ("ChatMessage", 3, 1),
            ("ChatMessage", 5, 2),
            ("ChatMessage", 9, 3),
            ("Correction", 3, 4),  # corrections after the messages, in time order
            ("Correction", 5, 5),
        ]
        new = msg(10, cid="after-migration")
        assert engine.insert_messages([new]) is None
        assert new.pos == 6 and engine.position() == 6
        assert [m.id for m in engine.room_after("general", 2, 10)] == [9, 10]
    finally:
        engine.close()


def test_a_batch_replayed_after_a_lost_connection_keeps_the_positions_it_got(pg_url):
    """PostgreSQL: the connection died around a commit, so the batch is
    replayed; what did commit keeps its position, the rest takes new ones."""
    engine = open_engine(pg_url)
    try:
        engine.migrate()
        committed = [msg(1), msg(2, cid="k")]
        engine.insert_messages(committed)
        replayed = [msg(1), msg(2, cid="k"), msg(3), msg(4, cid="k")]

        def replay():
            with engine._transaction():
                return engine._replay(replayed)

        originals = engine._call(replay)
        assert [m.pos for m in replayed[:3]] == [1, 2, 3]
        assert originals is not None and originals[3] is not None and originals[3].id == 2
        assert originals[:3] == [None, None, None]
        assert engine.position() == 3
    finally:
        engine.close()


def test_a_batch_after_a_dropped_connection_is_stored_once_at_the_next_positions(pg_url):
    import psycopg

    from tests.storage.conftest import PG_ADMIN_DSN

    engine = open_engine(pg_url)
    try:
        engine.migrate()
        engine.insert_messages([msg(1), msg(2)])
        with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (engine.conn.info.backend_pid,))
        batch = [msg(3), msg(4, cid="k")]
        assert engine.insert_messages(batch) is None  # replayed on a new connection
        assert [m.pos for m in batch] == [3, 4]
        assert [e.id for e in engine.events_after(0, 10)] == [1, 2, 3, 4]
    finally:
        engine.close()


@pytest_twisted.ensureDeferred
async def test_random_interleavings_deliver_each_event_once_in_position_order(store):
    """Messages, resends and corrections in random reactor turns: every
    delivery is in position order, and the positions of what was stored are
    1..n with nothing shared and nothing skipped."""
    import random

    rng = random.Random(9)
    delivered: list[tuple[str, int, int]] = []  # (kind, id, pos) in delivery order
    pending: list[defer.Deferred[None]] = []
    stored_ids: list[int] = []
    next_id = 1
    for turn in range(30):
        for _ in range(rng.randint(1, 8)):
            roll = rng.random()
            if roll < 0.2 and stored_ids:
                target = rng.choice(stored_ids)
                d: defer.Deferred[None] = defer.Deferred()
                fix = Correction(target, 1_700_001_000.0 + turn, "Ana", f"fix {turn}", room="general")
                store.correct_then(
                    fix, lambda c, d=d: (delivered.append(("c", c.id, c.pos)), d.callback(None))
                )
                pending.append(d)
                continue
            cid = f"k{rng.randint(1, 15)}" if roll < 0.6 else None
            m = msg(next_id, cid=cid)
            next_id += 1
            d = defer.Deferred()

            def deliver(got: ChatMessage, m=m, d=d) -> None:
                delivered.append(("m" if got is m else "repeat", got.id, got.pos))
                if got is m:
                    stored_ids.append(m.id)
                d.callback(None)

            store.append_then(m, deliver)
            pending.append(d)
        await sleep(0) if rng.random() < 0.7 else await defer.gatherResults(pending)
    await defer.gatherResults(pending)
    kinds = [kind for kind, _, _ in delivered]
    assert kinds.count("repeat") > 5 and kinds.count("c") > 5, kinds  # the test covers them
    fresh = [pos for kind, _, pos in delivered if kind != "repeat"]
    assert sorted(fresh) == list(range(1, len(fresh) + 1))
    assert fresh == sorted(fresh)  # delivered in position order
    events = await store.events_after(0, 1000)
    assert [e.pos for e in events] == sorted(fresh)
    cids = [e.cid for e in events if isinstance(e, ChatMessage) and e.cid is not None]
    assert len(cids) == len(set(cids))
    for kind, id_, pos in delivered:
        if kind == "repeat":
            assert any(e.id == id_ and e.pos == pos for e in events)
