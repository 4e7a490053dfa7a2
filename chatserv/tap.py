"""``twistd chatserv``: command-line options and the service they build."""

from __future__ import annotations

from typing import Any

from twisted.application.service import MultiService
from twisted.python import usage

from .bridge.config import TelegramOptions, check_runtime
from .bridge.config import check_options as check_telegram_options
from .bridge.config import config_from_options as telegram_config
from .protocol import Limits
from .service import DEFAULT_LISTEN, ServerConfig
from .service import makeService as _makeService
from .storage import StorageError
from .windows import HISTORY_MEMORY


class Options(TelegramOptions, usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Run the chatserv chat server: JSON lines (seed 000) and plain text "
        "(seed 004) on the same port. See docs/PROTOCOL.md."
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
    ]
    optFlags = [
        ["require-accounts", None, "Refuse guest logins: every user needs an account."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []

    def opt_listen(self, description: str) -> None:
        """A strports description to listen on (repeatable), default tcp:2000."""
        self["listen"].append(description)

    def postOptions(self) -> None:
        if not self["listen"]:
            self["listen"] = [DEFAULT_LISTEN]
        for name in ("history", "history-memory", "max-line", "rate-burst", "max-output", "max-connections"):
            if self[name] < 1:
                raise usage.UsageError(f"--{name} must be at least 1")
        if self["retain-days"] is not None and not self["retain-days"] > 0:
            raise usage.UsageError("--retain-days must be more than 0")
        for name in ("rate-limit", "max-per-address", "login-timeout", "idle-timeout"):
            if self[name] < 0:
                raise usage.UsageError(f"--{name} must not be negative")
        check_telegram_options(self)

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
        )


def makeService(options: Options, reactor: Any = None, store: Any = None) -> MultiService:
    if options["telegram-chat"] is not None:
        check_runtime(reactor)  # one line and a non-zero exit if the bridge cannot run
    try:
        return _makeService(options.config(), reactor=reactor, store=store)
    except StorageError as e:
        # twistd would print a traceback; the operator needs the one line.
        raise SystemExit(f"chatserv: {e}") from None
