"""The form that asks for a server, a name and a password, and connects.

Runs inside the Twisted reactor (see :mod:`chatserv.client.ui`): nothing here
may block or open a modal dialog."""

from __future__ import annotations

import os
import tkinter as tk
from collections.abc import Callable
from tkinter import ttk

from chatserv.client.config import Settings
from chatserv.client.i18n import _


class ConnectForm(ttk.Frame):
    """The connect form lives inside the main window (a modal dialog would
    stall the reactor)."""

    def __init__(self, master: tk.Misc, settings: Settings, on_submit: Callable[[], None]):
        super().__init__(master, padding=24)
        self.on_submit = on_submit
        self.host = tk.StringVar(value=settings.host)
        self.port = tk.StringVar(value=str(settings.port))
        self.user = tk.StringVar(value=settings.user)
        self.password = tk.StringVar()
        self.register_var = tk.BooleanVar(value=False)
        self.tls = tk.BooleanVar(value=settings.tls)
        self.cafile = tk.StringVar(value=settings.cafile)
        self.error = tk.StringVar()
        box = ttk.Frame(self, style="Card.TFrame", padding=(28, 22))
        box.place(relx=0.5, rely=0.45, anchor="center")
        ttk.Label(box, text=_("Connect to a chat server"), style="Title.TLabel").grid(
            row=0, column=0, columnspan=2, sticky="w", pady=(0, 14)
        )
        rows = [
            (_("Server"), ttk.Entry(box, textvariable=self.host, width=30)),
            (_("Port"), ttk.Entry(box, textvariable=self.port, width=8)),
            (_("Name"), ttk.Entry(box, textvariable=self.user, width=30)),
            (_("Password (optional)"), ttk.Entry(box, textvariable=self.password, show="•", width=30)),
        ]
        self.entries: dict[str, ttk.Entry] = {}
        for row, (label, entry) in enumerate(rows, start=1):
            ttk.Label(box, text=label, style="Card.TLabel").grid(
                row=row, column=0, sticky="w", padx=(0, 16), pady=4
            )
            entry.grid(row=row, column=1, sticky="w", pady=4)
            self.entries[label] = entry
        self.user_entry = rows[2][1]
        ttk.Checkbutton(
            box, text=_("Create an account with this password"), variable=self.register_var,
            style="Card.TCheckbutton",
        ).grid(row=5, column=1, sticky="w")
        ttk.Checkbutton(box, text=_("Use TLS"), variable=self.tls, style="Card.TCheckbutton").grid(
            row=6, column=1, sticky="w"
        )
        # A path typed in, not a file dialog: the dialog is modal and would
        # stop the reactor (and the connection) while it is open.
        ttk.Label(box, text=_("CA certificate (optional)"), style="Card.TLabel").grid(
            row=7, column=0, sticky="w", padx=(0, 16), pady=4
        )
        self.cafile_entry = ttk.Entry(box, textvariable=self.cafile, width=30)
        self.cafile_entry.grid(row=7, column=1, sticky="w", pady=4)
        self.entries["cafile"] = self.cafile_entry
        ttk.Label(
            box, text=_("PEM file of a self-signed server to trust with TLS"),
            style="CardMuted.TLabel", wraplength=300,
        ).grid(row=8, column=1, sticky="w")
        for entry in self.entries.values():
            entry.bind("<Return>", lambda _e: self.on_submit())
            entry.bind("<KP_Enter>", lambda _e: self.on_submit())
        self.button = ttk.Button(box, text=_("Connect"), command=self.on_submit, style="Accent.TButton")
        self.button.grid(row=9, column=1, sticky="e", pady=(16, 0))
        ttk.Label(
            box, textvariable=self.error, foreground="#c01c28", wraplength=380, style="Card.TLabel"
        ).grid(row=10, column=0, columnspan=2, sticky="w", pady=(8, 0))

    def values(self) -> tuple[Settings, str] | str:
        """The settings and password entered, or an error message."""
        host = self.host.get().strip()
        user = self.user.get().strip()
        cafile = self.cafile.get().strip()
        try:
            port = int(self.port.get().strip())
        except ValueError:
            port = 0
        if not host:
            return _("Enter the server's host name.")
        if not 0 < port < 65536:
            return _("The port must be a number between 1 and 65535.")
        if not user:
            return _("Enter a name.")
        if self.register_var.get() and not self.password.get():
            return _("Creating an account needs a password.")
        if cafile:
            if not self.tls.get():
                return _("A CA certificate is only used with TLS: tick “Use TLS”.")
            if not os.path.isfile(cafile) or not os.access(cafile, os.R_OK):
                return _("Cannot read the CA certificate {path}.").format(path=cafile)
        settings = Settings(host, port, user, self.tls.get(), self.register_var.get(), cafile=cafile)
        return settings, self.password.get()
