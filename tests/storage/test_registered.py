"""chatserv.registered: guest logins decided from memory, on a real SQLite
store, with another engine on the same file playing ``chatserv-admin``."""

from __future__ import annotations

import time

import pytest_twisted
from twisted.internet.task import Clock

from chatserv.accounts import Accounts
from chatserv.errors import AuthFailed
from chatserv.hashing import HashPool
from chatserv.names import name_key
from chatserv.registered import FRESH
from chatserv.storage import open_engine, open_store
from tests.storage.test_accounts import FAST
from tests.support import sleep


@pytest_twisted.async_yield_fixture
async def world(tmp_path):
    from twisted.internet import reactor

    path = str(tmp_path / "accounts.sqlite3")
    store = open_store(path, reactor)
    clock = Clock()
    clock.advance(1_800_000_000)
    hashing = HashPool(reactor)
    hashing.startService()
    accounts = Accounts(store, clock, hashing.queue, hasher=FAST)
    admin = open_engine(path)  # another process's connection, as chatserv-admin's
    yield accounts, clock, admin
    admin.close()
    hashing.stopService()
    await store.close()


async def loaded(accounts: Accounts) -> None:
    """Until memory answers: the first guest login after the keys went stale
    starts their check; wait for it."""
    for _ in range(200):
        if accounts.guest_now("Nadie") is not None:
            return
        await sleep(0.01)
    raise AssertionError("registered names never loaded")


@pytest_twisted.ensureDeferred
async def test_guest_logins_from_memory_once_loaded(world):
    accounts, clock, admin = world
    assert accounts.guest_now("Ana") is None  # not loaded yet: ask the database
    assert (await accounts.admit_guest("Ana")).name == "Ana"
    await loaded(accounts)
    identity = accounts.guest_now("Ana")
    assert identity is not None and identity.name == "Ana" and not identity.account


@pytest_twisted.ensureDeferred
async def test_an_account_this_process_registers_is_refused_to_guests_at_once(world):
    accounts, clock, admin = world
    await loaded(accounts)
    await accounts.register("Luis", "secreto123", "10.0.0.1")
    try:
        accounts.guest_now("ＬＵＩＳ")
    except AuthFailed:
        pass
    else:
        raise AssertionError("a guest took a registered name")


@pytest_twisted.ensureDeferred
async def test_an_account_made_elsewhere_is_refused_within_fresh_seconds(world):
    accounts, clock, admin = world
    await loaded(accounts)
    assert admin.create_account("Eva", "hash", time.time())
    clock.advance(FRESH + 0.1)
    # Stale: the database decides until the fingerprint has been checked.
    assert accounts.guest_now("Eva") is None
    await loaded(accounts)
    try:
        accounts.guest_now("Eva")
    except AuthFailed:
        pass
    else:
        raise AssertionError("a guest took a name registered by chatserv-admin")
    # Deleted elsewhere: free again after the next check.
    assert admin.delete_account("Eva")
    clock.advance(FRESH + 0.1)
    await loaded(accounts)
    assert accounts.guest_now("Eva") is not None


@pytest_twisted.ensureDeferred
async def test_invalidate_sends_logins_to_the_database(world):
    accounts, clock, admin = world
    await loaded(accounts)
    admin.create_account("Eva", "hash", time.time())
    accounts.registered.invalidate()
    assert accounts.guest_now("Eva") is None
    try:
        await accounts.admit_guest("Eva")
    except AuthFailed:
        pass
    else:
        raise AssertionError("the database path let a guest take a registered name")


@pytest_twisted.ensureDeferred
async def test_own_registrations_do_not_force_a_reload(world):
    accounts, clock, admin = world
    await loaded(accounts)
    await accounts.register("Luis", "secreto123", "10.0.0.1")
    clock.advance(FRESH + 0.1)
    await loaded(accounts)
    # The fingerprint followed the registration: the check matched, so the
    # keys are the same set object, not a reloaded one.
    keys = accounts.registered._keys
    clock.advance(FRESH + 0.1)
    await loaded(accounts)
    assert accounts.registered._keys is keys and name_key("Luis") in keys
