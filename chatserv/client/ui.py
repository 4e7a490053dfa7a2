"""Tk widgets of the desktop client. They render the model and forward user
actions to the session; no networking and no chat logic lives here. This module holds the
main window; :mod:`.views` one conversation's view, :mod:`.connect_form`
the connect form and :mod:`.theme` the colours.

Runs inside the Twisted reactor via ``tksupport`` (see ``app.py``): nothing
here may block or open a modal dialog, because a modal dialog runs its own
Tk loop and the reactor would stop turning while it is open.
"""

from __future__ import annotations

import tkinter as tk
from functools import partial
from tkinter import font as tkfont
from tkinter import ttk

from twisted.internet.task import LoopingCall

from chatserv.client.config import Settings, save_settings
from chatserv.client.connect_form import ConnectForm
from chatserv.client.i18n import _, join_names, ngettext
from chatserv.client.model import (
    GENERAL_KEY,
    ChatModel,
    ConnState,
    Conversation,
    ConvKey,
    Line,
    ModelObserver,
    fold,
)
from chatserv.client.network import parse_servers
from chatserv.client.session import ChatSession, Credentials, quote_of
from chatserv.client.theme import ACCENT, BORDER, OWN_COLOUR, QUOTE_BG, SURFACE, TEXT, apply_theme
from chatserv.client.views import AutoScrollbar, ConversationView, conv_title, tab_text


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
        apply_theme(master)
        if cafile and not settings.cafile:
            settings.cafile = cafile
        #: what the message box is doing besides writing a new message
        self.replying: Line | None = None
        self.editing: Line | None = None
        self.menu: tk.Menu | None = None
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
        top = ttk.Frame(self.chat, padding=(12, 10, 12, 4))
        top.pack(side="top", fill="x")
        self.who = ttk.Label(top, text="", font=self.fonts["bold"])
        self.who.pack(side="left")
        ttk.Button(top, text=_("Disconnect"), command=self._disconnect, style="Tool.TButton").pack(
            side="right"
        )
        self.close_button = ttk.Button(
            top, text=_("Close tab"), command=self._close_current, style="Tool.TButton"
        )
        self.close_button.pack(side="right", padx=(0, 6))
        self.rooms_bar = ttk.Frame(top)
        self.room_name = tk.StringVar()
        self.room_box = ttk.Combobox(self.rooms_bar, textvariable=self.room_name, width=11)
        self.room_box.pack(side="left")
        self.room_box.bind("<Return>", lambda _e: self._join())
        ttk.Button(self.rooms_bar, text=_("Join room"), command=self._join, style="Tool.TButton").pack(
            side="left", padx=(6, 10)
        )

        self.status = tk.StringVar()
        status = ttk.Label(self.chat, textvariable=self.status, style="Status.TLabel")
        status.pack(side="bottom", fill="x")

        # A grid, not a paned window: the users column keeps its width and
        # the conversation takes whatever the window has left.
        body = ttk.Frame(self.chat, padding=(12, 6, 12, 0))
        body.pack(side="top", fill="both", expand=True)
        left = ttk.Frame(body)
        right = ttk.Frame(body, padding=(12, 0, 0, 0))
        left.grid(row=0, column=0, sticky="nsew")
        right.grid(row=0, column=1, sticky="nsew")
        body.columnconfigure(0, weight=1)
        body.rowconfigure(0, weight=1)

        # Packed bottom-up so that a small window squeezes the transcript,
        # never the message box.
        composer = ttk.Frame(left, padding=(0, 4, 0, 0))
        composer.pack(side="bottom", fill="x")
        composer.columnconfigure(0, weight=1)
        # What is being answered or edited, with a way out (Escape does too).
        self.answer_bar = ttk.Frame(composer, style="Bar.TFrame", padding=(10, 4, 4, 4))
        self.answer_bar.grid(row=0, column=0, columnspan=2, sticky="ew", pady=(0, 4))
        self.answer_text = tk.StringVar()
        ttk.Label(self.answer_bar, textvariable=self.answer_text, style="Bar.TLabel").pack(
            side="left", fill="x", expand=True
        )
        self.answer_cancel = ttk.Button(
            self.answer_bar, text="✕", width=2, style="Flat.TButton", command=self.cancel_answer
        )
        self.answer_cancel.pack(side="right")
        self.answer_bar.grid_remove()
        box = tk.Frame(composer, background=SURFACE, highlightthickness=1, highlightbackground=BORDER,
                       highlightcolor=ACCENT)
        box.grid(row=1, column=0, sticky="nsew")
        box.columnconfigure(0, weight=1)
        self.input = tk.Text(
            box, height=3, width=20, wrap="word", undo=True, font=self.fonts["body"], borderwidth=0,
            highlightthickness=0, padx=10, pady=8, background=SURFACE, foreground=TEXT,
            insertbackground=TEXT,
        )
        self.input.grid(row=0, column=0, sticky="nsew")
        input_scroll = AutoScrollbar(box, command=self.input.yview)
        self.input.configure(yscrollcommand=input_scroll.set)
        input_scroll.grid(row=0, column=1, sticky="ns")
        box.columnconfigure(1, minsize=10)
        self.send_button = ttk.Button(
            composer, text=_("Send"), command=self.send_input, style="Accent.TButton"
        )
        self.send_button.grid(row=1, column=1, sticky="nsew", padx=(8, 0))
        self.typing = tk.StringVar()
        ttk.Label(left, textvariable=self.typing, style="Muted.TLabel", font=self.fonts["italic"]).pack(
            side="bottom", fill="x", pady=(2, 0)
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
        self.input.bind("<Up>", self._on_up)
        self.input.bind("<Escape>", self._on_escape)
        self.input.bind("<Control-r>", self._on_reply_key)
        for widget in (self.input, self.master):
            widget.bind("<Control-w>", self._on_close_key)

        self.users_label = ttk.Label(right, text=_("Online"), style="Heading.TLabel")
        self.users_label.pack(side="top", anchor="w", pady=(4, 6))
        users_box = tk.Frame(right, background=SURFACE, highlightthickness=1, highlightbackground=BORDER,
                             highlightcolor=BORDER)
        users_box.pack(side="top", fill="both", expand=True)
        users_box.columnconfigure(0, weight=1)
        users_box.columnconfigure(1, minsize=10)
        users_box.rowconfigure(0, weight=1)
        self.users = tk.Listbox(
            users_box, width=18, activestyle="none", exportselection=False, borderwidth=0,
            highlightthickness=0, background=SURFACE, foreground=TEXT, selectbackground=QUOTE_BG,
            selectforeground=TEXT, font=self.fonts["body"],
        )
        self.users.grid(row=0, column=0, sticky="nsew", padx=(8, 0), pady=6)
        users_scroll = AutoScrollbar(users_box, command=self.users.yview)
        self.users.configure(yscrollcommand=partial(self._users_scrolled, users_scroll))
        users_scroll.grid(row=0, column=1, sticky="ns")
        self.users.bind("<Double-Button-1>", self._user_double_click)
        self.users.bind("<Return>", self._user_double_click)
        ttk.Label(
            right, text=_("Double-click a name to talk in private."), style="Muted.TLabel", wraplength=170
        ).pack(side="bottom", anchor="w", pady=(6, 0))

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
        try:
            # "a:2001,b:2002": the nodes of a cluster, tried in turn.
            addresses = parse_servers(
                settings.host, settings.port, settings.tls, settings.cafile or self.cafile or None
            )
        except ValueError as exc:
            self.form.error.set(str(exc))
            self.show_form()
            return
        creds = Credentials(settings.user, password, settings.register)
        self.form.error.set("")
        self.session.connect(addresses, creds)
        self.show_chat()
        self._render_title()

    def _disconnect(self) -> None:
        self.session.disconnect()
        self.show_form()

    def send_input(self) -> None:
        text = self.input.get("1.0", "end-1c")
        if self.editing is not None:
            line, self.editing = self.editing, None
            if text.strip() and text != line.text:
                self.session.edit(line, text)
            self.input.delete("1.0", "end")
            self._render_answer()
            return
        if not text.strip():
            return
        self.session.send(self.model.active, text, reply_to=self.replying)
        self.replying = None
        self._render_answer()
        self.input.delete("1.0", "end")
        conv = self.model.get(self.model.active)
        if conv is not None:
            conv.draft = ""

    # -- replies and corrections ---------------------------------------------------
    def reply_to(self, line: Line) -> None:
        """Answer *line*: the bar above the message box shows it until sent or cancelled."""
        if not line.can_reply:
            return
        if self.editing is not None:
            self.input.delete("1.0", "end")
        self.editing = None
        self.replying = line
        self._render_answer()
        self.input.focus_set()

    def start_edit(self, line: Line) -> None:
        """Put our message *line* in the message box to be corrected."""
        if not line.can_correct:
            return
        self.replying = None
        self.editing = line
        self.input.delete("1.0", "end")
        self.input.insert("1.0", line.text)
        self._render_answer()
        self.input.focus_set()

    def delete_line(self, line: Line) -> None:
        if line.can_correct:
            self.session.delete(line)

    def cancel_answer(self) -> None:
        if self.editing is not None:
            self.input.delete("1.0", "end")
        self.replying = self.editing = None
        self._render_answer()

    def _render_answer(self) -> None:
        if self.replying is not None:
            quoted = quote_of(self.replying)
            self.answer_text.set(
                _("↪ Replying to {user}: {text}").format(user=quoted["from"], text=quoted["msg"])
            )
            self.answer_bar.grid()
        elif self.editing is not None:
            self.answer_text.set(_("✎ Editing your message (Esc to cancel)"))
            self.answer_bar.grid()
        else:
            self.answer_text.set("")
            self.answer_bar.grid_remove()

    def _on_escape(self, _event: tk.Event) -> str:
        self.cancel_answer()
        return "break"

    def _on_up(self, _event: tk.Event) -> str | None:
        # As in most chat clients: Up in an empty box edits one's last message.
        if self.input.get("1.0", "end-1c") or self.editing is not None:
            return None
        conv = self.model.get(self.model.active)
        line = conv.last_own() if conv is not None else None
        if line is None:
            return None
        self.start_edit(line)
        return "break"

    def _on_reply_key(self, _event: tk.Event) -> str:
        """Ctrl+R answers the newest message of someone else; pressed again,
        the one before it."""
        conv = self.model.get(self.model.active)
        if conv is None:
            return "break"
        candidates = [ln for ln in conv.lines if ln.can_reply and not ln.own]
        if not candidates:
            return "break"
        target = candidates[-1]
        if self.replying in candidates:
            target = candidates[max(0, candidates.index(self.replying) - 1)]
        self.reply_to(target)
        view = self.views.get(conv.key)
        if view is not None and target.msg_id is not None:
            view.show_message(target.msg_id)
        return "break"

    def line_menu(self, line: Line) -> tk.Menu | None:
        """The context menu of a chat line: reply, and edit or delete our own."""
        if not line.can_reply:
            return None
        if self.menu is not None:
            self.menu.destroy()
        menu = self.menu = tk.Menu(self.master, tearoff=False)
        menu.add_command(label=_("Reply"), accelerator="Ctrl+R", command=lambda: self.reply_to(line))
        if line.can_correct:
            menu.add_command(label=_("Edit"), accelerator="↑", command=lambda: self.start_edit(line))
            menu.add_command(label=_("Delete"), command=lambda: self.delete_line(line))
        return menu

    def _on_right_click(self, view: ConversationView, event: tk.Event) -> str:
        line = view.line_at(event.x, event.y)
        menu = self.line_menu(line) if line is not None else None
        if menu is not None:
            menu.tk_popup(event.x_root, event.y_root)
        return "break"

    def remember_size(self) -> None:
        """Keep the window's size for the next start (``Settings.geometry``)."""
        width, height = self.master.winfo_width(), self.master.winfo_height()
        if width > 1 and height > 1:
            self.settings.geometry = f"{width}x{height}"
            if self.save:
                save_settings(self.settings)

    def _on_return(self, _event: tk.Event) -> str:
        self.send_input()
        return "break"

    def _on_shift_return(self, _event: tk.Event) -> str:
        self.input.insert("insert", "\n")
        self.input.see("insert")
        return "break"

    def _on_key(self, event: tk.Event) -> None:
        # Only keys that change the text say "typing"; arrows and modifiers
        # don't, and neither does correcting a message already sent.
        if self.editing is not None:
            return
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
        view.text.bind("<Button-3>", partial(self._on_right_click, view))
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

    def line_rewritten(self, conv: Conversation, line: Line) -> None:
        view = self.views.get(conv.key)
        if view is not None:
            view.rewrite(line)
        if line.deleted and line in (self.replying, self.editing):
            self.cancel_answer()

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
        if self._showing is not None and self._showing != key:
            self.cancel_answer()  # a reply or an edit belongs to the tab it started in
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
        # A large room's list holds the pages loaded so far (client.members):
        # the heading says how many members there are.
        n = conv.member_count if conv is not None and conv.member_count is not None else len(names)
        if conv is None or conv.is_general:
            self.users_label.configure(text=_("Online ({n})").format(n=n))
        else:
            self.users_label.configure(text=_("In {room} ({n})").format(room=conv_title(conv), n=n))
        shown = list(self.users.get(0, "end"))
        if shown == names:
            return
        if shown != names[: len(shown)]:
            self.users.delete(0, "end")
            shown = []
        # A page appended: only its names are inserted, so scrolling through
        # a large room never redraws what is already there.
        me = fold(self.model.me)
        for name in names[len(shown) :]:
            self.users.insert("end", name)
            if fold(name) == me:
                self.users.itemconfigure("end", foreground=OWN_COLOUR)

    def _users_scrolled(self, scrollbar: AutoScrollbar, first: str, last: str) -> None:
        """The member list moved or changed: near its end, load the next page."""
        scrollbar.set(first, last)
        if float(last) >= 0.9:
            self.session.more_members(self._users_key())

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
