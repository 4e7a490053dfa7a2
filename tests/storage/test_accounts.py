"""Accounts: throttling on a fake clock, and register/login end to end."""

from __future__ import annotations

import pytest_twisted
from argon2 import PasswordHasher
from twisted.internet import defer
from twisted.internet.defer import CancelledError
from twisted.internet.task import Clock

from chatserv.accounts import (
    MAX_BACKOFF,
    REGISTER_BURST,
    REGISTER_BURST_PER_ADDRESS,
    REGISTER_EVERY,
    REGISTER_RATE,
    WRONG,
    Accounts,
    Throttle,
)
from chatserv.errors import AuthFailed, RateLimited, ServerBusy
from chatserv.hashing import HashPool, HashQueue
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
    hashing = HashPool(reactor)
    hashing.startService()
    yield Accounts(store, clock, hashing.queue, hasher=FAST)
    hashing.stopService()
    await store.close()


async def fails(d: defer.Deferred, exc: type[Exception] = AuthFailed) -> Exception:
    try:
        await d
    except exc as e:
        return e
    raise AssertionError("did not fail")


@pytest_twisted.ensureDeferred
async def test_login_throttling_per_account_slows_the_guesser(accounts):
    await accounts.register("Ana", "correcto123", "10.0.0.1")
    clock = accounts.clock
    for i in range(accounts.by_account.free):
        e = await fails(accounts.authenticate("Ana", f"mal{i}", "10.6.6.6"))
        assert str(e) == WRONG
    e = await fails(accounts.authenticate("Ana", "mal", "10.6.6.6"))
    assert str(e) == WRONG
    # Now the guesser's attempts are not even checked, the right password included.
    e = await fails(accounts.authenticate("Ana", "correcto123", "10.6.6.6"))
    assert "vuelve a intentarlo en 1 s" in str(e)
    clock.advance(1.0)
    identity = await accounts.authenticate("ana", "correcto123", "10.6.6.6")
    assert identity.name == "Ana" and identity.account


@pytest_twisted.ensureDeferred
async def test_the_guesser_does_not_lock_the_owner_out(accounts):
    """Issue 11, item 6: 11 wrong guesses, then the owner's correct password."""
    await accounts.register("Ana", "correcto123", "10.0.0.1")
    clock = accounts.clock
    guesses = 0
    while guesses < 11:
        e = await fails(accounts.authenticate("Ana", f"mal{guesses}", "10.6.6.6"))
        if str(e) == WRONG:
            guesses += 1
        clock.advance(5.0)
    # Still throttled for the guesser...
    e = await fails(accounts.authenticate("Ana", "otra", "10.6.6.6"))
    assert "vuelve a intentarlo" in str(e)
    # ...but not for the owner, from an address that has not failed on the name.
    for _ in range(11):
        assert (await accounts.authenticate("Ana", "correcto123", "10.0.0.1")).name == "Ana"
        await fails(accounts.authenticate("Ana", "otra", "10.6.6.6"))
    # The owner's successes do not unlock the name for the guesser.
    assert accounts.by_account.failures("ana") >= 11
    e = await fails(accounts.authenticate("Ana", "otra", "10.6.6.6"))
    assert "vuelve a intentarlo" in str(e)


@pytest_twisted.ensureDeferred
async def test_an_owner_who_mistypes_is_throttled_like_a_guesser(accounts):
    await accounts.register("Ana", "correcto123", "10.0.0.1")
    for i in range(accounts.by_account.free + 1):
        await fails(accounts.authenticate("Ana", f"mal{i}", "10.6.6.6"))
    # A typo makes the owner's address one with a recent failure on the name.
    assert str(await fails(accounts.authenticate("Ana", "correcto12", "10.0.0.1"))) == WRONG
    e = await fails(accounts.authenticate("Ana", "correcto123", "10.0.0.1"))
    assert "vuelve a intentarlo" in str(e)
    # That lasts at most the longest back-off.
    accounts.clock.advance(MAX_BACKOFF)
    assert (await accounts.authenticate("Ana", "correcto123", "10.0.0.1")).name == "Ana"


@pytest_twisted.ensureDeferred
async def test_a_sprayer_does_not_lock_out_an_owner_known_at_its_address(accounts):
    await accounts.register("Ana", "correcto123", "10.7.7.7")
    await accounts.register("Luis", "correcto123", "10.7.7.7")
    await accounts.authenticate("Ana", "correcto123", "10.7.7.7")  # Ana has logged in from here
    for i in range(22):
        await fails(accounts.authenticate(f"inventado{i}", "adivina123", "10.7.7.7"))
    assert (await accounts.authenticate("Ana", "correcto123", "10.7.7.7")).name == "Ana"
    # An account never seen at this address waits out the address's back-off.
    e = await fails(accounts.authenticate("Luis", "correcto123", "10.7.7.7"))
    assert "vuelve a intentarlo" in str(e)


@pytest_twisted.ensureDeferred
async def test_the_back_off_is_bounded(accounts):
    await accounts.register("Ana", "correcto123", "10.0.0.1")
    for _ in range(200):
        accounts.by_account.failure("ana")
        accounts.by_address.failure("10.6.6.6")
    assert accounts.by_account.wait("ana") == MAX_BACKOFF
    e = await fails(accounts.authenticate("Ana", "correcto123", "10.6.6.6"))
    assert "vuelve a intentarlo en 900 s" in str(e)
    accounts.clock.advance(MAX_BACKOFF)
    assert (await accounts.authenticate("Ana", "correcto123", "10.6.6.6")).name == "Ana"


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
    attempts = [accounts.authenticate("Ana", f"mal{i}", "10.3.0.1") for i in range(20)]
    results = await defer.DeferredList(attempts, consumeErrors=True)
    messages = [str(f.value) for ok, f in results]
    assert not any(ok for ok, _ in results)
    # Only the free attempts (plus the one that crosses) were checked.
    assert messages.count(WRONG) == accounts.by_account.free + 1
    assert sum("vuelve a intentarlo" in m for m in messages) == 20 - accounts.by_account.free - 1


@pytest_twisted.ensureDeferred
async def test_each_address_gets_one_unthrottled_attempt_at_a_throttled_name(accounts):
    # The price of never locking the owner out: a clean address is checked.
    await accounts.register("Ana", "correcto123", "10.0.0.1")
    for i in range(accounts.by_account.free + 3):
        await fails(accounts.authenticate("Ana", f"mal{i}", "10.3.0.1"))
    attempts = [accounts.authenticate("Ana", "mal", f"10.4.0.{i}") for i in range(5)]
    attempts += [accounts.authenticate("Ana", "mal", f"10.4.0.{i}") for i in range(5)]
    results = await defer.DeferredList(attempts, consumeErrors=True)
    messages = [str(f.value) for _, f in results]
    assert messages[:5] == [WRONG] * 5
    assert all("vuelve a intentarlo" in m for m in messages[5:])


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
    factory = srv.server.factory
    accounts = factory.accounts
    c.send(cmd="login", user="Ana", password="secreto123")
    while accounts.by_account.failures("ana") == 0:  # the attempt has started
        await sleep(0.001)
    c.close()  # before the hash is checked
    await c.closed
    # The server notices the close while the login waits (it keeps reading),
    # drops the attempt and takes back the failure it counted in advance.
    while len(factory.connections) > 1 or accounts.by_account.failures("ana"):
        await sleep(0.01)
    hub = srv.server.hub
    assert hub.find("Ana") is None
    assert hub.users() == ("Luis",)
    # Ana never came online, not even for a moment.
    assert not any(b"Ana" in line for line in await watcher.quiet(0.3))
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


# -- registrations and the hashing queue (issue 11, item 5) ---------------------------


@pytest_twisted.ensureDeferred
async def test_registrations_are_throttled_per_address_and_overall(accounts):
    clock = accounts.clock
    for i in range(REGISTER_BURST_PER_ADDRESS):
        await accounts.register(f"a{i}", "12345678", "10.0.0.1")
    e = await fails(accounts.register("otra", "12345678", "10.0.0.1"), RateLimited)
    assert e.code == "rate_limited" and "desde tu dirección" in str(e)
    await accounts.register("b0", "12345678", "10.0.0.2")  # another address is not affected
    clock.advance(REGISTER_EVERY)
    await accounts.register("otra", "12345678", "10.0.0.1")
    # Server-wide: a burst, then REGISTER_RATE per second, whatever the addresses.
    # (the wait above refilled the server-wide allowance; "otra" took one)
    for i in range(REGISTER_BURST - 1):
        await accounts.register(f"c{i}", "12345678", f"10.1.{i}.1")
    e = await fails(accounts.register("tarde", "12345678", "10.2.0.1"), RateLimited)
    assert "demasiadas cuentas nuevas" in str(e)
    clock.advance(1 / REGISTER_RATE)
    assert await accounts.register("tarde", "12345678", "10.2.0.1") == "tarde"
    # Refusals created nothing and hashed nothing.
    assert not await accounts.store.is_registered("otra2")


@pytest_twisted.ensureDeferred
async def test_a_full_hashing_queue_answers_server_busy(tmp_path):
    from twisted.internet import reactor

    from tests.test_hashing import Threads

    store = open_store(str(tmp_path / "busy.sqlite3"), reactor)
    threads = Threads()
    hashes = HashQueue(threads.run, threads=1, max_waiting=2, max_low=1)
    accounts = Accounts(store, Clock(), hashes, hasher=FAST)
    try:
        first = accounts.register("uno", "12345678", "10.0.0.1")  # running
        second = accounts.register("dos", "12345678", "10.0.0.2")  # waiting
        while len(threads.ran) < 1 or hashes.waiting < 1:
            await sleep(0.01)
        e = await fails(accounts.register("tres", "12345678", "10.0.0.3"), ServerBusy)
        assert e.code == "server_busy"
        # A login still finds room, and runs before the waiting registration.
        login = accounts.authenticate("nadie", "12345678", "10.0.0.4")
        while hashes.waiting < 2:
            await sleep(0.01)
        threads.finish()
        assert await first == "uno"
        (stored, _), = threads.running
        assert stored is None  # the login's check (of a dummy hash), not "dos"'s hash
        for d in (login, second):
            d.addErrback(lambda f: f.trap(CancelledError))
            d.cancel()
    finally:
        await store.close()
