"""Accounts: registration, password logins, guest admission, and throttling.

Passwords are hashed with Argon2id (argon2-cffi's RFC 9106 defaults) in a
small thread pool of its own: a hash takes tens of milliseconds and 64 MiB,
so it must never run on the reactor thread, and a pool of its own keeps a
burst of logins from taking every thread of the reactor's shared pool (DNS
look-ups use it) and bounds the memory the hashes take at once.

Failed logins answer ``auth_failed`` with the same text whether or not the
name has an account, after the same work: a name without one is checked
against a dummy hash, so even the time taken does not tell.

Throttling is exponential back-off per account name and per client address,
computed from timestamps of the injected clock when an attempt arrives: no
timers, and memory bounded by pruning the oldest entries.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IReactorTime
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

from .hub import ChatError, InvalidName, NameTaken
from .logs import LogBudget, Logger
from .names import BadName, check_name, name_key

log = Logger()

MIN_PASSWORD = 8
#: Longer passwords are refused: hashing cost grows with length.
MAX_PASSWORD = 1024
#: Argon2 hashes running at once, server-wide (each takes 64 MiB).
HASH_THREADS = 2

WRONG = "usuario o contraseña incorrectos"


class AuthFailed(ChatError):
    code = "auth_failed"


class RateLimited(ChatError):
    code = "rate_limited"


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a login turned out to be."""

    name: str
    #: The session may read private history from this time on: an account
    #: from its creation, a guest from its login, since a guest name is
    #: anyone's once its holder leaves.
    since: float
    account: bool


class Throttle:
    """Exponential back-off for repeated failures, per key.

    The first *free* failures cost nothing; after that, each failure doubles
    the wait before the next attempt, from *base* seconds up to *cap*. A key
    with no failure for *forget* seconds starts afresh.
    """

    __slots__ = ("_now", "free", "base", "cap", "forget", "max_entries", "_entries")

    def __init__(
        self,
        now: Callable[[], float],
        free: int,
        base: float = 1.0,
        cap: float = 900.0,
        forget: float = 6 * 3600.0,
        max_entries: int = 100_000,
    ) -> None:
        self._now = now
        self.free = free
        self.base = base
        self.cap = cap
        self.forget = forget
        self.max_entries = max_entries
        #: key -> (failures, time of the last one); insertion order is the
        #: order of last failure, so the oldest entries come first.
        self._entries: dict[str, tuple[int, float]] = {}

    def failures(self, key: str) -> int:
        entry = self._entries.get(key)
        if entry is None or self._now() - entry[1] >= self.forget:
            return 0
        return entry[0]

    def wait(self, key: str) -> float:
        """Seconds before *key* may try again; 0 if it may now."""
        entry = self._entries.get(key)
        if entry is None:
            return 0.0
        failures, last = entry
        now = self._now()
        if now - last >= self.forget:
            del self._entries[key]
            return 0.0
        if failures <= self.free:
            return 0.0
        delay = min(self.cap, self.base * 2.0 ** (failures - self.free - 1))
        return max(0.0, last + delay - now)

    def failure(self, key: str) -> None:
        now = self._now()
        entry = self._entries.pop(key, None)
        failures = entry[0] + 1 if entry is not None and now - entry[1] < self.forget else 1
        self._entries[key] = (failures, now)
        if len(self._entries) > self.max_entries:
            self._prune()

    def forgive(self, key: str) -> None:
        """Take back one failure (an attempt counted in advance succeeded)."""
        entry = self._entries.get(key)
        if entry is not None:
            if entry[0] <= 1:
                del self._entries[key]
            else:
                self._entries[key] = (entry[0] - 1, entry[1])

    def reset(self, key: str) -> None:
        self._entries.pop(key, None)

    def _prune(self) -> None:
        # Keep memory bounded when someone sprays names or addresses: drop
        # the entries whose last failure is oldest, a tenth at a time.
        excess = len(self._entries) - self.max_entries * 9 // 10
        for key in list(self._entries)[:excess]:
            del self._entries[key]


_pool: ThreadPool | None = None


def _hash_pool(reactor: Any) -> ThreadPool:
    global _pool
    if _pool is None:
        _pool = ThreadPool(0, HASH_THREADS, name="chatserv-argon2")
        _pool.start()
        reactor.addSystemEventTrigger("during", "shutdown", _stop_hash_pool)
    return _pool


def _stop_hash_pool() -> None:
    global _pool
    if _pool is not None:
        _pool.stop()
        _pool = None


class Accounts:
    """Account operations for the protocol, on a :class:`chatserv.storage.Storage`."""

    def __init__(
        self,
        store: Any,
        reactor: Any,
        *,
        clock: IReactorTime | None = None,
        require_accounts: bool = False,
        hasher: Any = None,
    ) -> None:
        self.store = store
        self.reactor = reactor
        self.clock = clock if clock is not None else reactor
        self.require_accounts = require_accounts
        if hasher is None:
            try:
                from argon2 import PasswordHasher
            except ImportError as e:  # an install without the accounts extra
                raise RuntimeError("accounts need argon2-cffi: pip install 'chatserv[accounts]'") from e
            hasher = PasswordHasher()
        self.hasher = hasher
        now = self.clock.seconds
        # Per account: a few typos are free, then guessing slows quickly.
        self.by_account = Throttle(now, free=5)
        # Per address: more slack, since many users may share one address,
        # but one address spraying many names is slowed as well.
        self.by_address = Throttle(now, free=20)
        self._dummy: str | None = None
        self.hashing = 0
        #: Guessers and registration floods write a bounded log (chatserv.logs).
        self.log_budget = LogBudget(self.clock, log)
        self._dummy_lock = threading.Lock()

    # -- the three entry points -------------------------------------------------

    def admit_guest(self, name: str) -> Deferred[Identity]:
        """A login without a password: allowed for a name without an account."""
        if self.require_accounts:
            return fail(AuthFailed("este servidor exige una cuenta: inicia sesión con tu contraseña"))
        try:
            check_name(name)
        except BadName as e:
            return fail(InvalidName(str(e)))

        def decide(registered: bool) -> Identity:
            if registered:
                raise AuthFailed("ese nombre pertenece a una cuenta: inicia sesión con su contraseña")
            return Identity(name, self.clock.seconds(), False)

        return self.store.is_registered(name).addCallback(decide)

    def authenticate(self, name: str, password: str, address: str) -> Deferred[Identity]:
        """A login with a password; fails with :class:`AuthFailed`."""
        return Deferred.fromCoroutine(self._authenticate(name, password, address))

    def register(self, name: str, password: str, address: str) -> Deferred[str]:
        """Create an account; fire with the name as registered."""
        return Deferred.fromCoroutine(self._register(name, password, address))

    # -- implementation ---------------------------------------------------------

    async def _authenticate(self, name: str, password: str, address: str) -> Identity:
        try:
            check_name(name)
        except BadName as e:
            raise InvalidName(str(e)) from None
        key = name_key(name)
        wait = max(self.by_account.wait(key), self.by_address.wait(address))
        if wait > 0:
            raise AuthFailed(f"demasiados intentos fallidos; vuelve a intentarlo en {math.ceil(wait)} s")
        # Counted before the check, so that parallel guesses on several
        # connections are throttled too; a success takes it back.
        self.by_account.failure(key)
        self.by_address.failure(address)
        account = await self.store.account(name)
        stored = account.password_hash if account is not None else None
        ok, rehash = await self._in_pool(self._verify, stored, password)
        if not ok or account is None:
            self.log_budget.line(
                "failed logins", address, "failed login for {name} from {address}", name=name, address=address
            )
            raise AuthFailed(WRONG)
        self.by_account.reset(key)
        self.by_address.forgive(address)
        if rehash:
            # The hasher's parameters went up since this hash was made.
            new_hash = await self._in_pool(self.hasher.hash, password)
            self.store.set_password(account.name, new_hash).addErrback(
                lambda f: log.failure("could not rehash the password of {name}", f, name=account.name)
            )
        return Identity(account.name, account.created, True)

    async def _register(self, name: str, password: str, address: str) -> str:
        try:
            check_name(name)
        except BadName as e:
            raise InvalidName(str(e)) from None
        if len(password) < MIN_PASSWORD:
            raise ChatError(f"la contraseña debe tener al menos {MIN_PASSWORD} caracteres")
        if len(password) > MAX_PASSWORD:
            raise ChatError(f"la contraseña no puede tener más de {MAX_PASSWORD} caracteres")
        wait = self.by_address.wait(address)
        if wait > 0:
            raise RateLimited(f"demasiados intentos; vuelve a intentarlo en {math.ceil(wait)} s")
        # Looked up before hashing, so a taken name costs no Argon2 run.
        if await self.store.is_registered(name):
            self.by_address.failure(address)
            raise NameTaken(f"el nombre {name} ya tiene una cuenta")
        password_hash = await self._in_pool(self.hasher.hash, password)
        if not await self.store.create_account(name, password_hash, self.clock.seconds()):
            self.by_address.failure(address)
            raise NameTaken(f"el nombre {name} ya tiene una cuenta")
        self.log_budget.line(
            "accounts registered",
            address,
            "account {name} registered from {address}",
            name=name,
            address=address,
        )
        return name

    def _in_pool(self, fn: Callable[..., Any], *args: Any) -> Deferred[Any]:
        self.hashing += 1  # waiting for or running in the hash pool (chatserv.metrics)
        d = deferToThreadPool(self.reactor, _hash_pool(self.reactor), fn, *args)

        def done(result: Any) -> Any:
            self.hashing -= 1
            return result

        return d.addBoth(done)

    def _verify(self, stored: str | None, password: str) -> tuple[bool, bool]:
        """(password matches, hash needs upgrading); runs in the hash pool."""
        from argon2.exceptions import InvalidHashError, VerificationError

        try:
            self.hasher.verify(stored if stored is not None else self._dummy_hash(), password)
        except (VerificationError, InvalidHashError):
            return False, False
        if stored is None:
            return False, False
        return True, self.hasher.check_needs_rehash(stored)

    def _dummy_hash(self) -> str:
        with self._dummy_lock:
            if self._dummy is None:
                self._dummy = self.hasher.hash("chatserv: no such account")
            return self._dummy
