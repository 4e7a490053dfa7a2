"""The blocking engines on both databases: migrations, messages, accounts."""

from __future__ import annotations

import sqlite3

import pytest

from chatserv.events import ChatMessage
from chatserv.storage import (
    LATEST,
    SchemaTooNew,
    StorageError,
    conversation_key,
    open_engine,
    open_store,
)


@pytest.fixture
def engine(db_url):
    e = open_engine(db_url)
    e.migrate()
    yield e
    e.close()


def room_msg(id_: int, text: str = "", room: str = "general", sender: str = "Ana") -> ChatMessage:
    return ChatMessage(id_, 1_700_000_000.0 + id_, sender, text or f"m{id_}", room=room)


def private_msg(id_: int, sender: str, recipient: str, ts: float | None = None) -> ChatMessage:
    ts = 1_700_000_000.0 + id_ if ts is None else ts
    return ChatMessage(id_, ts, sender, f"p{id_}", recipient=recipient)


def seed_v1_message(engine, id_: int, text: str, room: str = "general", ts: float | None = None) -> None:
    """A room message as the schema of version 1 stores it (the engine's own
    INSERT is the latest schema's)."""
    body = text.encode() if engine.dialect == "postgresql" else text

    def seed() -> None:
        with engine._transaction():
            engine._execute(
                "INSERT INTO messages (id, ts, sender, room, room_key, body) VALUES (?, ?, ?, ?, ?, ?)",
                (id_, 1_700_000_000.0 + id_ if ts is None else ts, "Ana", room, room.casefold(), body),
            )

    engine._call(seed)


# -- migrations ----------------------------------------------------------------


def test_fresh_database_is_migrated_to_the_latest_version(db_url):
    engine = open_engine(db_url)
    try:
        assert engine.migrate() == LATEST
        assert engine.version() == LATEST
        # Running it again is a no-op.
        assert engine.migrate() == LATEST
        sql = "SELECT version, description FROM schema_version ORDER BY version"
        rows = engine._call(lambda: engine._execute(sql).fetchall())
        assert [r[0] for r in rows] == list(range(1, LATEST + 1))
    finally:
        engine.close()


def test_upgrade_from_version_1_keeps_the_data(db_url):
    engine = open_engine(db_url)
    try:
        assert engine.migrate(target=1) == 1
        seed_v1_message(engine, 1, "antes de migrar")
        with pytest.raises(Exception):  # noqa: B017 - no accounts table before version 2
            engine.accounts()
    finally:
        engine.close()
    engine = open_engine(db_url)
    try:
        assert engine.migrate() == LATEST
        assert [m.text for m in engine.room_page("general", None, 10)] == ["antes de migrar"]
        assert engine.create_account("Ana", "hash", 1.0)
    finally:
        engine.close()


def test_a_newer_schema_is_a_clear_error(db_url, reactor):
    engine = open_engine(db_url)
    engine.migrate()
    engine._call(
        lambda: engine._execute(
            "INSERT INTO schema_version (version, description, applied) VALUES (?, ?, ?)",
            (LATEST + 1, "from the future", "2099-01-01"),
        )
    )
    engine.close()
    engine = open_engine(db_url)
    with pytest.raises(SchemaTooNew) as raised:
        engine.migrate()
    engine.close()
    assert f"schema version {LATEST + 1}" in str(raised.value)
    assert "newer chatserv" in str(raised.value)
    with pytest.raises(SchemaTooNew):
        open_store(db_url, reactor)


def test_a_database_that_is_not_ours_is_a_clear_error(tmp_path, reactor):
    path = tmp_path / "other.sqlite3"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE messages (whatever TEXT)")
    conn.commit()
    conn.close()
    with pytest.raises(StorageError, match="cannot use the SQLite database"):
        open_store(str(path), reactor)


def test_unreachable_postgresql_is_a_clear_error(reactor):
    with pytest.raises(StorageError, match="cannot connect to postgresql://ana:\\*\\*\\*@127.0.0.1:1/"):
        open_store("postgresql://ana:secret@127.0.0.1:1/chat?connect_timeout=2", reactor)


def test_memory_database(reactor):
    engine = open_engine(":memory:")
    assert engine.migrate() == LATEST
    engine.insert_messages([room_msg(1)])
    assert engine.max_id() == 1
    engine.close()


# -- messages --------------------------------------------------------------------


def test_room_pages_are_oldest_first_and_per_room(engine):
    engine.insert_messages([room_msg(i, room="general" if i % 2 else "Sala") for i in range(1, 21)])
    assert [m.id for m in engine.room_page("general", None, 3)] == [15, 17, 19]
    assert [m.id for m in engine.room_page("general", 15, 3)] == [9, 11, 13]
    # Room names are matched like user names: case and width do not matter.
    assert [m.id for m in engine.room_page("ＳＡＬＡ", 7, 100)] == [2, 4, 6]
    page = engine.room_page("sala", None, 1)
    assert page[0].room == "Sala" and page[0].sender == "Ana" and page[0].text == "m20"
    assert page[0].ts == 1_700_000_020.0
    assert engine.max_id() == 20


def test_private_conversations_are_filed_under_both_names(engine):
    engine.insert_messages(
        [
            private_msg(1, "Ana", "Luis"),
            private_msg(2, "luis", "ANA"),
            private_msg(3, "Ana", "Eva"),
            private_msg(4, "Ana", "Ana"),
        ]
    )
    assert conversation_key("Ana", "Luis") == conversation_key("LUIS", "ana")
    assert [m.id for m in engine.private_page("Luis", "Ana", None, 10)] == [1, 2]
    assert [m.id for m in engine.private_page("eva", "ana", None, 10)] == [3]
    assert [m.id for m in engine.private_page("Ana", "Ana", None, 10)] == [4]
    assert engine.private_page("Eva", "Luis", None, 10) == []
    # Nothing private shows up in a room.
    assert engine.room_page("general", None, 10) == []
    # `since` hides what is older.
    assert [m.id for m in engine.private_page("Ana", "Luis", None, 10, since=1_700_000_002.0)] == [2]
    first = engine.private_page("Ana", "Luis", None, 10)[0]
    assert first.room is None and first.recipient == "Luis" and first.sender == "Ana"


def test_message_text_is_stored_exactly(engine):
    text = "línea 1\nlínea 2 \u200b 🎉 \x00 '; DROP TABLE messages; --"
    engine.insert_messages([room_msg(1, text)])
    assert engine.room_page("general", None, 1)[0].text == text


def test_optional_fields_round_trip(engine):
    message = room_msg(1)
    if not hasattr(message, "reply_to"):
        pytest.skip("this hub's ChatMessage has no reply_to")
    message.reply_to = {"id": 7, "from": "Luis", "msg": "¿qué?"}
    engine.insert_messages([message, room_msg(2)])
    first, second = engine.room_page("general", None, 2)
    assert first.reply_to == {"id": 7, "from": "Luis", "msg": "¿qué?"}
    assert second.reply_to is None


def test_a_batch_is_one_transaction(engine):
    engine.insert_messages([room_msg(1)])
    with pytest.raises(Exception):  # noqa: B017 - duplicate key, either driver's error
        engine.insert_messages([room_msg(2), room_msg(1)])
    # Nothing of the failed batch is stored.
    assert [m.id for m in engine.room_page("general", None, 10)] == [1]


def test_rooms_summary(engine):
    engine.insert_messages([room_msg(1), room_msg(2, room="Cine"), room_msg(3, room="cine")])
    rooms = {r.name.casefold(): r for r in engine.rooms()}
    assert rooms["cine"].messages == 2 and rooms["general"].messages == 1
    assert rooms["cine"].last_ts == 1_700_000_003.0


# -- accounts ----------------------------------------------------------------------


def test_accounts(engine):
    assert engine.create_account("Ana", "h1", 5.0)
    assert not engine.create_account("ＡＮＡ", "h2", 6.0)
    account = engine.account("ana")
    assert account is not None and account.name == "Ana" and account.password_hash == "h1"
    assert account.created == 5.0
    assert engine.registered(["ana", "luis"]) == {"ana"}
    assert engine.registered([f"user{i}" for i in range(1200)] + ["ana"]) == {"ana"}
    assert engine.set_password("ANA", "h3")
    assert engine.account("Ana").password_hash == "h3"
    assert not engine.set_password("Luis", "h")
    assert [a.name for a in engine.accounts()] == ["Ana"]
    assert engine.delete_account("ana")
    assert not engine.delete_account("ana")
    assert engine.account("Ana") is None


def test_corrections_keep_every_version_and_retention_takes_them_too(engine):
    from chatserv.events import Correction

    engine.insert_messages([ChatMessage(1, 100.0, "Ana", "hola a todso", room="general"),
                            ChatMessage(2, 200.0, "Ana", "quedo", room="general")])
    engine.correct(Correction(1, 110.0, "Ana", "hola a todos", room="general"))
    engine.correct(Correction(2, 210.0, "Ana", None, room="general"))
    first, second = engine.room_page("general", None, 10)
    assert (first.text, first.edited, first.deleted) == ("hola a todos", 110.0, None)
    assert (second.text, second.deleted) == ("", 210.0)
    assert engine.versions(1) == [(100.0, "hola a todso"), (110.0, "hola a todos")]
    assert engine.versions(2) == [(200.0, "quedo"), (210.0, None)]
    assert engine.delete_older(150.0, 100) == 1
    assert engine.versions(1) == []
    count = engine._call(lambda: engine._execute("SELECT count(*) FROM message_edits").fetchone()[0])
    assert count == 1  # only message 2's deletion is left
