"""Accounts: registration, password logins, guest admission, and throttling.

Passwords are hashed with Argon2id (argon2-cffi's RFC 9106 defaults) in a
small thread pool of its own: a hash takes tens of milliseconds and 64 MiB,
so it must never run on the reactor thread, and a pool of its own keeps a
burst of logins from taking every thread of the reactor's shared pool (DNS
look-ups use it) and bounds the memory the hashes take at once.

Failed logins answer ``auth_failed`` with the same text whether or not the
name has an account, after the same work: a name without one is checked
against a dummy hash, so even the time taken does not tell.

Throttling throttles the guesser, not the owner ("lock the attempt, not the
account"): exponential back-off per client address, and per account name for
attempts from addresses that failed on that name recently. A correct password
from an address without recent failures on the name logs in however much
others guess it, and an address the account logged in from before is not
slowed by the failures other names had from it. Registrations are limited
per address and server-wide, and every hash goes through the bounded,
prioritised queue of :mod:`chatserv.hashing`. All of it is computed from
timestamps of the injected clock when a request arrives: no timers, and
memory bounded by pruning the oldest entries.

In a cluster the failure counts are shared by every node (:class:`SharedFailures`,
kept in Redis by chatserv.cluster_redis.failures), so a guesser gains nothing
by spreading its attempts over the nodes; each node keeps its own counts as
well, which alone decide while Redis is away, and which are a lone node's
whole truth (it has no ``shared``, and takes no other path).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime

from .errors import AuthFailed, ChatError, InvalidName, NameTaken, RateLimited, ServerBusy
from .hashing import BUSY, HIGH, LOW, HashQueue
from .logs import LogBudget, Logger
from .names import BadName, check_name, name_key
from .ratelimit import Allowance
from .registered import RegisteredNames

if TYPE_CHECKING:
    from .storage import AccountStore

log = Logger()

MIN_PASSWORD = 8
#: Longer passwords are refused: hashing cost grows with length.
MAX_PASSWORD = 1024
#: Back-off never exceeds this many seconds (docs/PROTOCOL.md, "Bounds").
MAX_BACKOFF = 900.0
#: How long an address that failed on a name stays subject to the name's
#: back-off: the longest back-off, so waiting it out gains a guesser nothing.
RECENT_FAILURE = MAX_BACKOFF
#: How long a successful login from an address is remembered.
KNOWN_FOR = 30 * 86400.0
#: Registrations: per address, a burst then one every REGISTER_EVERY seconds;
#: server-wide, a burst then REGISTER_RATE per second.
REGISTER_BURST_PER_ADDRESS = 5
REGISTER_EVERY = 120.0
REGISTER_BURST = 30
REGISTER_RATE = 1.0

WRONG = "usuario o contraseña incorrectos"
OWNED = "ese nombre pertenece a una cuenta: inicia sesión con su contraseña"


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
        cap: float = MAX_BACKOFF,
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
        return self.wait_after(failures, last, now)

    def wait_after(self, failures: int, last: float, now: float) -> float:
        """Seconds to wait at *now* after *failures* failures, the last at *last*."""
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


class SharedFailures(Protocol):
    """Failure counts every node of a cluster shares, by *kind* (``account``,
    ``address``, ``pair``) and key, with the back-off rules of the node's
    :class:`Throttle` for that kind; reads fail while the cluster's store is
    away (the node's own counts then decide alone)."""

    def failures(self, kind: str, key: str) -> Deferred[int]: ...

    def wait(self, kind: str, key: str, rules: Throttle) -> Deferred[float]: ...

    def failure(self, kind: str, key: str, rules: Throttle) -> None: ...

    def forgive(self, kind: str, key: str) -> None: ...

    def reset(self, kind: str, key: str) -> None: ...


class Recent:
    """Keys seen within the last *forget* seconds; at most *max_entries* of them."""

    __slots__ = ("_now", "forget", "max_entries", "_seen")

    def __init__(self, now: Callable[[], float], forget: float, max_entries: int = 100_000) -> None:
        self._now = now
        self.forget = forget
        self.max_entries = max_entries
        self._seen: dict[str, float] = {}  # oldest first

    def add(self, key: str) -> None:
        self._seen.pop(key, None)
        self._seen[key] = self._now()
        if len(self._seen) > self.max_entries:
            for old in list(self._seen)[: len(self._seen) - self.max_entries * 9 // 10]:
                del self._seen[old]

    def __contains__(self, key: str) -> bool:
        seen = self._seen.get(key)
        return seen is not None and self._now() - seen < self.forget


class Accounts:
    """Account operations for the protocol, on a :class:`chatserv.storage.AccountStore`.

    Every hash goes through *hashes*, the queue of the application's
    :class:`chatserv.hashing.HashPool`.
    """

    def __init__(
        self,
        store: AccountStore,
        clock: IReactorTime,
        hashes: HashQueue,
        *,
        require_accounts: bool = False,
        hasher: Any = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.require_accounts = require_accounts
        if hasher is None:
            try:
                from argon2 import PasswordHasher
            except ImportError as e:  # an install without the accounts extra
                raise RuntimeError("accounts need argon2-cffi: pip install 'chatserv[accounts]'") from e
            hasher = PasswordHasher()
        self.hasher = hasher
        now = self.clock.seconds
        # Per account: a few typos are free, then guessing slows quickly; it
        # applies only to addresses in by_pair (see _wait).
        self.by_account = Throttle(now, free=5)
        # Per address: more slack, since many users may share one address,
        # but one address spraying many names is slowed as well.
        self.by_address = Throttle(now, free=20)
        # Which address failed on which name recently ("name address" keys).
        self.by_pair = Throttle(now, free=0, forget=RECENT_FAILURE)
        # Which name logged in from which address: its owner, most likely.
        self.known = Recent(now, KNOWN_FOR)
        self.registrations = Allowance(1.0 / REGISTER_EVERY, REGISTER_BURST_PER_ADDRESS, now)
        self.all_registrations = Allowance(REGISTER_RATE, REGISTER_BURST, now, max_keys=1)
        self.hashes = hashes
        #: Which names have an account, so a guest login asks no query.
        self.registered = RegisteredNames(store, clock)
        self._dummy: str | None = None
        #: Guessers and registration floods write a bounded log (chatserv.logs).
        self.log_budget = LogBudget(self.clock, log)
        self._dummy_lock = threading.Lock()
        #: The cluster's shared failure counts (None: a lone node).
        self.shared: SharedFailures | None = None

    # -- the three entry points -------------------------------------------------

    def admit_guest(self, name: str) -> Deferred[Identity]:
        """A login without a password: allowed for a name without an account."""
        try:
            identity = self.guest_now(name)
        except ChatError as e:
            return fail(e)
        if identity is not None:
            return succeed(identity)

        def decide(registered: bool) -> Identity:
            if registered:
                raise AuthFailed(OWNED)
            return Identity(name, self.clock.seconds(), False)

        return self.store.is_registered(name).addCallback(decide)

    def guest_now(self, name: str) -> Identity | None:
        """:meth:`admit_guest` without waiting: the identity, or None when
        only the database can tell (see chatserv.registered); raises the
        refusals (:class:`AuthFailed`, :class:`InvalidName`)."""
        if self.require_accounts:
            raise AuthFailed("este servidor exige una cuenta: inicia sesión con tu contraseña")
        try:
            key = name_key(check_name(name))
        except BadName as e:
            raise InvalidName("name_rules", detail=str(e)) from None
        registered = self.registered.known(key)
        if registered is None:
            return None
        if registered:
            raise AuthFailed(OWNED)
        return Identity(name, self.clock.seconds(), False)

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
            raise InvalidName("name_rules", detail=str(e)) from None
        key = name_key(name)
        pair = f"{key} {address}"  # names hold no white space
        wait = self._wait(key, address, pair)
        if self.shared is not None:
            wait = max(wait, await self._shared_wait(self.shared, key, address, pair))
        if wait > 0:
            raise AuthFailed(f"demasiados intentos fallidos; vuelve a intentarlo en {math.ceil(wait)} s")
        # Counted before the check, so that parallel guesses on several
        # connections are throttled too; a success or a cancelled attempt
        # (its connection closed first) takes it back.
        self.by_account.failure(key)
        self.by_address.failure(address)
        self.by_pair.failure(pair)
        if self.shared is not None:
            self.shared.failure("account", key, self.by_account)
            self.shared.failure("address", address, self.by_address)
            self.shared.failure("pair", pair, self.by_pair)
        try:
            account = await self.store.account(name)
            stored = account.password_hash if account is not None else None
            # Unknown names hash at the same priority: the wait must not tell.
            ok, rehash = await self.hashes.submit(HIGH, address, self._verify, stored, password)
        except (CancelledError, ServerBusy):
            self._forgive(key, address, pair)  # not checked: it taught nothing
            raise
        if not ok or account is None:
            self.log_budget.line(
                "failed logins", address, "failed login for {name} from {address}", name=name, address=address
            )
            raise AuthFailed(WRONG)
        # The owner's success takes back only its own attempt: the failures
        # of guessers elsewhere keep slowing them.
        self._forgive(key, address, pair)
        self.by_pair.reset(pair)
        if self.shared is not None:
            self.shared.reset("pair", pair)
        self.known.add(pair)
        if rehash:
            # The hasher's parameters went up since this hash was made; a
            # busy queue just leaves it for the next login.
            rehashed = self.hashes.submit(LOW, address, self.hasher.hash, password)
            rehashed.addCallback(lambda new_hash: self.store.set_password(account.name, new_hash))
            rehashed.addErrback(lambda f: f.trap(ServerBusy) and None)
            rehashed.addErrback(
                lambda f: log.failure("could not rehash the password of {name}", f, name=account.name)
            )
        return Identity(account.name, account.created, True)

    def _wait(self, key: str, address: str, pair: str) -> float:
        """Seconds this attempt must wait: the guesser's back-off, not the owner's."""
        wait = 0.0
        if pair not in self.known:
            wait = self.by_address.wait(address)
        if self.by_pair.failures(pair):
            wait = max(wait, self.by_account.wait(key))
        return wait

    async def _shared_wait(self, shared: SharedFailures, key: str, address: str, pair: str) -> float:
        """:meth:`_wait` over the cluster's counts (whether the address is
        the account's known one is this node's knowledge)."""
        try:
            wait = 0.0
            if pair not in self.known:
                wait = await shared.wait("address", address, self.by_address)
            if await shared.failures("pair", pair):
                wait = max(wait, await shared.wait("account", key, self.by_account))
            return wait
        except Exception as e:  # Redis away: this node's own counts decide
            log.debug("shared login throttle unavailable: {e}", e=e)
            return 0.0

    def _forgive(self, key: str, address: str, pair: str) -> None:
        self.by_account.forgive(key)
        self.by_address.forgive(address)
        self.by_pair.forgive(pair)
        if self.shared is not None:
            self.shared.forgive("account", key)
            self.shared.forgive("address", address)
            self.shared.forgive("pair", pair)

    async def _register(self, name: str, password: str, address: str) -> str:
        try:
            check_name(name)
        except BadName as e:
            raise InvalidName("name_rules", detail=str(e)) from None
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
        wait = self.registrations.wait(address)
        if wait > 0:
            raise RateLimited(
                f"demasiadas cuentas nuevas desde tu dirección; vuelve a intentarlo en {math.ceil(wait)} s"
            )
        wait = self.all_registrations.wait("")
        if wait > 0:
            raise RateLimited(f"demasiadas cuentas nuevas; vuelve a intentarlo en {math.ceil(wait)} s")
        if self.hashes.full(LOW, address):
            raise ServerBusy(BUSY)  # without spending the allowances
        self.registrations.take(address)
        self.all_registrations.take("")
        password_hash = await self.hashes.submit(LOW, address, self.hasher.hash, password)
        created = self.clock.seconds()
        if not await self.store.create_account(name, password_hash, created):
            self.by_address.failure(address)
            raise NameTaken(f"el nombre {name} ya tiene una cuenta")
        self.registered.added(name_key(name), created)
        self.log_budget.line(
            "accounts registered",
            address,
            "account {name} registered from {address}",
            name=name,
            address=address,
        )
        return name

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
