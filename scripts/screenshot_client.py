#!/usr/bin/env python3
"""Make docs/client.png: two desktop clients in conversation, under Xvfb.

Starts its own Xvfb, a real ``twistd -n chatserv`` on a free loopback port,
and two real ``python -m chatserv.client`` processes (Ana and Luis, in
Spanish). Keys are typed with xdotool into the windows, as a person would;
a third participant (Eva) is a plain JSON socket client, so that Ana's
window also shows history, a join notice, a private tab with an unread count
and Luis's typing indicator. Luis answers Ana with Ctrl+R (a reply, shown
with its quoted line), Ana corrects her last message with Up (marked
"editado") and starts answering Eva (the bar above the message box).
Needs: Xvfb, xdotool, ImageMagick's ``import``.

    python scripts/screenshot_client.py [--out docs/client.png]
"""

from __future__ import annotations

import argparse
import json
import os
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WIDTH, HEIGHT = 1600, 620


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_xvfb() -> tuple[subprocess.Popen[bytes], str]:
    read_fd, write_fd = os.pipe()
    proc = subprocess.Popen(
        ["Xvfb", "-displayfd", str(write_fd), "-screen", "0", f"{WIDTH}x{HEIGHT}x24", "-nolisten", "tcp"],
        pass_fds=(write_fd,),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    os.close(write_fd)
    number = b""
    while not number.endswith(b"\n"):
        ready, _, _ = select.select([read_fd], [], [], 15)
        if not ready:
            raise SystemExit("Xvfb did not start")
        number += os.read(read_fd, 16)
    os.close(read_fd)
    return proc, ":" + number.decode().strip()


def wait_port(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"server did not listen on {port}")


class RawClient:
    """A scripted participant speaking docs/PROTOCOL.md over a plain socket."""

    def __init__(self, port: int, user: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.file = self.sock.makefile("rb")
        self.send(cmd="login", user=user)
        while json.loads(self.file.readline())["cmd"] != "users":
            pass

    def send(self, **frame: object) -> None:
        self.sock.sendall(json.dumps(frame, ensure_ascii=False).encode() + b"\n")

    def close(self) -> None:
        # The makefile() reader holds the descriptor open too.
        self.file.close()
        self.sock.close()


def xdo(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(["xdotool", *args], env=env, capture_output=True, text=True, timeout=60)
    return done.stdout.strip()


def window(env: dict[str, str], user: str) -> str:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        found = xdo(env, "search", "--name", f"^(\\([0-9]+\\) )?{user} .*chatserv$")
        if found:
            return found.split()[0]
        time.sleep(0.2)
    raise SystemExit(f"no window for {user}")


def type_into(env: dict[str, str], wid: str, *keys: str) -> None:
    """Focus ``wid`` and type; ``\\n`` in a piece is Enter, ``+`` a Shift+Enter,
    and a piece in angle brackets a key (``<ctrl+r>``, ``<Up>``)."""
    xdo(env, "windowfocus", "--sync", wid)
    time.sleep(0.2)
    for piece in keys:
        if piece == "\n":
            xdo(env, "key", "Return")
        elif piece == "+":
            xdo(env, "key", "shift+Return")
        elif piece.startswith("<") and piece.endswith(">"):
            xdo(env, "key", piece[1:-1])
            time.sleep(0.2)
        else:
            # Slow enough that xdotool's temporary key remapping for accented
            # letters is undone only after Tk has read the key.
            xdo(env, "type", "--delay", "90", piece)
    time.sleep(0.4)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(ROOT / "docs" / "client.png"))
    args = parser.parse_args()
    for tool in ("Xvfb", "xdotool", "import"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is needed (apt-get install xvfb xdotool imagemagick)")

    procs: list[subprocess.Popen[bytes]] = []
    workdir = tempfile.mkdtemp(prefix="chatserv-shot-")
    xvfb, display = start_xvfb()
    env = dict(os.environ, DISPLAY=display, XDG_CONFIG_HOME=os.path.join(workdir, "config"))
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    port = free_port()
    try:
        procs.append(subprocess.Popen(
            [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
             "-n", "--pidfile=", "chatserv", "--listen", f"tcp:{port}:interface=127.0.0.1"],
            cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        ))
        wait_port(port)
        marta = RawClient(port, "Marta")
        marta.send(cmd="broadcast", msg="Buenos días a todos ☀")
        marta.send(cmd="broadcast", msg="Esta tarde estreno en el cine del centro")
        time.sleep(0.3)
        marta.close()

        half = WIDTH // 2
        for user, x in (("Ana", 0), ("Luis", half)):
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "chatserv.client", "--host", "127.0.0.1", "--port", str(port),
                 "--user", user, "--lang", "es", "--geometry", f"{half - 6}x{HEIGHT - 6}+{x}+0"],
                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            ))
            window(env, user)
            time.sleep(0.5)
        ana, luis = window(env, "Ana"), window(env, "Luis")

        type_into(env, ana, "¡Hola Luis! ¿Vienes al cine esta tarde?", "\n")
        time.sleep(0.5)
        type_into(env, luis, "<ctrl+r>", "¡Claro! ¿A las siete?", "+", "Yo llevo las palomitas", "\n")
        eva = RawClient(port, "Eva")
        time.sleep(0.3)
        eva.send(cmd="broadcast", msg="¡Yo también me apunto!")
        eva.send(cmd="message", to="Ana", msg="Ana, ¿me guardas un sitio a tu lado?")
        eva.send(cmd="message", to="Ana", msg="Llego cinco minutos tarde")
        time.sleep(0.3)
        type_into(env, ana, "Sí, a las siete en la puerta", "\n")
        time.sleep(0.5)
        type_into(env, ana, "<Up>", "<End>", " del cine", "\n")
        time.sleep(0.3)
        type_into(env, ana, "<ctrl+r>")
        # A draft Luis has not sent: Ana sees him typing.
        type_into(env, luis, "Perfecto, nos vemos")
        time.sleep(0.8)
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["import", "-window", "root", str(out)], env=env, check=True, timeout=60)
        eva.close()
        print(out)
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        xvfb.terminate()
        xvfb.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
