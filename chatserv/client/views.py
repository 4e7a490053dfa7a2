"""The view of one conversation: its lines, its input box and what they show.

Runs inside the Twisted reactor (see :mod:`chatserv.client.ui`): nothing here
may block or open a modal dialog."""

from __future__ import annotations

import tkinter as tk
import zlib
from functools import partial
from tkinter import font as tkfont
from tkinter import ttk
from typing import Any

from chatserv.client.i18n import _
from chatserv.client.model import (
    Conversation,
    Line,
    LineKind,
    SendState,
    fold,
)
from chatserv.client.theme import FLASH_BG, MUTED, OWN_COLOUR, QUOTE_BG, SENDER_COLOURS, SURFACE, TEXT


class AutoScrollbar(ttk.Scrollbar):
    """A scrollbar that is shown only while there is something to scroll.

    Gridded in a column with a fixed minimum width, so that showing or hiding
    it never changes how wide the text is: otherwise word wrapping could
    make it appear and disappear for ever."""

    def __init__(self, master: tk.Misc, **kw: object) -> None:
        super().__init__(master, orient="vertical", style="Slim.Vertical.TScrollbar", **kw)  # type: ignore[arg-type]

    def set(self, first: float | str, last: float | str) -> None:
        if float(first) <= 0.0 and float(last) >= 1.0:
            self.grid_remove()
        else:
            self.grid()
        super().set(first, last)

    @property
    def shown(self) -> bool:
        return bool(self.winfo_manager())


def conv_title(conv: Conversation) -> str:
    if conv.is_general:
        return _("General")
    if conv.is_room:
        return "#" + conv.title
    return conv.title


def tab_text(conv: Conversation) -> str:
    title = conv_title(conv)
    return f"{title} ({conv.unread})" if conv.unread else title


class ConversationView(ttk.Frame):
    """One tab: a read-only transcript that follows new lines unless the user
    has scrolled up to read something older."""

    def __init__(self, master: tk.Misc, conv: Conversation, fonts: dict[str, tkfont.Font]):
        super().__init__(master)
        self.conv = conv
        self.fonts = fonts
        self.text = tk.Text(
            self,
            wrap="word",
            state="disabled",
            width=30,
            height=8,
            padx=14,
            pady=10,
            borderwidth=0,
            highlightthickness=0,
            background=SURFACE,
            foreground=TEXT,
            font=fonts["body"],
            cursor="arrow",
            spacing1=3,
            spacing3=3,
        )
        self.scroll = AutoScrollbar(self, command=self.text.yview)
        self.text.configure(yscrollcommand=self.scroll.set)
        self.text.grid(row=0, column=0, sticky="nsew")
        self.scroll.grid(row=0, column=1, sticky="ns")
        self.columnconfigure(0, weight=1)
        self.columnconfigure(1, minsize=10)
        self.rowconfigure(0, weight=1)
        t = self.text
        t.tag_configure("time", foreground="#8a8a8a", font=fonts["small"])
        t.tag_configure("sender", font=fonts["bold"])
        t.tag_configure("body", lmargin2=18)
        t.tag_configure("cont", lmargin1=18, lmargin2=18)
        t.tag_configure("history", foreground="#6f6f6f")
        t.tag_configure("system", foreground="#5e5c64", font=fonts["italic"])
        t.tag_configure("info", foreground="#8a8a8a", font=fonts["italic"], justify="center")
        t.tag_configure("error", foreground="#c01c28")
        t.tag_configure("state", foreground="#8a8a8a", font=fonts["small"])
        t.tag_configure("failed", foreground="#c01c28", font=fonts["small"])
        t.tag_configure(
            "quote", foreground=MUTED, font=fonts["small"], lmargin1=18, lmargin2=18,
            background=QUOTE_BG, spacing1=4, spacing3=0,
        )
        t.tag_configure("edited", foreground=MUTED, font=fonts["small"])
        t.tag_configure("deleted", foreground=MUTED, font=fonts["italic"])
        t.tag_configure("flash", background=FLASH_BG)
        t.tag_raise("history")
        t.tag_raise("flash")
        t.tag_bind("quote", "<Enter>", lambda _e: t.configure(cursor="hand2"))
        t.tag_bind("quote", "<Leave>", lambda _e: t.configure(cursor="arrow"))
        self._ids: dict[Line, int] = {}
        self._lines: dict[int, Line] = {}
        self._sender_tags: set[str] = set()
        for line in conv.lines:
            self.add(line)

    def at_bottom(self) -> bool:
        return self.text.yview()[1] >= 0.999

    def _sender_tag(self, name: str, own: bool) -> str:
        if own:
            tag = "own"
            colour = OWN_COLOUR
        else:
            index = zlib.crc32(fold(name).encode("utf-8")) % len(SENDER_COLOURS)
            tag = f"who{index}"
            colour = SENDER_COLOURS[index]
        if tag not in self._sender_tags:
            self.text.tag_configure(tag, foreground=colour)
            self.text.tag_raise(tag)
            self._sender_tags.add(tag)
        return tag

    def add(self, line: Line) -> None:
        follow = self.at_bottom()
        n = len(self._ids)
        self._ids[line] = n
        self._lines[n] = line
        t = self.text
        t.configure(state="normal")
        if t.index("end-1c") != "1.0":
            t.insert("end", "\n")
        extra = ("history",) if line.kind is LineKind.HISTORY else ()
        if line.kind in (LineKind.MESSAGE, LineKind.HISTORY):
            start = t.index("end-1c")
            quoted = line.reply_to
            if quoted:
                # The quoted line sits above the reply; a click on it scrolls
                # to the original when it is loaded.
                who, what = str(quoted.get("from", "?")), str(quoted.get("msg", ""))
                t.insert("end", f"↪ {who}: {what}\n", ("quote", f"q{n}"))
                original = quoted.get("id")
                if isinstance(original, int):
                    t.tag_bind(f"q{n}", "<Button-1>", partial(self._quote_clicked, original))
            t.mark_set(f"tm{n}", "end-1c")
            t.mark_gravity(f"tm{n}", "left")
            t.insert("end", f"{line.time} ", ("time", f"tmt{n}"))
            sender = line.sender or "?"
            t.insert("end", sender + ": ", ("sender", self._sender_tag(sender, line.own)) + extra)
            self._insert_body(n, line, "end")
            t.mark_set(f"st{n}", "end-1c")
            t.mark_gravity(f"st{n}", "left")
            self._insert_state(n, line)
            t.tag_add(f"L{n}", start, "end-1c")
        else:
            tag = {
                LineKind.SYSTEM: "system",
                LineKind.ERROR: "error",
                LineKind.INFO: "info",
            }[line.kind]
            if line.kind is not LineKind.INFO:
                t.insert("end", f"{line.time} ", ("time",))
            t.insert("end", line.text, (tag,))
        t.configure(state="disabled")
        if follow:
            t.see("end")

    def _insert_body(self, n: int, line: Line, where: str) -> None:
        t = self.text
        extra = ("history",) if line.kind is LineKind.HISTORY else ()
        if line.deleted:
            t.insert(where, _("(message deleted)"), ("deleted", f"b{n}"))
            return
        first, *rest = line.text.split("\n")
        pieces: list[Any] = [first, ("body", f"b{n}") + extra]
        for more in rest:
            pieces += ["\n" + more, ("cont", f"b{n}") + extra]
        if line.edited:
            pieces += [" " + _("(edited)"), ("edited", f"b{n}")]
        t.insert(where, *pieces)

    def rewrite(self, line: Line) -> None:
        """The author edited or deleted *line*: render its new body in place."""
        n = self._ids.get(line)
        if n is None:
            return
        t = self.text
        ranges = t.tag_ranges(f"b{n}")
        if not ranges:
            return
        follow = self.at_bottom()
        t.configure(state="normal")
        start = t.index(ranges[0])
        t.delete(ranges[0], ranges[-1])
        # The state mark sits right after the body: keep it after the new one.
        t.mark_gravity(f"st{n}", "right")
        self._insert_body(n, line, start)
        t.mark_gravity(f"st{n}", "left")
        t.tag_add(f"L{n}", f"tm{n}", f"st{n}")
        t.configure(state="disabled")
        if follow:
            t.see("end")

    def line_at(self, x: int, y: int) -> Line | None:
        """The chat line drawn at pixel (*x*, *y*) of the transcript."""
        for tag in self.text.tag_names(f"@{x},{y}"):
            if tag.startswith("L") and tag[1:].isdigit():
                return self._lines.get(int(tag[1:]))
        return None

    def bbox_of(self, line: Line) -> tuple[int, int] | None:
        """A point inside *line*'s text on screen (for tests and menus)."""
        n = self._ids.get(line)
        if n is None:
            return None
        self.text.see(f"tm{n}")
        self.text.update_idletasks()
        box = self.text.bbox(f"tm{n}")
        return (box[0] + 2, box[1] + box[3] // 2) if box else None

    def _quote_clicked(self, msg_id: int, _event: tk.Event) -> None:
        self.show_message(msg_id)

    def show_message(self, msg_id: int) -> bool:
        """Scroll to message *msg_id* and highlight it a moment; False if it
        is not loaded in this conversation."""
        target = self.conv.line_by_id(msg_id)
        n = self._ids.get(target) if target is not None else None
        if n is None:
            self.text.bell()
            return False
        t = self.text
        t.see(f"tm{n}")
        t.tag_remove("flash", "1.0", "end")
        t.tag_add("flash", f"tm{n}", f"st{n}")
        self.after(1500, lambda: t.tag_remove("flash", "1.0", "end"))
        return True

    def _insert_state(self, n: int, line: Line) -> None:
        text, tag = state_suffix(line)
        if text:
            self.text.insert(f"st{n}", text, (tag, f"stt{n}"))

    def update_line(self, line: Line) -> None:
        n = self._ids.get(line)
        if n is None:
            return
        t = self.text
        t.configure(state="normal")
        ranges = t.tag_ranges(f"stt{n}")
        if ranges:
            t.delete(ranges[0], ranges[1])
        self._insert_state(n, line)
        ranges = t.tag_ranges(f"tmt{n}")
        if ranges and line.time:
            t.delete(ranges[0], ranges[1])
            t.insert(f"tm{n}", f"{line.time} ", ("time", f"tmt{n}"))
        t.configure(state="disabled")

    def plain_text(self) -> str:
        return self.text.get("1.0", "end-1c")


def state_suffix(line: Line) -> tuple[str, str]:
    state = line.state
    if state is None or state is SendState.SENT:
        return "", "state"
    if state is SendState.SENDING:
        return "  ⋯", "state"
    if state is SendState.FAILED:
        return "  ✗ " + _("not sent: {reason}").format(reason=line.note or "?"), "failed"
    if state is SendState.HELD:
        return "  ◷ " + (line.note or _("waiting")), "state"
    return "  ◷ " + (line.note or _("not sent yet")), "state"
