"""The bridge's configuration and its ``twistd chatserv`` options.

Nothing here imports python-telegram-bot or a reactor: ``chatserv.tap`` pulls
these option tables in even when no bridge is configured.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from twisted.python import usage

TOKEN_ENV = "TELEGRAM_BOT_TOKEN"
DEFAULT_API_URL = "https://api.telegram.org/bot"
DEFAULT_STATE = "chatserv-telegram.sqlite3"
DEFAULT_MARKER = " (TG)"


@dataclass
class BridgeConfig:
    """Everything the bridge needs; defaults are the documented ones.

    Rates are ``(messages, seconds)`` windows. Telegram allows about 20
    messages a minute into one group and 30 a second overall; the tests use
    much faster values against the fake Bot API.
    """

    chat_id: int
    token: str = field(repr=False)
    api_url: str = DEFAULT_API_URL
    room: str = "general"
    notices: bool = False
    marker: str = " (TG)"
    #: Chat lines waiting for Telegram; past it the oldest are dropped (logged,
    #: and announced in the group).
    queue_max: int = 1000
    #: SQLite file for offsets, the message-id map and the outbound queue.
    state_path: str = DEFAULT_STATE
    group_rate: tuple[int, float] = (20, 60.0)
    #: Messages the group pacer lets out back to back after a quiet spell;
    #: afterwards it spaces them evenly so a busy chat never stalls a minute.
    group_burst: int = 3
    global_rate: tuple[int, float] = (30, 1.0)
    #: Telegram's limit for one message, in UTF-16 code units.
    max_length: int = 4096
    #: Long-poll timeout of getUpdates, in seconds.
    poll_timeout: float = 10.0
    #: Retry back-off for network errors: first wait, doubling up to the cap.
    backoff_initial: float = 1.0
    backoff_max: float = 30.0
    #: A Telegram user leaves the chat's user list after this long without writing.
    idle_timeout: float = 1800.0
    #: Telegram message ids remembered for replies and edits.
    map_size: int = 10_000
    #: HTTP timeouts of the Bot API client (connect/read/write), in seconds.
    http_timeout: float = 10.0
    #: Further ``(chat id, room)`` pairs bridged beside ``chat_id``/``room``:
    #: each group its own room, queue, pacing and id map.
    more_chats: tuple[tuple[int, str], ...] = ()
    #: Corrections (edits, deletions) waiting for Telegram per group; past it
    #: the oldest are dropped (they are not kept across restarts).
    corrections_max: int = 200
    #: Clustered (docs/TELEGRAM.md, *Several nodes*): the cluster's Redis URL
    #: (``redis://host:port/db``), its name (the prefix of every Redis key) and
    #: the shared PostgreSQL database. With ``cluster_url`` set the bridge runs
    #: on the node holding the lease, and its state lives in ``db_url``.
    cluster_url: str | None = None
    cluster_name: str = "chatserv"
    db_url: str | None = None

    @property
    def bot_id(self) -> str:
        """The bot's id: the token's part before the colon (the lease is per bot)."""
        return self.token.split(":", 1)[0]

    def chats(self) -> list[tuple[int, str]]:
        """Every bridged ``(chat id, room)``, the first one first."""
        return [(self.chat_id, self.room), *self.more_chats]

    def __post_init__(self) -> None:
        if not self.token or any(c.isspace() for c in self.token):
            raise ValueError("the Telegram bot token is empty or contains white space")
        if self.queue_max < 1 or self.max_length < 16 or self.map_size < 1:
            raise ValueError("queue_max, max_length and map_size must be positive")
        for count, period in (self.group_rate, self.global_rate):
            if count < 1 or period <= 0:
                raise ValueError("rates must allow at least one message in a positive period")
        from ..names import name_key

        chats = self.chats()
        if len({c for c, _ in chats}) != len(chats):
            raise ValueError("a Telegram chat is bridged only once")
        if len({name_key(r) for _, r in chats}) != len(chats):
            raise ValueError("each Telegram chat needs a room of its own")
        if self.cluster_url is not None:
            from ..storage.engine import is_postgres

            if self.db_url is None or not is_postgres(self.db_url):
                raise ValueError("a clustered Telegram bridge keeps its state in PostgreSQL: --db postgresql://…")


# -- twistd options --------------------------------------------------------

PARAMETERS: list[list[Any]] = [
    ["telegram-token-file", None, None, f"File holding the bot token (default: ${TOKEN_ENV})."],
    ["telegram-api-url", None, DEFAULT_API_URL, "Bot API base URL; the token is appended."],
    ["telegram-room", None, "general", "Room for a --telegram-chat given without =ROOM."],
    [
        "telegram-marker",
        None,
        None,
        f"Appended to Telegram users' names in the chat."
        f' [default: "{DEFAULT_MARKER}", with its leading space]',
    ],
    ["telegram-queue", None, 1000, "Chat lines queued for Telegram before the oldest are dropped.", int],
    ["telegram-state", None, DEFAULT_STATE, "SQLite file for the bridge's offsets, id map and queue."],
]

FLAGS: list[list[Any]] = [
    ["telegram-notices", None, "Relay join/leave notices of the chat to Telegram."],
]

_DEPENDENT = ("telegram-token-file", "telegram-room", "telegram-marker", "telegram-queue", "telegram-state")


def read_token(token_file: str | None, environ: Mapping[str, str] | None = None) -> str:
    """The bot token from *token_file*, else from ``$TELEGRAM_BOT_TOKEN``.

    Never from the command line: arguments are visible to every local user.
    """
    env: Mapping[str, str] = os.environ if environ is None else environ
    if token_file:
        try:
            with open(token_file, encoding="utf-8") as f:
                token = f.read().strip()
        except OSError as e:
            raise usage.UsageError(f"cannot read --telegram-token-file: {e.strerror}") from None
        if not token:
            raise usage.UsageError("--telegram-token-file is empty")
        return token
    token = env.get(TOKEN_ENV, "").strip()
    if not token:
        raise usage.UsageError(
            f"--telegram-chat needs a bot token: set ${TOKEN_ENV} or --telegram-token-file"
        )
    return token


def parse_chat(value: str) -> tuple[int, str | None]:
    """``ID`` or ``ID=ROOM`` of ``--telegram-chat``."""
    chat, sep, room = value.partition("=")
    try:
        chat_id = int(chat)
    except ValueError:
        raise usage.UsageError(f"--telegram-chat: {chat!r} is not a chat id (e.g. -1001234567890)") from None
    if sep and not room:
        raise usage.UsageError("--telegram-chat ID=ROOM: the room is empty")
    return chat_id, (room if sep else None)


def check_options(options: Any, environ: Mapping[str, str] | None = None) -> None:
    """``postOptions`` for the telegram options: validate and read the token now,
    so a misconfigured bridge fails at start-up with a usage error."""
    if options["telegram-chat"] is None:
        defaults = {p[0]: p[2] for p in PARAMETERS}
        given = [n for n in _DEPENDENT if options[n] != defaults[n]]
        if given or options["telegram-notices"]:
            raise usage.UsageError("the --telegram-* options need --telegram-chat CHAT_ID")
        options["telegram-token"] = None
        return
    from ..names import BadName, check_name, name_key

    try:
        check_name(options["telegram-room"])
    except BadName as e:
        raise usage.UsageError(f"--telegram-room: {e}") from None
    if options["telegram-marker"] is None:
        # None in the table so that --help can show the default quoted.
        options["telegram-marker"] = DEFAULT_MARKER
    chats = [(c, r if r is not None else options["telegram-room"]) for c, r in options["telegram-chat"]]
    for _, room in chats:
        try:
            check_name(room)
        except BadName as e:
            raise usage.UsageError(f"--telegram-chat ID={room}: {e}") from None
    if len({c for c, _ in chats}) != len(chats):
        raise usage.UsageError("--telegram-chat: the same chat is given twice")
    if len({name_key(r) for _, r in chats}) != len(chats):
        raise usage.UsageError("--telegram-chat: each chat needs a room of its own (ID=ROOM)")
    options["telegram-chats"] = chats
    marker = options["telegram-marker"]
    if len(marker) > 16 or any(not c.isprintable() and c != " " for c in marker):
        raise usage.UsageError("--telegram-marker: at most 16 printable characters")
    if options["telegram-queue"] < 1:
        raise usage.UsageError("--telegram-queue must be at least 1")
    if not options["telegram-api-url"].startswith(("http://", "https://")):
        raise usage.UsageError("--telegram-api-url must be an http:// or https:// URL")
    options["telegram-token"] = read_token(options["telegram-token-file"], environ)


def config_from_options(options: Any) -> BridgeConfig | None:
    """The :class:`BridgeConfig` the options describe, or None without ``--telegram-chat``."""
    if options["telegram-chat"] is None:
        return None
    try:
        (chat_id, room), *more = options["telegram-chats"]
        return BridgeConfig(
            chat_id=chat_id,
            more_chats=tuple(more),
            token=options["telegram-token"],
            api_url=options["telegram-api-url"],
            room=room,
            notices=bool(options["telegram-notices"]),
            marker=options["telegram-marker"],
            queue_max=options["telegram-queue"],
            state_path=options["telegram-state"],
            # The cluster's options (--cluster, --cluster-name, chatserv.tap),
            # read where they exist: without them the bridge is one node's.
            cluster_url=options.get("cluster"),
            cluster_name=options.get("cluster-name") or "chatserv",
            db_url=options.get("db") if options.get("cluster") else None,
        )
    except ValueError as e:
        raise usage.UsageError(str(e)) from None


class TelegramOptions:
    """Mixed into ``chatserv.tap.Options``: usage.Options gathers
    ``optParameters`` and ``optFlags`` from every base class."""

    optParameters = PARAMETERS
    optFlags = FLAGS

    def __init__(self) -> None:
        super().__init__()
        options: Any = self  # a usage.Options, a dict, once mixed in
        options["telegram-chat"] = None

    def opt_telegram_chat(self, value: str) -> None:
        """Bridge the Telegram chat ID (e.g. -1001234567890) into ROOM; needs
        the bot token in $TELEGRAM_BOT_TOKEN or in a token file. Repeatable,
        each chat its own room; ROOM defaults to the --telegram-room option."""
        options: Any = self
        if options["telegram-chat"] is None:
            options["telegram-chat"] = []
        options["telegram-chat"].append(parse_chat(value))


def check_runtime(reactor: Any = None) -> None:
    """At ``twistd`` start-up with a bridge configured: exit with one clear
    line unless python-telegram-bot is installed and the reactor is asyncio's.

    twistd installs the reactor named by ``-r`` before building the service,
    and its default one only later: so when no reactor is installed yet the
    operator chose none, and the bridge installs the asyncio reactor itself.
    """
    from .aio import ReactorMismatch, require_asyncio_reactor

    try:
        import telegram  # noqa: F401
    except ImportError:
        raise SystemExit(
            "chatserv: the Telegram bridge needs python-telegram-bot: pip install 'chatserv[telegram]'"
        ) from None
    if reactor is None:
        if "twisted.internet.reactor" not in sys.modules:
            from twisted.internet import asyncioreactor

            asyncioreactor.install()
        from twisted.internet import reactor
    try:
        require_asyncio_reactor(reactor)
    except ReactorMismatch as e:
        raise SystemExit(f"chatserv: {e}") from None
