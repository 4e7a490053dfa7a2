"""Entry point of the desktop client: ``chatserv-client`` or
``python -m chatserv.client``.

One thread: the Tk root is driven by the Twisted reactor through
``twisted.internet.tksupport``; Tk's own ``mainloop()`` is never called.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Sequence
from typing import Any

from chatserv.client import i18n
from chatserv.client.config import Settings, load_settings


def build_parser() -> argparse.ArgumentParser:
    """The options; those left out (None) take the settings file's values, then the defaults."""
    real = Settings()
    parser = argparse.ArgumentParser(
        prog="chatserv-client",
        description="Desktop chat client for chatserv (Tk on the Twisted reactor).",
    )
    parser.add_argument(
        "--host",
        help=f"server host, or several as host:port,host:port (the nodes of a cluster, tried in turn;"
        f" default: the last one used, else {real.host})",
    )
    parser.add_argument(
        "--server",
        action="append",
        metavar="HOST:PORT",
        help="a server to connect to; repeat it for the nodes of a cluster (joined to --host's list)",
    )
    parser.add_argument(
        "--port", type=int, help=f"server port (default: the last one used, else {real.port})"
    )
    parser.add_argument(
        "--user",
        help="log in at once with this name, skipping the connect form",
    )
    parser.add_argument(
        "--password",
        default=os.environ.get("CHATSERV_PASSWORD", ""),
        help="account password (or set CHATSERV_PASSWORD, which other users cannot see in ps)",
    )
    parser.add_argument("--register", action="store_true", help="create the account first (needs --password)")
    parser.add_argument(
        "--tls", action="store_true", default=None, help="connect with TLS (default: as the last time)"
    )
    parser.add_argument(
        "--cafile",
        help="PEM certificate to trust for --tls (e.g. a self-signed server's); also in the connect form",
    )
    parser.add_argument("--lang", choices=i18n.LANGUAGES, help="interface language (default: the locale)")
    parser.add_argument("--geometry", help="initial window geometry, e.g. 900x600+0+0")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    defaults = load_settings()
    i18n.install(args.lang)

    import tkinter as tk

    from twisted.internet import reactor as _reactor
    from twisted.internet import tksupport
    from twisted.internet.error import ReactorNotRunning

    from chatserv.client.collector import MainThreadCollector
    from chatserv.client.model import ChatModel
    from chatserv.client.session import ChatSession
    from chatserv.client.ui import ChatWindow

    reactor: Any = _reactor
    try:
        root = tk.Tk(className="chatserv")
    except tk.TclError as exc:
        print(f"chatserv-client: cannot open a window: {exc}", file=sys.stderr)
        return 1
    if args.geometry:
        root.geometry(args.geometry)
    elif re.fullmatch(r"\d{3,5}x\d{3,5}", defaults.geometry):
        root.geometry(defaults.geometry)  # the size it had when last closed
    else:
        root.geometry("900x600")
    tksupport.install(root)
    # Tk objects must only be freed on this thread (see collector.py).
    collector = MainThreadCollector(reactor)
    collector.start()
    try:
        session = ChatSession(ChatModel(reactor), reactor)
        settings = Settings(
            defaults.host, defaults.port, defaults.user, defaults.tls, cafile=defaults.cafile,
            geometry=defaults.geometry,
        )
        # The command line wins over the last session's values.
        if args.host is not None:
            settings.host = args.host
        if args.port is not None:
            settings.port = args.port
        if args.server:
            given = [args.host] if args.host is not None else []
            settings.host = ",".join(given + args.server)
        if args.tls:
            settings.tls = True
        if args.cafile:
            settings.cafile = args.cafile
        window = ChatWindow(root, session, settings, cafile=settings.cafile or None)

        def stop_reactor(_ignored: object = None) -> None:
            try:
                reactor.stop()
            except ReactorNotRunning:
                pass

        def quit_app() -> None:
            window.remember_size()
            # Leave cleanly so the others see us go at once, but never hang on it.
            session.disconnect().addBoth(stop_reactor)
            reactor.callLater(2.0, stop_reactor)

        def teardown() -> None:
            window.close()
            tksupport.uninstall()
            try:
                root.destroy()
            except tk.TclError:
                pass

        root.protocol("WM_DELETE_WINDOW", quit_app)
        reactor.addSystemEventTrigger("after", "shutdown", teardown)

        if args.user:
            settings.user = args.user
            settings.register = args.register
            window.connect(settings, args.password)
            # Scripted runs (xdotool, screenshots) type straight into the message
            # box. X refuses focus to a window that is not mapped yet, so wait
            # for it to be on screen (polling: no nested Tk loop under tksupport).
            def focus_when_viewable(tries: int = 100) -> None:
                if root.winfo_viewable():
                    window.input.focus_force()
                elif tries:
                    reactor.callLater(0.05, focus_when_viewable, tries - 1)

            reactor.callWhenRunning(focus_when_viewable)
        reactor.run()
    finally:
        # Also when start-up fails: the automatic collector comes back.
        collector.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
