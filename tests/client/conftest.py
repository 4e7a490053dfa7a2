"""Fixtures for the client tests.

GUI tests (marked ``gui``) need an X display. This conftest starts its own
Xvfb (so a developer's desktop never gets windows popping up) and points
DISPLAY at it; without Xvfb it falls back to an existing DISPLAY, and without
either the GUI tests are skipped with the reason. Set CHATSERV_REQUIRE_GUI=1
(CI does) to make that a failure instead of a skip.
"""

from __future__ import annotations

import gc
import os
import select
import shutil
import subprocess
import tempfile
from collections.abc import Iterator

import pytest
import pytest_twisted

from chatserv.client.collector import MainThreadCollector
from tests.client.support import RestartableServer


def _gui_unavailable(reason: str) -> None:
    if os.environ.get("CHATSERV_REQUIRE_GUI") == "1":
        pytest.fail(f"GUI tests required (CHATSERV_REQUIRE_GUI=1) but {reason}")
    pytest.skip(reason)


def _start_xvfb() -> tuple[subprocess.Popen[bytes], str]:
    xvfb = shutil.which("Xvfb")
    assert xvfb is not None
    read_fd, write_fd = os.pipe()
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(
        [xvfb, "-displayfd", str(write_fd), "-screen", "0", "1280x800x24", "-nolisten", "tcp"],
        pass_fds=(write_fd,),
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    os.close(write_fd)
    number = b""
    try:
        # Xvfb picks a free display itself and writes its number when ready.
        while not number.endswith(b"\n"):
            ready, _, _ = select.select([read_fd], [], [], 15)
            if not ready:
                break
            chunk = os.read(read_fd, 16)
            if not chunk:
                break
            number += chunk
    finally:
        os.close(read_fd)
    if not number.strip():
        proc.kill()
        proc.wait()
        log.seek(0)
        raise RuntimeError("Xvfb did not start: " + log.read().decode(errors="replace")[-500:])
    return proc, ":" + number.decode().strip()


@pytest.fixture(scope="session")
def display() -> Iterator[str]:
    try:
        import tkinter  # noqa: F401
    except ImportError as exc:
        _gui_unavailable(f"tkinter cannot be imported ({exc}); install libtk8.6 / python3-tk")
    proc = None
    previous = os.environ.get("DISPLAY")
    if shutil.which("Xvfb"):
        proc, name = _start_xvfb()
        os.environ["DISPLAY"] = name
    elif previous:
        name = previous
    else:
        _gui_unavailable("no X display: Xvfb is not installed (apt-get install xvfb) and DISPLAY is unset")
    try:
        yield name
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(10)
            if previous is None:
                os.environ.pop("DISPLAY", None)
            else:
                os.environ["DISPLAY"] = previous


@pytest.fixture
def tk_root(display: str, monkeypatch: pytest.MonkeyPatch, tmp_path):
    """A hidden Tk root driven by the reactor through tksupport, as the app
    does; each client under test lives in a Toplevel of it."""
    import tkinter as tk

    from twisted.internet import reactor, tksupport

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    root = tk.Tk()
    root.withdraw()
    tksupport.install(root)
    # As in the app: Tk objects are freed on this thread only, never by a
    # collection that a storage thread of the in-process server happens to
    # start (each Variable.__del__ there would stall that thread a second).
    collector = MainThreadCollector(reactor)
    collector.start()
    yield root
    tksupport.uninstall()
    gc.collect()
    root.destroy()
    collector.stop()


@pytest_twisted.async_yield_fixture
async def chat_server():
    server = RestartableServer()
    await server.start()
    yield server
    await server.stop()
