"""What chatserv writes to its log, and how much of it.

Two things keep the log readable on a busy server and bounded under attack:

- a level: :class:`Logger` drops events below the process's level
  (``--log-level``, ``info`` by default) before they are formatted, so the
  per-connection detail logged at ``debug`` costs one comparison when off;
- :class:`LogBudget`: lines a client can cause at will (logins, refused
  connections, over-long lines, slow consumers) are written as they happen up
  to a budget per interval; past it they are counted and one summary line per
  interval says how many were left out. Rate-limit cut-offs are only ever
  summarised (:meth:`LogBudget.tally`). An attacker opening and closing
  connections therefore writes at most ``burst`` lines plus one per kind per
  interval, instead of one line per connection.

twistd's own ``--logfile`` rotates at 1 MB but keeps every old file; for a
log with a bounded size on disk, :func:`bounded_observer` is a drop-in for
twistd's ``--logger`` option (docs/OPERATIONS.md).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping
from typing import Any

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import FileLogObserver, LogLevel, textFileLogObserver
from twisted.logger import Logger as _TwistedLogger

#: The names ``--log-level`` accepts, lowest first.
LEVELS = ("debug", "info", "warn", "error", "critical")
DEFAULT_LEVEL = "info"

_PRIORITY = {LogLevel.levelWithName(name): i for i, name in enumerate(LEVELS)}
_threshold = LEVELS.index(DEFAULT_LEVEL)


def set_level(name: str) -> None:
    """Drop chatserv's log events below *name* (one of :data:`LEVELS`) from now on.

    Process-wide, like the log itself: ``twistd chatserv`` sets it once from
    ``--log-level``.
    """
    global _threshold
    _threshold = LEVELS.index(name)


def level() -> str:
    return LEVELS[_threshold]


class Logger(_TwistedLogger):
    """``twisted.logger.Logger`` that honours :func:`set_level`.

    Used as ``log = Logger()`` at module level, exactly like Twisted's: the
    namespace is still the calling module.
    """

    def emit(self, level: LogLevel, format: str | None = None, **kwargs: Any) -> None:
        if _PRIORITY.get(level, len(LEVELS)) < _threshold:
            return
        super().emit(level, format, **kwargs)


class _Kind:
    __slots__ = ("written", "left_out", "sources", "timer", "only_counted", "since")

    def __init__(self, since: float) -> None:
        self.since = since
        self.only_counted = False
        self.written = 0
        self.left_out = 0
        self.sources: set[str] = set()
        self.timer: IDelayedCall | None = None


#: Distinct sources a summary counts before it stops telling them apart.
MAX_SOURCES = 1000


class LogBudget:
    """A log budget per kind of line: *burst* lines per *interval* seconds.

    Past the budget, lines are counted, and at the end of the interval one
    line says how many of that kind were left out and from how many sources.
    An interval starts with the first line of its kind after the last one
    ended; under budget it ends by itself, and only once something is left
    out does a timer (one per kind) wait for its end to write the summary.
    """

    def __init__(
        self,
        clock: IReactorTime,
        log: _TwistedLogger,
        *,
        interval: float = 60.0,
        burst: int = 50,
    ) -> None:
        self.clock = clock
        self.log = log
        self.interval = interval
        self.burst = burst
        self._kinds: dict[str, _Kind] = {}

    def _kind(self, kind: str) -> _Kind:
        state = self._kinds.get(kind)
        if state is None or (state.timer is None and self.clock.seconds() - state.since >= self.interval):
            state = self._kinds[kind] = _Kind(self.clock.seconds())
        return state

    def _leave_out(self, kind: str, state: _Kind, source: str) -> None:
        state.left_out += 1
        if len(state.sources) < MAX_SOURCES:
            state.sources.add(source)
        if state.timer is None:
            end = state.since + self.interval - self.clock.seconds()
            state.timer = self.clock.callLater(max(end, 0.0), self._summarise, kind)

    def line(
        self, kind: str, source: str, format: str, *, emit: Callable[..., None] | None = None, **kw: Any
    ) -> None:
        """Log ``format`` (at info unless *emit* says otherwise) if *kind*'s budget allows.

        *source* is the client address the line is about: summaries count them.
        """
        state = self._kind(kind)
        if state.written < self.burst:
            state.written += 1
            (emit or self.log.info)(format, **kw)
            return
        self._leave_out(kind, state, source)

    def tally(self, kind: str, source: str) -> None:
        """Count one event of *kind*; only the interval's summary line is written."""
        state = self._kind(kind)
        state.only_counted = True
        self._leave_out(kind, state, source)

    def _summarise(self, kind: str) -> None:
        state = self._kinds.pop(kind)
        if state.left_out:
            many = len(state.sources)
            self.log.warn(
                "{kind}: {n}{more} in the last {interval:.0f} s, from {sources}{plus} {noun}",
                kind=kind,
                n=state.left_out,
                more="" if state.only_counted else " more",
                interval=self.clock.seconds() - state.since,
                sources=many,
                plus="+" if many >= MAX_SOURCES else "",
                noun="address" if many == 1 else "addresses",
            )

    def stop(self) -> None:
        """Write the pending summaries now (at shutdown) and cancel the timers."""
        for kind, state in list(self._kinds.items()):
            if state.timer is not None and state.timer.active():
                state.timer.cancel()
            self._summarise(kind)


#: ``bounded_observer``'s settings: environment variable, default.
LOG_FILE = ("CHATSERV_LOG_FILE", "chatserv.log")
LOG_MB = ("CHATSERV_LOG_MB", "10")
LOG_KEEP = ("CHATSERV_LOG_KEEP", "5")


def bounded_observer(environ: Mapping[str, str] | None = None) -> FileLogObserver:
    """A log file that never takes more than (1 + KEEP) x MB of disk.

    For ``twistd --logger chatserv.logs.bounded_observer chatserv ...``
    (twistd calls it with no arguments, so it is configured from the
    environment): the log goes to ``$CHATSERV_LOG_FILE`` (``chatserv.log``),
    which is renamed to ``.1`` once it reaches ``$CHATSERV_LOG_MB`` megabytes
    (10), keeping ``$CHATSERV_LOG_KEEP`` old files (5).
    """
    from twisted.python.logfile import LogFile

    env: Mapping[str, str] = os.environ if environ is None else environ
    path = env.get(*LOG_FILE)
    try:
        size = int(float(env.get(*LOG_MB)) * 1_000_000)
        keep = int(env.get(*LOG_KEEP))
    except ValueError as e:
        raise SystemExit(f"chatserv: ${LOG_MB[0]} and ${LOG_KEEP[0]} must be numbers ({e})") from None
    if size < 1 or keep < 1:
        raise SystemExit(f"chatserv: ${LOG_MB[0]} and ${LOG_KEEP[0]} must be positive")
    observer = textFileLogObserver(LogFile.fromFullPath(path, rotateLength=size, maxRotatedFiles=keep))
    # Twisted serialises writes with a lock written in Python: a signal
    # handler that logs (the reactor's SIGTERM handler does) and lands inside
    # that lock's acquire, before it records its owner, waits for itself for
    # ever, and twistd never exits. A lock implemented in C is taken in one
    # step, so the handler's nested write simply re-enters it.
    observer.__dict__["_threadable_lock"] = threading.RLock()
    return observer
