"""Accounts: throttling on a fake clock, and register/login end to end."""

from __future__ import annotations

import pytest_twisted
from argon2 import PasswordHasher
from twisted.internet import defer
from twisted.internet.task import Clock

from chatserv.accounts import WRONG, Accounts, AuthFailed, Throttle
from chatserv.storage import open_store
from tests.support import sleep

# Cheap parameters for the unit tests; the end-to-end tests use the real ones.
FAST = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)


# -- Throttle ----------------------------------------------------------------------


def test_throttle_backs_off_exponentially_after_the_free_failures():
    clock = Clock()
    t = Throttle(clock.seconds, free=3, base=1.0, cap=60.0, forget=3600.0)
    for _ in range(3):
        assert t.wait("ana") == 0
        t.failure("ana")
    assert t.wait("ana") == 0  # 3 failures: still free
    t.failure("ana")  # 4th
    assert t.wait("ana") == 1.0
    clock.advance(0.5)
    assert t.wait("ana") == 0.5
    clock.advance(0.5)
    assert t.wait("ana") == 0
    waits = []
    for _ in range(8):
        t.failure("ana")
        waits.append(t.wait("ana"))
        clock.advance(waits[-1])
    assert waits == [2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0]
    # Other keys are not affected.
    assert t.wait("luis") == 0


def test_throttle_forgets_and_forgives():
    clock = Clock()
    t = Throttle(clock.seconds, free=0, base=1.0, cap=60.0, forget=100.0)
    t.failure("ana")
    t.failure("ana")
    assert t.wait("ana") == 2.0
    t.forgive("ana")
    assert t.failures("ana") == 1 and t.wait("ana") == 1.0
    t.reset("ana")
    assert t.failures("ana") == 0 and t.wait("ana") == 0
    t.failure("ana")
    t.failure("ana")
    clock.advance(100.0)
    assert t.wait("ana") == 0 and t.failures("ana") == 0
    t.failure("ana")
    assert t.failures("ana") == 1  # a fresh start


def test_throttle_memory_is_bounded():
    clock = Clock()
    t = Throttle(clock.seconds, free=0, max_entries=1000)
    for i in range(5000):
        clock.advance(0.001)
        t.failure(f"name{i}")
    assert len(t._entries) <= 1000
    # The most recent survive.
    assert t.failures("name4999") == 1


# -- Accounts on a real store with a fake clock -----------------------------------


@pytest_twisted.async_yield_fixture
async def accounts(tmp_path):
    from twisted.internet import reactor

    store = open_store(str(tmp_path / "accounts.sqlite3"), reactor)
    clock = Clock()
    clock.advance(1_800_000_000)
    yield Accounts(store, reactor, clock=clock, hasher=FAST)
    await store.close()


async def fails(d: defer.Deferred, exc: type[Exception] = AuthFailed) -> Exception:
    try:
        await d
    except exc as e:
        return e
    raise AssertionError("did not fail")


@pytest_twisted.ensureDeferred
async def test_login_throttling_per_account(accounts):
    await accounts.register("Ana", "correcto123", "10.0.0.1")
    clock = accounts.clock
    # Every failure comes from a different address: only the account counts.
    for i in range(accounts.by_account.free):
        e = await fails(accounts.authenticate("Ana", f"mal{i}", f"10.1.0.{i}"))
        assert str(e) == WRONG
    e = await fails(accounts.authenticate("Ana", "mal", "10.2.0.1"))
    assert str(e) == WRONG
    # Now throttled: even the right password is not checked.
    e = await fails(accounts.authenticate("Ana", "correcto123", "10.2.0.2"))
    assert "vuelve a intentarlo en 1 s" in str(e)
    clock.advance(1.0)
    identity = await accounts.authenticate("ana", "correcto123", "10.2.0.3")
    assert identity.name == "Ana" and identity.account
    # Success resets the account's count.
    assert accounts.by_account.failures("ana") == 0


@pytest_twisted.ensureDeferred
async def test_login_throttling_per_address_across_names(accounts):
    clock = accounts.clock
    free = accounts.by_address.free
    for i in range(free + 1):
        await fails(accounts.authenticate(f"user{i}", "adivina123", "10.9.9.9"))
    e = await fails(accounts.authenticate("otro", "adivina123", "10.9.9.9"))
    assert "vuelve a intentarlo" in str(e)
    # Another address is not affected.
    e = await fails(accounts.authenticate("otro", "adivina123", "10.9.9.10"))
    assert str(e) == WRONG
    clock.advance(1.0)
    e = await fails(accounts.authenticate("otro", "adivina123", "10.9.9.9"))
    assert str(e) == WRONG


@pytest_twisted.ensureDeferred
async def test_parallel_guesses_are_throttled_too(accounts):
    await accounts.register("Ana", "correcto123", "10.0.0.1")
    attempts = [accounts.authenticate("Ana", f"mal{i}", f"10.3.0.{i}") for i in range(20)]
    results = await defer.DeferredList(attempts, consumeErrors=True)
    messages = [str(f.value) for ok, f in results]
    assert not any(ok for ok, _ in results)
    # Only the free attempts (plus the one that crosses) were checked.
    assert messages.count(WRONG) == accounts.by_account.free + 1
    assert sum("vuelve a intentarlo" in m for m in messages) == 20 - accounts.by_account.free - 1


@pytest_twisted.ensureDeferred
async def test_unknown_names_fail_like_wrong_passwords(accounts):
    await accounts.register("Ana", "correcto123", "10.0.0.1")
    wrong = await fails(accounts.authenticate("Ana", "incorrecto", "10.0.0.2"))
    unknown = await fails(accounts.authenticate("Nadie", "incorrecto", "10.0.0.3"))
    assert str(wrong) == str(unknown) == WRONG
    assert wrong.code == unknown.code == "auth_failed"


@pytest_twisted.ensureDeferred
async def test_outdated_hashes_are_upgraded_on_login(accounts):
    old = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1, hash_len=16)
    await accounts.store.create_account("Ana", old.hash("correcto123"), 1.0)
    await accounts.authenticate("Ana", "correcto123", "10.0.0.1")
    for _ in range(50):
        account = await accounts.store.account("Ana")
        if not FAST.check_needs_rehash(account.password_hash):
            break
        await sleep(0.02)
    assert not FAST.check_needs_rehash(account.password_hash)
    assert (await accounts.authenticate("Ana", "correcto123", "10.0.0.1")).name == "Ana"


@pytest_twisted.ensureDeferred
async def test_register_rules(accounts):
    assert await accounts.register("Ana", "12345678", "10.0.0.1") == "Ana"
    e = await fails(accounts.register("ＡＮＡ", "12345678", "10.0.0.1"), Exception)
    assert e.code == "name_taken"
    e = await fails(accounts.register("Luis", "1234567", "10.0.0.1"), Exception)
    assert e.code == "bad_request"
    e = await fails(accounts.register("mal nombre", "12345678", "10.0.0.1"), Exception)
    assert e.code == "bad_name"
    e = await fails(accounts.register("Luis", "x" * 1025, "10.0.0.1"), Exception)
    assert e.code == "bad_request"
    account = await accounts.store.account("ana")
    assert account.password_hash.startswith("$argon2id$")


# -- end to end over sockets ---------------------------------------------------------


async def register(client, user: str, password: str) -> dict:
    client.send(cmd="register", user=user, password=password)
    return await client.frame()


@pytest_twisted.ensureDeferred
async def test_register_then_login_with_password(durable):
    srv = await durable()
    c = await srv.client()
    assert await register(c, "Ana", "secreto123") == {"cmd": "registered", "user": "Ana"}
    # Registering does not log in.
    c.send(cmd="users")
    assert (await c.frame())["code"] == "not_logged_in"
    c.send(cmd="login", user="ana", password="secreto123")
    history = await c.frame()
    assert history["cmd"] == "history"
    users = await c.expect("users")
    assert users["list"] == ["Ana"]  # the name as registered
    c.send(cmd="broadcast", msg="hola")
    assert (await c.expect("broadcast"))["from"] == "Ana"


@pytest_twisted.ensureDeferred
async def test_register_errors(durable):
    srv = await durable()
    c = await srv.client()
    await register(c, "Ana", "secreto123")
    for user, password, code in [
        ("ANA", "secreto123", "name_taken"),
        ("con espacio", "secreto123", "bad_name"),
        ("Luis", "corta", "bad_request"),
        ("Luis", 12345678, "bad_request"),
    ]:
        answer = await register(c, user, password)
        assert answer["cmd"] == "error" and answer["code"] == code, (user, answer)
        assert answer["ref"] == "register"


@pytest_twisted.ensureDeferred
async def test_failed_logins_do_not_reveal_the_name(durable):
    srv = await durable()
    c = await srv.client()
    await register(c, "Ana", "secreto123")
    c.send(cmd="login", user="Ana", password="otra-cosa")
    wrong = await c.frame()
    c.send(cmd="login", user="Nadie", password="otra-cosa")
    unknown = await c.frame()
    assert wrong == unknown == {"cmd": "error", "code": "auth_failed", "msg": WRONG, "ref": "login"}
    # The connection stays usable.
    c.send(cmd="login", user="Ana", password="secreto123")
    assert (await c.frame())["cmd"] == "history"


@pytest_twisted.ensureDeferred
async def test_a_registered_name_cannot_be_taken_by_a_guest(durable):
    srv = await durable()
    c = await srv.client()
    await register(c, "Ana", "secreto123")
    guest = await srv.client()
    guest.send(cmd="login", user="ａｎａ")
    answer = await guest.frame()
    assert answer["cmd"] == "error" and answer["code"] == "auth_failed"
    # Guests with free names are still welcome.
    await guest.login("Luis")


@pytest_twisted.ensureDeferred
async def test_online_names_cannot_be_registered_by_others_but_a_guest_may_register_its_own(durable):
    srv = await durable()
    luis = await srv.client()
    await luis.login("Luis")
    other = await srv.client()
    answer = await register(other, "luis", "secreto123")
    assert answer["code"] == "name_taken"
    assert await register(luis, "Luis", "secreto123") == {"cmd": "registered", "user": "Luis"}
    luis.close()
    await luis.closed
    again = await srv.client()
    again.send(cmd="login", user="Luis")
    assert (await again.frame())["code"] == "auth_failed"
    again.send(cmd="login", user="Luis", password="secreto123")
    assert (await again.frame())["cmd"] == "history"


@pytest_twisted.ensureDeferred
async def test_require_accounts(durable):
    srv = await durable(require_accounts=True)
    c = await srv.client()
    c.send(cmd="login", user="Invitado")
    answer = await c.frame()
    assert answer["code"] == "auth_failed" and "cuenta" in answer["msg"]
    await register(c, "Ana", "secreto123")
    c.send(cmd="login", user="Ana", password="secreto123")
    assert (await c.frame())["cmd"] == "history"


@pytest_twisted.ensureDeferred
async def test_frames_sent_during_a_login_are_handled_after_it(durable):
    srv = await durable()
    c = await srv.client()
    await register(c, "Ana", "secreto123")
    watcher = await srv.client()
    await watcher.login("Luis")
    # Login, a broadcast and a users request in one packet: the broadcast
    # must not be refused as not_logged_in while the password is checked.
    c.send_raw(
        b'{"cmd":"login","user":"Ana","password":"secreto123"}\n'
        b'{"cmd":"broadcast","msg":"primero"}\n'
        b'{"cmd":"users"}\n'
    )
    assert (await c.frame())["cmd"] == "history"
    got = [await c.frame() for _ in range(3)]
    cmds = [f["cmd"] for f in got]
    assert "error" not in cmds, got
    assert (await watcher.expect("broadcast"))["msg"] == "primero"


@pytest_twisted.ensureDeferred
async def test_failed_login_then_pipelined_frames_get_not_logged_in(durable):
    srv = await durable()
    c = await srv.client()
    c.send_raw(b'{"cmd":"login","user":"Nadie","password":"secreto123"}\n{"cmd":"broadcast","msg":"x"}\n')
    assert (await c.frame())["code"] == "auth_failed"
    assert (await c.frame())["code"] == "not_logged_in"


@pytest_twisted.ensureDeferred
async def test_a_connection_closed_during_login_leaves_no_session(durable):
    srv = await durable()
    c = await srv.client()
    await register(c, "Ana", "secreto123")
    watcher = await srv.client()
    await watcher.login("Luis")
    accounts = srv.server.factory.accounts
    c.send(cmd="login", user="Ana", password="secreto123")
    while accounts.by_account.failures("ana") == 0:  # the attempt has started
        await sleep(0.001)
    c.close()  # before the hash is checked
    await c.closed
    # The attempt counts as a failure until the password is verified.
    while accounts.by_account.failures("ana"):
        await sleep(0.01)
    hub = srv.server.hub
    assert hub.find("Ana") is None
    assert hub.users() == ("Luis",)
    again = await srv.client()
    again.send(cmd="login", user="Ana", password="secreto123")
    assert (await again.frame())["cmd"] == "history"
    users = await again.expect("users")
    assert users["list"] == ["Luis", "Ana"]


@pytest_twisted.ensureDeferred
async def test_plain_text_clients_can_register_and_log_in(durable):
    srv = await durable()
    c = await srv.client()
    c.send_raw(b"/register Ana una clave larga\n")
    assert b"Cuenta Ana creada" in await c.line()
    c.send_raw(b"Ana: hola\n")  # a guest claiming a registered name
    assert b"auth_failed" in await c.line()
    c.send_raw(b"/login Ana una clave mala\n")
    assert b"auth_failed" in await c.line()
    c.send_raw(b"/login Ana una clave larga\nhola a todos\n")
    assert b"Hola, Ana" in await c.line()
    while b"hola a todos" not in (line := await c.line()):
        pass
    assert line == b"Ana: hola a todos"


@pytest_twisted.ensureDeferred
async def test_throttled_login_over_the_wire(durable):
    srv = await durable()
    accounts = srv.server.factory.accounts
    # Pretend this address has failed a lot already.
    for _ in range(accounts.by_address.free + 3):
        accounts.by_address.failure("127.0.0.1")
    c = await srv.client()
    c.send(cmd="login", user="Ana", password="secreto123")
    answer = await c.frame()
    assert answer["code"] == "auth_failed" and "vuelve a intentarlo" in answer["msg"]
