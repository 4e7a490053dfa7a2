"""``twistd chatserv``: command-line options and the service they build."""

from __future__ import annotations

import sys
from typing import Any

from twisted.application.service import MultiService
from twisted.python import usage

from . import __version__, logs
from .bridge.config import TelegramOptions, check_runtime
from .bridge.config import check_options as check_telegram_options
from .bridge.config import config_from_options as telegram_config
from .checks import KINDS, Check, above, at_least, each, endpoint, one_of
from .protocol import Limits
from .service import DEFAULT_LISTEN, ServerConfig
from .service import makeService as _makeService
from .storage import StorageError
from .windows import HISTORY_MEMORY
from .workers import adopted_fds, workers_service
from .workers import check_options as check_workers_options


class _Coerce(usage.CoerceParameter):  # type: ignore[misc]
    """Names the option when a value has the wrong type (Twisted's message does not)."""

    def dispatch(self, name: str, value: str | None) -> None:
        try:
            super().dispatch(name, value)
        except usage.UsageError:
            if value is None:
                raise
            kind = KINDS.get(self.coerce, "valid")
            raise usage.UsageError(f"--{name}: {value!r} is not {kind}") from None


class Options(TelegramOptions, usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Run the chatserv chat server: JSON lines and plain text on one port "
        "(docs/PROTOCOL.md). Operating it: docs/OPERATIONS.md."
    )
    optParameters = [
        ["history", None, 50, "Messages of history sent on login.", int],
        ["history-memory", None, HISTORY_MEMORY, "Bytes all rooms' history windows may hold together.", int],
        ["max-line", None, 65_536, "Longest accepted line, in bytes.", int],
        ["rate-limit", None, 5.0, "Lines per second per connection (0: no limit).", float],
        ["rate-burst", None, 20, "Burst allowed above the rate limit.", int],
        ["max-output", None, 1 << 20, "Unsent bytes per connection before it is dropped.", int],
        ["max-connections", None, 20_000, "Simultaneous connections.", int],
        ["max-per-address", None, 64, "Simultaneous connections from one address (0: no limit).", int],
        ["login-timeout", None, 60.0, "Seconds to log in after connecting (0: no limit).", float],
        ["idle-timeout", None, 300.0, "Seconds without a line before a ping (0: never).", float],
        ["db", None, "chatserv.sqlite3", "SQLite file (:memory: allowed) or postgresql:// DSN."],
        ["retain-days", None, None, "Delete messages older than this many days (default: keep all).", float],
        ["log-level", None, logs.DEFAULT_LEVEL, f"Least important events logged: {', '.join(logs.LEVELS)}."],
        [
            "cluster",
            None,
            None,
            "Join the nodes sharing this Redis, e.g. redis://127.0.0.1:6379/0 (needs a postgresql:// --db; "
            "docs/CLUSTER.md).",
        ],
        ["cluster-name", None, "chatserv", "The chat's name in Redis: the prefix of its keys and channel."],
        [
            "metrics",
            None,
            None,
            "Serve Prometheus metrics at /metrics on this address, e.g. tcp:9100:interface=127.0.0.1 "
            "(off by default).",
        ],
        ["workers", None, 1, "Node processes sharing the --listen sockets (above 1 needs --cluster).", int],
        [
            "health",
            None,
            None,
            "Serve GET /healthz on this address, e.g. tcp:8080:interface=127.0.0.1: 200 while the "
            "database and the cluster are reachable, 503 otherwise (off by default).",
        ],
        ["adopt-fds", None, None, "Internal (set by --workers): the inherited listening sockets."],
    ]
    optFlags = [
        ["require-accounts", None, "Refuse guest logins: every user needs an account."],
    ]

    #: Per option, what its value must satisfy beyond its type (see chatserv.checks).
    #: Options left at None (not given, no default) are not checked.
    CHECKS: dict[str, Check] = {
        "listen": each(endpoint),
        "history": at_least(1),
        "history-memory": at_least(1),
        "max-line": at_least(1),
        "rate-limit": at_least(0),
        "rate-burst": at_least(1),
        "max-output": at_least(1),
        "max-connections": at_least(1),
        "max-per-address": at_least(0),
        "login-timeout": at_least(0),
        "idle-timeout": at_least(0),
        "retain-days": above(0),
        "log-level": one_of(logs.LEVELS),
        "metrics": endpoint,
        "workers": at_least(1),
        "health": endpoint,
    }

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []
        for name, handler in self._dispatch.items():
            if isinstance(handler, usage.CoerceParameter):
                self._dispatch[name] = _Coerce(self, handler.coerce)

    def opt_listen(self, description: str) -> None:
        """Where to listen, as a strports description (repeatable): tcp:2000,
        ssl:2443:privateKey=key.pem:certKey=cert.pem, unix:/run/chat.sock. [default: tcp:2000]"""
        self["listen"].append(description)

    def opt_version(self) -> None:
        """Print chatserv's version and exit."""
        import twisted

        print(f"chatserv {__version__} (Twisted {twisted.__version__})")
        sys.exit(0)

    def parseOptions(self, options: list[str] | None = None) -> None:
        """Parse, and turn any mistake into one line and exit status 1.

        twistd would print the whole usage text before the one line that
        matters; ``--help`` still prints it.
        """
        try:
            # Kept for --workers, whose children get the same options.
            self.argv = list(options) if options is not None else sys.argv[1:]
            super().parseOptions(options)
        except usage.UsageError as e:
            text = str(e)
            if not text.startswith("--"):  # it names no option: say where the list is
                text += " (twistd chatserv --help lists the options)"
            raise SystemExit(f"chatserv: {text}") from None

    def postOptions(self) -> None:
        if not self["listen"]:
            self["listen"] = [DEFAULT_LISTEN]
        # First: "--workers cannot share systemd:..." says more than the
        # listener check's complaint about that same description would.
        check_workers_options(self)
        for name, check in self.CHECKS.items():
            value = self.get(name)
            problem = check(value) if value is not None else None
            if problem:
                raise usage.UsageError(f"--{name}: {problem}")
        check_telegram_options(self)
        self._check_cluster()

    def _check_cluster(self) -> None:
        url = self["cluster"]
        if url is None:
            return
        # Not from .bus.redis: txredisapi installs the default reactor on
        # import, and the Telegram bridge needs asyncio's (check_runtime).
        from .bus import parse_url
        from .storage import is_postgres

        try:
            parse_url(url)
        except ValueError as e:
            raise usage.UsageError(f"--cluster: {e}") from None
        if not is_postgres(self["db"]):
            raise usage.UsageError(
                "--cluster needs a PostgreSQL database that every node shares: --db postgresql://..."
            )
        name = self["cluster-name"]
        if not name or not all(c.isalnum() or c in "_.-" for c in name):
            raise usage.UsageError("--cluster-name: letters, digits, '_', '.' and '-' only")

    def config(self) -> ServerConfig:
        return ServerConfig(
            listen=list(self["listen"]),
            history=self["history"],
            history_memory=self["history-memory"],
            limits=Limits(
                max_line=self["max-line"],
                rate_limit=self["rate-limit"],
                rate_burst=self["rate-burst"],
                max_output=self["max-output"],
                max_connections=self["max-connections"],
                max_per_address=self["max-per-address"],
                login_timeout=self["login-timeout"],
                idle_timeout=self["idle-timeout"],
            ),
            telegram=telegram_config(self),
            db=self["db"],
            require_accounts=bool(self["require-accounts"]),
            retain_days=self["retain-days"],
            metrics=self["metrics"],
            health=self["health"],
            adopt_fds=adopted_fds(self),
            cluster=self["cluster"],
            cluster_name=self["cluster-name"],
        )


def makeService(options: Options, reactor: Any = None, store: Any = None) -> MultiService:
    logs.set_level(options["log-level"])
    if options["telegram-chat"] is not None:
        check_runtime(reactor)  # one line and a non-zero exit if the bridge cannot run
    if options["workers"] > 1 and options["adopt-fds"] is None:
        return workers_service(options, reactor)
    try:
        return _makeService(options.config(), reactor=reactor, store=store)
    except StorageError as e:
        # twistd would print a traceback; the operator needs the one line.
        raise SystemExit(f"chatserv: {e}") from None
