"""The client's colours and ttk styles."""

from __future__ import annotations

import tkinter as tk
from tkinter import ttk
from typing import Any

SENDER_COLOURS = ("#1c71d8", "#26a269", "#c64600", "#9141ac", "#b5835a", "#e01b24", "#2190a4")
OWN_COLOUR = "#1a5fb4"

#: The palette of the flat theme built on ttk's "clam" (see apply_theme).
WINDOW_BG = "#f6f5f4"
SURFACE = "#ffffff"
BORDER = "#d6d3d0"
TEXT = "#241f31"
MUTED = "#77767b"
ACCENT = "#3584e4"
ACCENT_DARK = "#1c71d8"
QUOTE_BG = "#eef3fb"
FLASH_BG = "#fff3bf"


def apply_theme(master: tk.Misc) -> ttk.Style:
    """A flat, padded look on top of ttk's "clam" theme (available on every
    platform): light surfaces, thin borders, an accent colour for the main
    buttons and slim scrollbars, instead of the classic bevelled widgets."""
    style = ttk.Style(master)
    if "clam" in style.theme_names():
        style.theme_use("clam")
    flat = {"bordercolor": BORDER, "lightcolor": SURFACE, "darkcolor": SURFACE}
    style.configure(
        ".", background=WINDOW_BG, foreground=TEXT, troughcolor=WINDOW_BG, focuscolor=ACCENT,
        bordercolor=BORDER, lightcolor=WINDOW_BG, darkcolor=WINDOW_BG,
    )
    style.configure("TButton", padding=(14, 6), background=SURFACE, **flat)
    style.map(
        "TButton",
        background=[("disabled", WINDOW_BG), ("pressed", "#e3e1de"), ("active", "#efeeec")],
        foreground=[("disabled", "#a9a8a6")],
        bordercolor=[("focus", ACCENT)],
    )
    style.configure(
        "Accent.TButton", background=ACCENT, foreground="#ffffff",
        bordercolor=ACCENT_DARK, lightcolor=ACCENT, darkcolor=ACCENT,
    )
    style.map(
        "Accent.TButton",
        background=[("pressed", ACCENT_DARK), ("active", "#4a90e8")],
        lightcolor=[("pressed", ACCENT_DARK), ("active", "#4a90e8")],
        darkcolor=[("pressed", ACCENT_DARK), ("active", "#4a90e8")],
    )
    style.configure("Tool.TButton", padding=(10, 4))
    style.configure("Flat.TButton", padding=(6, 2), background=QUOTE_BG, bordercolor=QUOTE_BG,
                    lightcolor=QUOTE_BG, darkcolor=QUOTE_BG)
    for entry in ("TEntry", "TCombobox"):
        style.configure(entry, padding=(8, 5), fieldbackground=SURFACE, **flat)
        style.map(entry, bordercolor=[("focus", ACCENT)], lightcolor=[("focus", SURFACE)])
    style.configure("TCombobox", background=SURFACE, arrowcolor=MUTED, arrowsize=12, padding=(6, 4))
    style.map("TCombobox", background=[("active", "#efeeec")], fieldbackground=[("readonly", SURFACE)])
    style.configure("TCheckbutton", padding=(0, 4))
    style.configure("TNotebook", background=WINDOW_BG, borderwidth=0, tabmargins=(0, 0, 0, 0), **flat)
    style.configure("TNotebook.Tab", padding=(16, 7), background=WINDOW_BG, bordercolor=BORDER,
                    lightcolor=WINDOW_BG, darkcolor=WINDOW_BG, foreground=MUTED)
    style.map(
        "TNotebook.Tab",
        background=[("selected", SURFACE)],
        lightcolor=[("selected", SURFACE)],
        foreground=[("selected", TEXT)],
        padding=[("selected", (16, 7))],
    )
    style.configure("Card.TFrame", background=SURFACE, relief="solid", borderwidth=1, bordercolor=BORDER)
    style.configure("Card.TLabel", background=SURFACE)
    style.configure("Card.TCheckbutton", background=SURFACE)
    style.map("Card.TCheckbutton", background=[("active", SURFACE)])
    style.configure("Title.TLabel", background=SURFACE, font=("TkDefaultFont", 14, "bold"))
    style.configure("Muted.TLabel", foreground=MUTED)
    style.configure("CardMuted.TLabel", foreground=MUTED, background=SURFACE)
    style.configure("Heading.TLabel", foreground=MUTED, font=("TkDefaultFont", 9, "bold"))
    style.configure("Status.TLabel", foreground=MUTED, padding=(12, 5))
    style.configure("Bar.TFrame", background=QUOTE_BG)
    style.configure("Bar.TLabel", background=QUOTE_BG, foreground=TEXT)
    # Slim scrollbars without arrows, as current desktops draw them.
    thumb: Any = [("Vertical.Scrollbar.thumb", {"expand": "1", "sticky": "nswe"})]
    trough: Any = [("Vertical.Scrollbar.trough", {"sticky": "ns", "children": thumb})]
    style.layout("Slim.Vertical.TScrollbar", trough)
    style.configure(
        "Slim.Vertical.TScrollbar", troughcolor=SURFACE, background="#c0bfbc", bordercolor=SURFACE,
        lightcolor="#c0bfbc", darkcolor="#c0bfbc", gripcount=0, arrowsize=9, width=9,
    )
    style.map("Slim.Vertical.TScrollbar", background=[("active", "#9a9996")])
    master.configure(background=WINDOW_BG)  # type: ignore[call-arg]  # a Tk or Toplevel
    return style
