"""Tk widgets of the desktop client. They render the model and forward user
actions to the session; no networking and no chat logic lives here.

Runs inside the Twisted reactor via ``tksupport`` (see ``app.py``): nothing
here may block or open a modal dialog, because a modal dialog runs its own
Tk loop and the reactor would stop turning while it is open.
"""

from __future__ import annotations

import tkinter as tk
import zlib
from collections.abc import Callable
from tkinter import font as tkfont
from tkinter import ttk

from twisted.internet.task import LoopingCall

from chatserv.client.config import Settings, save_settings
from chatserv.client.i18n import _, join_names, ngettext
from chatserv.client.model import (
    GENERAL_KEY,
    ChatModel,
    ConnState,
    Conversation,
    ConvKey,
    Line,
    LineKind,
    ModelObserver,
    SendState,
    fold,
)
from chatserv.client.network import ServerAddress
from chatserv.client.session import ChatSession, Credentials

SENDER_COLOURS = ("#1c71d8", "#26a269", "#c64600", "#9141ac", "#b5835a", "#e01b24", "#2190a4")
OWN_COLOUR = "#1a5fb4"


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
        self.text = tk.Text(
            self,
            wrap="word",
            state="disabled",
            width=30,
            height=8,
            padx=8,
            pady=6,
            borderwidth=0,
            highlightthickness=0,
            font=fonts["body"],
            cursor="arrow",
        )
        scroll = ttk.Scrollbar(self, orient="vertical", command=self.text.yview)
        self.text.configure(yscrollcommand=scroll.set)
        self.text.grid(row=0, column=0, sticky="nsew")
        scroll.grid(row=0, column=1, sticky="ns")
        self.columnconfigure(0, weight=1)
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
        t.tag_raise("history")
        self._ids: dict[Line, int] = {}
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
        t = self.text
        t.configure(state="normal")
        if t.index("end-1c") != "1.0":
            t.insert("end", "\n")
        extra = ("history",) if line.kind is LineKind.HISTORY else ()
        if line.kind in (LineKind.MESSAGE, LineKind.HISTORY):
            t.mark_set(f"tm{n}", "end-1c")
            t.mark_gravity(f"tm{n}", "left")
            t.insert("end", f"{line.time} ", ("time", f"tmt{n}"))
            sender = line.sender or "?"
            t.insert("end", sender + ": ", ("sender", self._sender_tag(sender, line.own)) + extra)
            first, *rest = line.text.split("\n")
            t.insert("end", first, ("body",) + extra)
            for more in rest:
                t.insert("end", "\n" + more, ("cont",) + extra)
            t.mark_set(f"st{n}", "end-1c")
            t.mark_gravity(f"st{n}", "left")
            self._insert_state(n, line)
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
        self.error = tk.StringVar()
        box = ttk.Labelframe(self, text=_("Connect to a chat server"), padding=16)
        box.place(relx=0.5, rely=0.4, anchor="center")
        rows = [
            (_("Server"), ttk.Entry(box, textvariable=self.host, width=28)),
            (_("Port"), ttk.Entry(box, textvariable=self.port, width=8)),
            (_("Name"), ttk.Entry(box, textvariable=self.user, width=28)),
            (_("Password (optional)"), ttk.Entry(box, textvariable=self.password, show="•", width=28)),
        ]
        self.entries = {}
        for row, (label, entry) in enumerate(rows):
            ttk.Label(box, text=label).grid(row=row, column=0, sticky="w", padx=(0, 12), pady=3)
            entry.grid(row=row, column=1, sticky="w", pady=3)
            entry.bind("<Return>", lambda _e: self.on_submit())
            entry.bind("<KP_Enter>", lambda _e: self.on_submit())
            self.entries[label] = entry
        self.user_entry = rows[2][1]
        ttk.Checkbutton(
            box, text=_("Create an account with this password"), variable=self.register_var
        ).grid(row=4, column=1, sticky="w", pady=3)
        ttk.Checkbutton(box, text=_("Use TLS"), variable=self.tls).grid(
            row=5, column=1, sticky="w", pady=3
        )
        self.button = ttk.Button(box, text=_("Connect"), command=self.on_submit)
        self.button.grid(row=6, column=1, sticky="e", pady=(12, 0))
        ttk.Label(box, textvariable=self.error, foreground="#c01c28", wraplength=360).grid(
            row=7, column=0, columnspan=2, sticky="w", pady=(8, 0)
        )

    def values(self) -> tuple[Settings, str] | str:
        """The settings and password entered, or an error message."""
        host = self.host.get().strip()
        user = self.user.get().strip()
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
        settings = Settings(host, port, user, self.tls.get(), self.register_var.get())
        return settings, self.password.get()


class ChatWindow(ModelObserver):
    """The whole client inside ``master`` (a Tk root or a Toplevel)."""

    def __init__(
        self,
        master: tk.Tk | tk.Toplevel,
        session: ChatSession,
        settings: Settings,
        cafile: str | None = None,
        save: bool = True,
    ) -> None:
        self.master = master
        self.session = session
        self.model: ChatModel = session.model
        self.settings = settings
        self.cafile = cafile
        self.save = save
        base = tkfont.nametofont("TkDefaultFont")
        size = base.actual("size")
        self.fonts = {
            "body": tkfont.Font(master, family=base.actual("family"), size=size + 1),
            "bold": tkfont.Font(master, family=base.actual("family"), size=size + 1, weight="bold"),
            "italic": tkfont.Font(master, family=base.actual("family"), size=size + 1, slant="italic"),
            "small": tkfont.Font(master, family=base.actual("family"), size=max(size - 1, 7)),
        }
        master.minsize(560, 360)
        style = ttk.Style(master)
        if "clam" in style.theme_names() and style.theme_use() == "default":
            style.theme_use("clam")
        self.form = ConnectForm(master, settings, self._submit)
        self.chat = ttk.Frame(master)
        self._build_chat()
        self.views: dict[ConvKey, ConversationView] = {}
        self._tab_keys: dict[str, ConvKey] = {}
        self._showing: ConvKey | None = None
        self._syncing_tabs = False
        self._status_timer = LoopingCall(self._render_status)
        self._status_timer.clock = session.reactor
        self.model.subscribe(self)
        for conv in self.model.conversations.values():
            self.conversation_added(conv)
        self.show_form()
        self._render_title()

    # -- layout ----------------------------------------------------------------
    def _build_chat(self) -> None:
        top = ttk.Frame(self.chat, padding=(8, 6, 8, 0))
        top.pack(side="top", fill="x")
        self.who = ttk.Label(top, text="")
        self.who.pack(side="left")
        ttk.Button(top, text=_("Disconnect"), command=self._disconnect).pack(side="right")
        self.close_button = ttk.Button(top, text=_("Close tab"), command=self._close_current)
        self.close_button.pack(side="right", padx=(0, 6))
        self.rooms_bar = ttk.Frame(top)
        self.room_name = tk.StringVar()
        self.room_box = ttk.Combobox(self.rooms_bar, textvariable=self.room_name, width=12)
        self.room_box.pack(side="left")
        self.room_box.bind("<Return>", lambda _e: self._join())
        ttk.Button(self.rooms_bar, text=_("Join room"), command=self._join).pack(
            side="left", padx=(4, 12)
        )

        self.status = tk.StringVar()
        status = ttk.Label(self.chat, textvariable=self.status, relief="sunken", padding=(6, 2))
        status.pack(side="bottom", fill="x")

        # A grid, not a paned window: the users column keeps its width and
        # the conversation takes whatever the window has left.
        body = ttk.Frame(self.chat, padding=(8, 6))
        body.pack(side="top", fill="both", expand=True)
        left = ttk.Frame(body)
        right = ttk.Frame(body, padding=(8, 0, 0, 0))
        left.grid(row=0, column=0, sticky="nsew")
        right.grid(row=0, column=1, sticky="nsew")
        body.columnconfigure(0, weight=1)
        body.rowconfigure(0, weight=1)

        # Packed bottom-up so that a small window squeezes the transcript,
        # never the message box.
        entry_row = ttk.Frame(left)
        entry_row.pack(side="bottom", fill="x")
        ttk.Button(entry_row, text=_("Send"), command=self.send_input).pack(
            side="right", padx=(6, 0), fill="y"
        )
        self.input = tk.Text(
            entry_row, height=3, width=20, wrap="word", undo=True, font=self.fonts["body"]
        )
        self.input.pack(side="left", fill="both", expand=True)
        self.typing = tk.StringVar()
        ttk.Label(left, textvariable=self.typing, foreground="#5e5c64", font=self.fonts["italic"]).pack(
            side="bottom", fill="x", pady=(2, 2)
        )
        self.notebook = ttk.Notebook(left)
        self.notebook.pack(side="top", fill="both", expand=True)
        self.notebook.enable_traversal()
        self.notebook.bind("<<NotebookTabChanged>>", self._tab_changed)
        self.input.bind("<Return>", self._on_return)
        self.input.bind("<KP_Enter>", self._on_return)
        self.input.bind("<Shift-Return>", self._on_shift_return)
        self.input.bind("<Shift-KP_Enter>", self._on_shift_return)
        self.input.bind("<KeyPress>", self._on_key, add="+")
        for widget in (self.input, self.master):
            widget.bind("<Control-w>", self._on_close_key)

        self.users_label = ttk.Label(right, text=_("Online"))
        self.users_label.pack(side="top", anchor="w")
        self.users = tk.Listbox(right, width=16, activestyle="none", exportselection=False)
        self.users.pack(side="top", fill="both", expand=True)
        self.users.bind("<Double-Button-1>", self._user_double_click)
        self.users.bind("<Return>", self._user_double_click)
        ttk.Label(
            right, text=_("Double-click a name to talk in private."), foreground="#8a8a8a", wraplength=160
        ).pack(side="bottom", anchor="w", pady=(4, 0))

    def show_form(self, error: str = "") -> None:
        self.chat.pack_forget()
        self.form.pack(fill="both", expand=True)
        self.form.error.set(error)
        self.form.user_entry.focus_set()
        if self._status_timer.running:
            self._status_timer.stop()

    def show_chat(self) -> None:
        self.form.pack_forget()
        self.chat.pack(fill="both", expand=True)
        self.input.focus_set()
        if not self._status_timer.running:
            self._status_timer.start(0.5, now=True)

    # -- actions ------------------------------------------------------------------
    def _submit(self) -> None:
        result = self.form.values()
        if isinstance(result, str):
            self.form.error.set(result)
            return
        settings, password = result
        self.connect(settings, password)

    def connect(self, settings: Settings, password: str = "") -> None:
        self.settings = settings
        if self.save:
            save_settings(settings)
        address = ServerAddress(settings.host, settings.port, settings.tls, self.cafile)
        creds = Credentials(settings.user, password, settings.register)
        self.form.error.set("")
        self.session.connect(address, creds)
        self.show_chat()
        self._render_title()

    def _disconnect(self) -> None:
        self.session.disconnect()
        self.show_form()

    def send_input(self) -> None:
        text = self.input.get("1.0", "end-1c")
        if not text.strip():
            return
        self.session.send(self.model.active, text)
        self.input.delete("1.0", "end")
        conv = self.model.get(self.model.active)
        if conv is not None:
            conv.draft = ""

    def _on_return(self, _event: tk.Event) -> str:
        self.send_input()
        return "break"

    def _on_shift_return(self, _event: tk.Event) -> str:
        self.input.insert("insert", "\n")
        self.input.see("insert")
        return "break"

    def _on_key(self, event: tk.Event) -> None:
        # Only keys that change the text say "typing"; arrows and modifiers don't.
        if (event.char and event.char.isprintable()) or event.keysym in ("BackSpace", "Delete"):
            self.session.user_typing(self.model.active)

    def _user_double_click(self, _event: tk.Event) -> None:
        selection = self.users.curselection()
        if not selection:
            return
        name = self.users.get(selection[0])
        if fold(name) == fold(self.model.me):
            return
        self.session.open_private(name)

    def _join(self) -> None:
        self.session.join(self.room_name.get())
        self.room_name.set("")

    def _close_current(self) -> None:
        self.session.close(self.model.active)

    def _on_close_key(self, _event: tk.Event) -> str:
        self._close_current()
        return "break"

    def _tab_changed(self, _event: tk.Event) -> None:
        if self._syncing_tabs:
            return
        try:
            selected = self.notebook.select()
        except tk.TclError:
            return
        key = self._tab_keys.get(str(selected))
        if key is not None:
            self.model.set_active(key)

    # -- model events -----------------------------------------------------------
    def conversation_added(self, conv: Conversation) -> None:
        view = ConversationView(self.notebook, conv, self.fonts)
        self.views[conv.key] = view
        self._tab_keys[str(view)] = conv.key
        self._syncing_tabs = True
        try:
            self.notebook.add(view, text=tab_text(conv))
        finally:
            self._syncing_tabs = False

    def conversation_removed(self, conv: Conversation) -> None:
        view = self.views.pop(conv.key, None)
        if view is None:
            return
        self._tab_keys.pop(str(view), None)
        self._syncing_tabs = True
        try:
            self.notebook.forget(view)
            view.destroy()
        finally:
            self._syncing_tabs = False
        if self._showing == conv.key:
            self._showing = None
        self._render_title()

    def line_added(self, conv: Conversation, line: Line) -> None:
        view = self.views.get(conv.key)
        if view is not None:
            view.add(line)

    def line_changed(self, conv: Conversation, line: Line) -> None:
        view = self.views.get(conv.key)
        if view is not None:
            view.update_line(line)

    def unread_changed(self, conv: Conversation) -> None:
        view = self.views.get(conv.key)
        if view is not None:
            self.notebook.tab(view, text=tab_text(conv))
        self._render_title()

    def typing_changed(self, conv: Conversation) -> None:
        if conv.key == self.model.active:
            self._render_typing()

    def members_changed(self, conv: Conversation) -> None:
        if conv.key == self._users_key():
            self._render_users()
        if conv.key == self.model.active:
            self._render_typing()

    def active_changed(self) -> None:
        key = self.model.active
        # Drafts belong to their conversation: switching tabs keeps both.
        if self._showing is not None and self._showing != key:
            previous = self.model.get(self._showing)
            if previous is not None:
                previous.draft = self.input.get("1.0", "end-1c")
            conv = self.model.get(key)
            self.input.delete("1.0", "end")
            if conv is not None and conv.draft:
                self.input.insert("1.0", conv.draft)
        self._showing = key
        view = self.views.get(key)
        if view is not None and str(self.notebook.select()) != str(view):
            self._syncing_tabs = True
            try:
                self.notebook.select(view)
            finally:
                self._syncing_tabs = False
        if key == GENERAL_KEY:
            self.close_button.state(["disabled"])
        else:
            self.close_button.state(["!disabled"])
        self._render_users()
        self._render_typing()
        if self.chat.winfo_ismapped():
            self.input.focus_set()

    def state_changed(self) -> None:
        if self.model.state is ConnState.ONLINE:
            # The account exists now: reconnecting from the form must not
            # try to create it again.
            self.form.register_var.set(False)
        self._render_status()
        self._render_title()

    def rooms_changed(self) -> None:
        if self.model.rooms_supported:
            self.rooms_bar.pack(side="left", padx=(16, 0))
            self.room_box.configure(values=[name for name, _n in self.model.room_list])
        else:
            self.rooms_bar.pack_forget()

    def login_failed(self, message: str) -> None:
        self.show_form(message)

    # -- rendering ------------------------------------------------------------------
    def _users_key(self) -> ConvKey:
        key = self.model.active
        return key if key.kind == "room" else GENERAL_KEY

    def _render_users(self) -> None:
        conv = self.model.get(self._users_key())
        names = conv.members if conv else []
        if conv is None or conv.is_general:
            self.users_label.configure(text=_("Online ({n})").format(n=len(names)))
        else:
            self.users_label.configure(
                text=_("In {room} ({n})").format(room=conv_title(conv), n=len(names))
            )
        if list(self.users.get(0, "end")) != names:
            self.users.delete(0, "end")
            for name in names:
                self.users.insert("end", name)
                if fold(name) == fold(self.model.me):
                    self.users.itemconfigure("end", foreground=OWN_COLOUR)

    def _render_typing(self) -> None:
        conv = self.model.get(self.model.active)
        if conv is None:
            self.typing.set("")
            return
        names = conv.typing_names()
        if names:
            self.typing.set(
                ngettext("{names} is typing…", "{names} are typing…", len(names)).format(
                    names=join_names(names)
                )
            )
        elif (
            conv.key.kind == "private"
            and self.model.state is ConnState.ONLINE
            and not self.model.is_online(conv.title)
        ):
            self.typing.set(_("{user} is offline.").format(user=conv.title))
        else:
            self.typing.set("")

    def status_text(self) -> str:
        m = self.model
        state = m.state
        if state is ConnState.ONLINE:
            return _("Connected to {server} as {user}").format(server=m.server, user=m.me)
        if state is ConnState.LOGGING_IN:
            return _("Logging in as {user}…").format(user=m.me)
        if state is ConnState.WAITING and m.retry_at is not None:
            left = max(0, round(m.retry_at - self.session.reactor.seconds()))
            if left > 0:
                if m.ever_online:
                    return ngettext(
                        "Connection lost. Reconnecting in {n} s…",
                        "Connection lost. Reconnecting in {n} s…",
                        left,
                    ).format(n=left)
                return ngettext(
                    "Cannot reach {server}. Retrying in {n} s…",
                    "Cannot reach {server}. Retrying in {n} s…",
                    left,
                ).format(server=m.server, n=left)
        if state is ConnState.DISCONNECTED:
            return _("Disconnected")
        if m.ever_online:
            return _("Reconnecting to {server}…").format(server=m.server)
        return _("Connecting to {server}…").format(server=m.server)

    def _render_status(self) -> None:
        self.status.set(self.status_text())
        self.who.configure(text=f"{self.model.me} @ {self.model.server}" if self.model.me else "")

    def window_title(self) -> str:
        title = "chatserv"
        if self.model.me:
            title = f"{self.model.me} — chatserv"
        unread = self.model.total_unread()
        return f"({unread}) {title}" if unread else title

    def _render_title(self) -> None:
        self.master.title(self.window_title())

    # -- teardown ------------------------------------------------------------------
    def close(self) -> None:
        """Stop timers and observers; the caller destroys the Tk widgets."""
        if self._status_timer.running:
            self._status_timer.stop()
        self.model.unsubscribe(self)
        self.model.shutdown()
