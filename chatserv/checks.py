"""Declarative checks for ``twistd chatserv`` options.

Each option that needs more than its type gets one entry in
``chatserv.tap.CHECKS``: a function of the parsed value that returns what is
wrong with it, or None. The options class turns the first complaint into one
line naming the option (``chatserv: --history: must be at least 1, not -1``)
and exit status 1, without the usage text. Adding an option is one row in
``optParameters`` and, if needed, one row in ``CHECKS``::

    ["max-per-address", None, 20, "Connections per client address.", int],
    ...
    "max-per-address": at_least(1),

Nothing here imports a reactor: twistd parses options before it installs one.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

#: What is wrong with a value, or None when nothing is.
Check = Callable[[Any], "str | None"]


def at_least(minimum: float) -> Check:
    def check(value: Any) -> str | None:
        return f"must be at least {minimum}, not {value}" if value < minimum else None

    return check


def above(minimum: float) -> Check:
    def check(value: Any) -> str | None:
        return f"must be more than {minimum}, not {value}" if not value > minimum else None

    return check


def between(low: float, high: float) -> Check:
    def check(value: Any) -> str | None:
        return f"must be between {low} and {high}, not {value}" if not low <= value <= high else None

    return check


def one_of(choices: Iterable[str]) -> Check:
    allowed = tuple(choices)

    def check(value: Any) -> str | None:
        return None if value in allowed else f"must be one of {', '.join(allowed)}, not {value!r}"

    return check


def each(check: Check) -> Check:
    """For repeatable options: the first complaint about any of the values."""

    def check_all(values: Any) -> str | None:
        for value in values:
            problem = check(value)
            if problem:
                return problem
        return None

    return check_all


def endpoint(description: str) -> str | None:
    """A strports server description Twisted can build, with a port in range.

    Building the endpoint parses it and, for ``ssl:``, loads the key and
    certificate, so a missing file is reported here and not as a traceback
    once twistd runs. Listening itself (a port in use) can only fail later.
    """
    from twisted.internet.endpoints import serverFromString

    try:
        built = serverFromString(None, description)
    except OSError as e:
        where = f": {e.filename}" if e.filename else ""
        return f"{description}: {e.strerror or e}{where}"
    except Exception as e:  # ValueError, OpenSSL errors, a plugin's own
        if description.startswith("systemd:") and isinstance(e, (IndexError, KeyError)):
            # The descriptor systemd passes is looked up as soon as it is parsed.
            return (
                f"{description}: systemd passed no such socket (run under a systemd socket unit: "
                "LISTEN_FDS, LISTEN_PID, LISTEN_FDNAMES)"
            )
        return f"{description!r} is not a listening address ({_reason(e)})"
    port = getattr(built, "_port", None)
    if isinstance(port, int) and not 0 <= port <= 65535:
        return f"{description}: port {port} is not between 0 and 65535"
    return None


def readable_file(path: str) -> str | None:
    return None if os.access(path, os.R_OK) else f"cannot read {path}"


def _reason(error: Exception) -> str:
    text = str(error)
    if text.startswith("invalid literal for int()"):
        return "the port must be a number"
    if type(error).__name__ == "Error" and "routines" in text:  # OpenSSL's error list
        return "the key or certificate file is not PEM"
    return text or type(error).__name__


#: Words for coercion failures, by coerce function.
KINDS: dict[Any, str] = {int: "a whole number", float: "a number"}
