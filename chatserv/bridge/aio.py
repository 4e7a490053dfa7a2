"""Glue between Twisted and the asyncio world python-telegram-bot lives in.

The bridge runs python-telegram-bot inside the reactor's own event loop (the
asyncio reactor), so there is exactly one loop and one thread: PTB coroutines
become Deferreds, and hub calls made from PTB callbacks are ordinary reactor
code.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from twisted.internet.defer import Deferred

T = TypeVar("T")


class ReactorMismatch(RuntimeError):
    """The bridge was configured but the running reactor is not the asyncio reactor."""


def is_asyncio_reactor(reactor: Any) -> bool:
    from twisted.internet.asyncioreactor import AsyncioSelectorReactor

    return isinstance(reactor, AsyncioSelectorReactor)


def require_asyncio_reactor(reactor: Any) -> None:
    """Raise :class:`ReactorMismatch` with a one-line explanation unless *reactor*
    is Twisted's asyncio reactor."""
    if not is_asyncio_reactor(reactor):
        name = type(reactor).__name__
        raise ReactorMismatch(
            f"the Telegram bridge needs the asyncio reactor, but {name} is running: "
            "start it with 'twistd -n -r asyncio chatserv ...' (or with no -r at all)"
        )


def as_deferred(coro: Coroutine[Any, Any, T]) -> Deferred[T]:
    """Run a PTB coroutine on the reactor's loop and return its Deferred.

    Twisted's own coroutine driver cannot await asyncio futures, so the
    coroutine becomes an asyncio task and the Deferred follows that task;
    cancelling the Deferred cancels the task.
    """
    return Deferred.fromFuture(asyncio.ensure_future(coro))
