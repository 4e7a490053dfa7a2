"""Issue 11 item 8 on a database: look-alike names share one key, and
migration 4 re-keys what earlier versions stored."""

from __future__ import annotations

import unicodedata

import pytest_twisted

from chatserv.storage import LATEST, open_engine


def old_key(name: str) -> str:
    """How names were keyed before migration 4."""
    return unicodedata.normalize("NFKC", name).casefold()


def test_migration_4_rekeys_accounts_rooms_and_conversations(db_url):
    engine = open_engine(db_url)
    try:
        assert engine.migrate(target=3) == 3
        rows = [
            # name, created: the Latin Ana is older, so she keeps the name.
            ("Ana", 1.0),
            ("\u0410na", 2.0),  # Cyrillic А
            ("AIice", 3.0),
            ("Luis", 4.0),
            ("\U0001f600", 5.0),  # valid before; kept, but PRECIS refuses it now
        ]

        def seed() -> None:
            with engine._transaction():
                for name, created in rows:
                    engine._execute(
                        "INSERT INTO accounts (name_key, name, password_hash, created) VALUES (?, ?, ?, ?)",
                        (old_key(name), name, f"hash-{name}", created),
                    )
                body = b"hola" if engine.dialect == "postgresql" else "hola"
                for id_, room, conv, sender, recipient in [
                    (1, "Cine", None, "AIice", None),
                    (2, None, f"{old_key('AIice')}\n{old_key('Luis')}", "AIice", "Luis"),
                ]:
                    engine._execute(
                        "INSERT INTO messages (id, ts, sender, room, room_key, recipient, conversation, body)"
                        " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        (id_, 1.0, sender, room, old_key(room) if room else None, recipient, conv, body),
                    )

        engine._call(seed)
    finally:
        engine.close()
    engine = open_engine(db_url)
    try:
        assert engine.migrate() == LATEST
        assert engine.account("Ana").password_hash == "hash-Ana"
        # The look-alike account no longer answers to any spelling of the name.
        assert engine.account("\u0410na").password_hash == "hash-Ana"
        assert engine.account("Alice").password_hash == "hash-AIice"
        assert {a.name for a in engine.accounts()} == {"Ana", "\u0410na", "AIice", "Luis", "\U0001f600"}
        assert [m.id for m in engine.room_page("CINE", None, 10)] == [1]
        assert [m.id for m in engine.private_page("Alice", "luis", None, 10)] == [2]
        assert [m.id for m in engine.private_page("Luis", "AIice", None, 10)] == [2]
    finally:
        engine.close()


@pytest_twisted.ensureDeferred
async def test_a_look_alike_of_a_registered_name_cannot_log_in_as_a_guest(durable):
    srv = await durable()
    ana = await srv.client()
    ana.send(cmd="register", user="Ana", password="secreto123")
    await ana.expect("registered")
    eve = await srv.client()
    eve.send(cmd="login", user="\u0410na")
    assert (await eve.expect("error"))["code"] == "auth_failed"
    eve.send(cmd="register", user="\u0410na", password="otra clave")
    assert (await eve.expect("error"))["code"] == "name_taken"
    eve.send(cmd="login", user="Ana\u034f")
    assert (await eve.expect("error"))["code"] == "bad_name"
