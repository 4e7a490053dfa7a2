"""One frame written to many sockets in one call: the fan-out write loop.

:func:`send_all` is the last step of a room message's path (see
:class:`chatserv.output.RoomFanout`): the frame, encoded once, goes to every
recipient's socket without a Python call per recipient. It is the compiled
``chatserv._fanout`` (``chatserv/_fanout.c``, built by ``pip install`` when
a C compiler and the Python headers are there) or, when that could not be
built, the pure-Python loop below, which behaves the same.

``CHATSERV_PURE_FANOUT=1`` in the environment forces the Python loop (the
test suite runs once with each); ``CHATSERV_PURE_FANOUT=0`` requires the
compiled one, and importing this module fails if it was not built.
:data:`IMPLEMENTATION` says which one runs.

The contract, for both::

    send_all(fds: list[int], data: bytes, held: bytearray) -> list[tuple[int, int]]

For each ``i``, ``fds[i]`` is a connected, non-blocking socket. Unless
``held[fds[i]]`` is non-zero (or ``fds[i]`` lies beyond ``held``), *data* is
sent to it with one ``send()`` (``MSG_DONTWAIT``, no ``SIGPIPE``). Returned:
``(i, n)`` for every socket that did not take all of *data*, in order of
``i``: ``n >= 0`` bytes were taken (0 when it was held or would block), or
``n < 0`` is ``-errno`` when ``send()`` failed. The caller queues
``data[n:]`` (``data`` for an error) for each of those, as if no direct send
had been tried; the connection's transport then reports errors as usual.
"""

from __future__ import annotations

import os
from collections.abc import Callable

ENV = "CHATSERV_PURE_FANOUT"


def _send_all(fds: list[int], data: bytes, held: bytearray) -> list[tuple[int, int]]:
    """The pure-Python fan-out write loop; see the module docstring."""
    missed: list[tuple[int, int]] = []
    size = len(data)
    limit = len(held)
    write = os.write  # one send() without flags: the sockets are non-blocking
    i = -1
    for fd in fds:
        i += 1
        if fd >= limit or held[fd]:
            missed.append((i, 0))
            continue
        try:
            sent = write(fd, data)
        except BlockingIOError:
            missed.append((i, 0))
            continue
        except OSError as e:
            missed.append((i, -(e.errno or 0)))
            continue
        if sent != size:
            missed.append((i, sent))
    return missed


def _choose() -> tuple[Callable[[list[int], bytes, bytearray], list[tuple[int, int]]], str]:
    wanted = os.environ.get(ENV, "")
    if wanted == "1":
        return _send_all, "python"
    try:
        import chatserv._fanout as _fanout
    except ImportError:
        if wanted == "0":
            raise ImportError(
                f"{ENV}=0 asks for the compiled fan-out, but chatserv._fanout was not built"
                " (it needs a C compiler and the Python headers at install time)"
            ) from None
        return _send_all, "python"
    return _fanout.send_all, "c"


send_all, IMPLEMENTATION = _choose()
python_send_all = _send_all
