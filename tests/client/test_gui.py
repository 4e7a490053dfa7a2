"""The Tk client with real widgets on an X display (Xvfb, started by
conftest.py), against the real chat server on loopback.

Two clients live in two Toplevels of one Tk root that tksupport drives from
the reactor, exactly as ``chatserv-client`` drives its own root. Keys are
delivered with ``event_generate`` to the focused widget, so the same Tk
bindings run as for a person typing; the last test drives the installed
entry point in a subprocess with xdotool instead.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import pytest_twisted

try:
    import tkinter as tk
except ImportError as exc:  # Python built without Tk, or libtk8.6 missing
    if os.environ.get("CHATSERV_REQUIRE_GUI") == "1":
        raise
    pytest.skip(f"tkinter cannot be imported ({exc}); install python3-tk", allow_module_level=True)

from chatserv.client import i18n, model
from chatserv.client.config import Settings
from chatserv.client.model import GENERAL_KEY, ChatModel, ConnState, ConvKey, LineKind
from chatserv.client.network import ServerAddress
from chatserv.client.session import ChatSession, Credentials
from chatserv.client.ui import ChatWindow
from tests.client.support import RestartableServer, fast_retry, sleep, wait_for

pytestmark = [pytest.mark.gui]

KEYSYMS = {" ": "space", ",": "comma", ".": "period", "!": "exclam", "?": "question"}


class GuiClient:
    def __init__(self, root: tk.Tk, port: int, user: str | None, x: int = 0) -> None:
        from twisted.internet import reactor

        self.top = tk.Toplevel(root)
        self.top.geometry(f"860x560+{x}+0")
        self.session = ChatSession(ChatModel(reactor), reactor, policy=fast_retry)
        self.model = self.session.model
        self.settings = Settings("127.0.0.1", port, user or "")
        self.window = ChatWindow(self.top, self.session, self.settings, save=False)
        if user:
            self.window.connect(self.settings)

    async def online(self) -> None:
        await wait_for(lambda: self.model.state is ConnState.ONLINE, f"{self.model.me} online")

    def view_text(self, key: ConvKey = GENERAL_KEY) -> str:
        view = self.window.views.get(key)
        return view.plain_text() if view else ""

    def tab_title(self, key: ConvKey) -> str | None:
        view = self.window.views.get(key)
        return str(self.window.notebook.tab(view, "text")) if view else None

    def focus_input(self) -> None:
        self.top.deiconify()
        self.window.input.focus_force()
        self.top.update()

    def type(self, text: str) -> None:
        """Press one key per character, as a keyboard would."""
        self.focus_input()
        for char in text:
            keysym = KEYSYMS.get(char, char)
            if not (keysym.isascii() and keysym.isalnum() or char in KEYSYMS):
                self.window.input.insert("insert", char)  # no simple keysym: paste it
                continue
            self.window.input.event_generate("<KeyPress>", keysym=keysym)
        self.top.update()

    def press(self, sequence: str) -> None:
        self.focus_input()
        self.window.input.event_generate(sequence)
        self.top.update()

    def double_click_user(self, index: int) -> None:
        users = self.window.users
        self.top.update()
        x, y, width, height = users.bbox(index)
        # Two clicks at the same spot; Tk itself turns them into <Double-1>.
        for _ in range(2):
            users.event_generate("<ButtonPress-1>", x=x + width // 2, y=y + height // 2)
            users.event_generate("<ButtonRelease-1>", x=x + width // 2, y=y + height // 2)
        self.top.update()

    def input_text(self) -> str:
        return self.window.input.get("1.0", "end-1c")

    async def close(self) -> None:
        await self.session.disconnect()
        self.window.close()
        self.top.destroy()


@pytest.fixture(autouse=True)
def english():
    i18n.install("en")
    yield
    i18n.install("en")


@pytest_twisted.ensureDeferred
async def test_general_and_private_chat_with_tabs_and_unread_counts(tk_root, chat_server):
    ana = GuiClient(tk_root, chat_server.port, "Ana")
    await ana.online()
    luis = GuiClient(tk_root, chat_server.port, "Luis", x=400)
    try:
        await luis.online()
        await wait_for(lambda: ana.window.users.get(0, "end") == ("Ana", "Luis"), "users list")
        assert ana.window.users_label.cget("text") == "Online (2)"
        await wait_for(lambda: "Luis joined the chat" in ana.view_text(), "join notice")
        assert ana.window.status.get() == f"Connected to 127.0.0.1:{chat_server.port} as Ana"

        ana.type("Hola Luis")
        ana.press("<Return>")
        assert ana.input_text() == ""
        await wait_for(lambda: "Ana: Hola Luis" in luis.view_text(), "Luis sees the broadcast")
        assert ana.view_text().count("Hola Luis") == 1

        # Luis opens a private tab by double-clicking Ana in the users list.
        index = list(luis.window.users.get(0, "end")).index("Ana")
        luis.double_click_user(index)
        private = ConvKey.private("Ana")
        await wait_for(lambda: luis.model.active == private, "Luis's private tab is shown")
        assert luis.tab_title(private) == "Ana"
        luis.type("secreto")
        luis.press("<Return>")

        # On Ana's side the tab opens by itself, counting what she has not read.
        from_luis = ConvKey.private("Luis")
        await wait_for(lambda: ana.tab_title(from_luis) == "Luis (1)", "unread count on the tab")
        assert ana.top.title() == "(1) Ana — chatserv"
        assert "secreto" not in ana.view_text() and "Luis: secreto" in ana.view_text(from_luis)
        luis.type("otra")
        luis.press("<Return>")
        await wait_for(lambda: ana.tab_title(from_luis) == "Luis (2)", "second unread")
        assert ana.top.title() == "(2) Ana — chatserv"

        ana.window.notebook.select(ana.window.views[from_luis])
        await wait_for(lambda: ana.tab_title(from_luis) == "Luis", "unread cleared when the tab is shown")
        assert ana.top.title() == "Ana — chatserv"
        assert ana.model.active == from_luis
        assert ana.window.close_button.instate(["!disabled"])
    finally:
        await ana.close()
        await luis.close()


@pytest_twisted.ensureDeferred
async def test_enter_sends_shift_enter_breaks_line_and_typing_shows_then_expires(
    tk_root, chat_server, monkeypatch
):
    # Shorter than the real 6 s so the expiry is seen without a long wait; long
    # enough that a loaded machine still polls the indicator while it shows.
    monkeypatch.setattr(model, "TYPING_SHOWN_FOR", 3.0)
    ana = GuiClient(tk_root, chat_server.port, "Ana")
    luis = GuiClient(tk_root, chat_server.port, "Luis", x=400)
    try:
        await ana.online()
        await luis.online()
        await wait_for(lambda: len(luis.model.online()) == 2, "both online")

        ana.type("primera")
        await wait_for(lambda: luis.window.typing.get() == "Ana is typing…", "typing indicator")
        await wait_for(lambda: luis.window.typing.get() == "", "typing indicator expires")

        ana.press("<Shift-Return>")
        ana.type("segunda")
        assert ana.input_text() == "primera\nsegunda"
        assert ana.model.conversations[GENERAL_KEY].lines == []  # nothing sent yet
        ana.press("<Return>")
        await wait_for(lambda: "Ana: primera\n" in luis.view_text(), "multi-line message arrives")
        lines = luis.view_text().splitlines()
        assert lines[-2].endswith("Ana: primera") and lines[-1] == "segunda"
        sent = [ln.text for ln in luis.model.conversations[GENERAL_KEY].lines if ln.kind is LineKind.MESSAGE]
        assert sent == ["primera\nsegunda"]

        # The view follows new messages unless the reader has scrolled up.
        view = luis.window.views[GENERAL_KEY].text
        ana.session.send(GENERAL_KEY, "\n".join(f"línea {i}" for i in range(60)))
        await wait_for(lambda: "línea 59" in luis.view_text(), "long message")
        luis.top.update()
        assert view.yview()[1] == 1.0
        view.yview_moveto(0)
        luis.top.update()
        ana.session.send(GENERAL_KEY, "nueva")
        await wait_for(lambda: "Ana: nueva" in luis.view_text(), "new message while scrolled up")
        luis.top.update()
        assert view.yview()[0] == 0.0, "stayed where the reader was"
        view.yview_moveto(1.0)
        ana.session.send(GENERAL_KEY, "otra")
        await wait_for(lambda: "Ana: otra" in luis.view_text(), "new message at the bottom")
        luis.top.update()
        assert view.yview()[1] == 1.0, "followed the conversation"
    finally:
        await ana.close()
        await luis.close()


@pytest_twisted.ensureDeferred
async def test_server_restart_reconnects_both_and_keeps_what_was_typed(
    tk_root, chat_server: RestartableServer
):
    ana = GuiClient(tk_root, chat_server.port, "Ana")
    luis = GuiClient(tk_root, chat_server.port, "Luis", x=400)
    try:
        await ana.online()
        await luis.online()
        await wait_for(lambda: len(ana.model.online()) == 2, "both online")

        await chat_server.stop()
        await wait_for(
            lambda: "Reconnecting" in ana.window.status.get() or "Connection lost" in ana.window.status.get(),
            "status bar says we are reconnecting",
        )
        ana.type("mientras tanto")
        ana.press("<Return>")
        assert "mientras tanto  ◷ not sent yet" in ana.view_text()
        luis.type("yo también")
        luis.press("<Return>")
        await sleep(0.5)  # a few failed attempts while the server is down

        await chat_server.start()
        await ana.online()
        await luis.online()
        await wait_for(lambda: "Ana: mientras tanto" in luis.view_text(), "Ana's offline line delivered")
        await wait_for(lambda: "Luis: yo también" in ana.view_text(), "Luis's offline line delivered")
        await wait_for(lambda: "not sent yet" not in ana.view_text(), "Ana's marker cleared")
        assert ana.window.status.get().startswith("Connected to")
        assert "Reconnected." in ana.view_text()

        luis.type("seguimos")
        luis.press("<Return>")
        await wait_for(lambda: "Luis: seguimos" in ana.view_text(), "chat goes on")
        assert ana.view_text().count("mientras tanto") == 1
        assert luis.view_text().count("mientras tanto") == 1
    finally:
        await ana.close()
        await luis.close()


@pytest_twisted.ensureDeferred
async def test_connect_form_reports_a_taken_name_in_spanish(tk_root, chat_server):
    i18n.install("es")
    ana = GuiClient(tk_root, chat_server.port, "Ana")
    other = GuiClient(tk_root, chat_server.port, None, x=400)
    try:
        await ana.online()
        form = other.window.form
        assert form.winfo_ismapped() or form.winfo_manager() == "pack"
        assert other.window.chat.winfo_manager() == ""
        form.user.set("ana")
        form.button.invoke()
        await wait_for(lambda: form.error.get(), "error shown in the form")
        assert form.error.get() == "El nombre ana ya está en uso. Elige otro."
        assert form.winfo_manager() == "pack" and other.model.state is ConnState.DISCONNECTED

        form.user.set("Eva")
        form.button.invoke()
        await other.online()
        assert other.window.chat.winfo_manager() == "pack"
        assert other.window.status.get() == f"Conectado a 127.0.0.1:{chat_server.port} como Eva"
        assert other.window.users_label.cget("text") == "En línea (2)"
    finally:
        await ana.close()
        await other.close()


@pytest.mark.skipif(shutil.which("xdotool") is None, reason="xdotool not installed (apt-get install xdotool)")
@pytest_twisted.ensureDeferred
async def test_entry_point_with_user_connects_at_once_and_takes_keyboard_input(
    display, chat_server, tmp_path
):
    from twisted.internet import reactor

    watcher = ChatSession(ChatModel(reactor), reactor, policy=fast_retry)
    watcher.connect(ServerAddress("127.0.0.1", chat_server.port), Credentials("Observador"))
    env = dict(os.environ, XDG_CONFIG_HOME=str(tmp_path / "config"), DISPLAY=display)
    proc = subprocess.Popen(
        [sys.executable, "-m", "chatserv.client", "--host", "127.0.0.1", "--port", str(chat_server.port),
         "--user", "Eva", "--lang", "es", "--geometry", "700x450+0+0"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        await wait_for(lambda: "Eva" in watcher.model.online(), "Eva logs in with no form", timeout=20)
        # The message box has the keyboard focus: plain typing goes into it.
        await sleep(0.3)
        xdotool = ["xdotool", "type", "--delay", "20", "hola desde el teclado"]
        subprocess.run(xdotool, env=env, check=True, timeout=30)
        subprocess.run(["xdotool", "key", "Return"], env=env, check=True, timeout=10)
        general = watcher.model.conversations[GENERAL_KEY]
        await wait_for(
            lambda: any(ln.sender == "Eva" and ln.text == "hola desde el teclado" for ln in general.lines),
            "Eva's typed message",
        )
        title = subprocess.run(
            ["xdotool", "search", "--name", "^Eva .*chatserv$"], env=env, capture_output=True, timeout=10
        )
        assert title.stdout.strip(), "window titled after the user"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        await watcher.disconnect()
    assert proc.returncode in (0, -15), proc.stderr.read().decode(errors="replace") if proc.stderr else ""


# -- replies, corrections, the connect form's CA file, the window's size ---------


def right_click(client: GuiClient, key: ConvKey, line) -> None:
    """Right-click *line* in the transcript, as a mouse would."""
    view = client.window.views[key]
    client.top.update()
    point = view.bbox_of(line)
    assert point is not None, "the line is on screen"
    x, y = point
    text = view.text
    text.event_generate(
        "<Button-3>", x=x, y=y, rootx=text.winfo_rootx() + x, rooty=text.winfo_rooty() + y
    )
    client.top.update()


def choose(client: GuiClient, label: str) -> None:
    """Pick *label* in the context menu that is open, and close it."""
    menu = client.window.menu
    assert menu is not None, "a context menu opened"
    labels = [menu.entrycget(i, "label") for i in range(menu.index("end") + 1)]
    menu.invoke(labels.index(label))
    menu.unpost()
    menu.grab_release()
    client.top.update()


def message_line(client: GuiClient, text: str, key: ConvKey = GENERAL_KEY):
    conv = client.model.conversations[key]
    return next((ln for ln in conv.lines if ln.text == text and ln.msg_id is not None), None)


@pytest_twisted.ensureDeferred
async def test_reply_from_the_menu_and_the_keyboard(tk_root, chat_server):
    ana = GuiClient(tk_root, chat_server.port, "Ana")
    luis = GuiClient(tk_root, chat_server.port, "Luis", x=400)
    try:
        await ana.online()
        await luis.online()
        luis.session.send(GENERAL_KEY, "¿Vamos al cine?")
        original = await wait_for(lambda: message_line(ana, "¿Vamos al cine?"), "Luis's message")

        right_click(ana, GENERAL_KEY, original)
        choose(ana, "Reply")
        assert ana.window.answer_bar.winfo_manager() == "grid"
        assert ana.window.answer_text.get() == "↪ Replying to Luis: ¿Vamos al cine?"
        ana.type("yes")
        ana.press("<Return>")
        assert ana.window.answer_bar.winfo_manager() == ""  # gone once sent

        # Luis sees the quoted line above the reply.
        await wait_for(lambda: "↪ Luis: ¿Vamos al cine?\n" in luis.view_text(), "the quote")
        reply = await wait_for(lambda: message_line(luis, "yes"), "the reply")
        assert reply.reply_to == {"id": original.msg_id, "from": "Luis", "msg": "¿Vamos al cine?"}
        assert luis.view_text().splitlines()[-1].endswith("Ana: yes")

        # Clicking the quote scrolls to the original and highlights it.
        view = luis.window.views[GENERAL_KEY]
        view.text.yview_moveto(1.0)
        luis.top.update()
        start = view.text.tag_ranges("quote")[0]
        x, y, _w, h = view.text.bbox(start)
        # The pointer moves onto the quote, then clicks (Tk picks the tag
        # under the pointer on motion, as with a real mouse).
        view.text.event_generate("<Motion>", x=x + 4, y=y + h // 2)
        view.text.event_generate("<Button-1>", x=x + 4, y=y + h // 2)
        luis.top.update()
        flashed = view.text.tag_ranges("flash")
        assert flashed and "¿Vamos al cine?" in view.text.get(flashed[0], flashed[1])

        # Ctrl+R answers the newest message of someone else; Escape cancels.
        luis.press("<Control-r>")
        assert luis.window.replying is reply
        assert luis.window.answer_text.get() == "↪ Replying to Ana: yes"
        luis.press("<Escape>")
        assert luis.window.replying is None and luis.window.answer_bar.winfo_manager() == ""
    finally:
        await ana.close()
        await luis.close()


@pytest_twisted.ensureDeferred
async def test_edit_with_up_and_delete_from_the_menu_in_spanish(tk_root, chat_server):
    i18n.install("es")
    ana = GuiClient(tk_root, chat_server.port, "Ana")
    luis = GuiClient(tk_root, chat_server.port, "Luis", x=400)
    try:
        await ana.online()
        await luis.online()
        ana.type("a las 8")
        ana.press("<Return>")
        await wait_for(lambda: message_line(ana, "a las 8"), "confirmed with its id")
        await wait_for(lambda: "Ana: a las 8" in luis.view_text(), "Luis reads it")

        # Up in the empty box puts the last own message there for editing.
        ana.press("<Up>")
        assert ana.input_text() == "a las 8"
        assert ana.window.answer_text.get() == "✎ Editando tu mensaje (Esc para cancelar)"
        ana.press("<BackSpace>")
        ana.type("9")
        ana.press("<Return>")
        for client in (ana, luis):
            await wait_for(lambda c=client: "Ana: a las 9 (editado)" in c.view_text(), "edited mark")
            assert "a las 8" not in client.view_text()
        assert ana.input_text() == ""

        # The context menu of someone else's message has no Edit or Delete.
        mine = message_line(luis, "a las 9")
        right_click(luis, GENERAL_KEY, mine)
        menu = luis.window.menu
        assert [menu.entrycget(i, "label") for i in range(menu.index("end") + 1)] == ["Responder"]
        menu.unpost()
        menu.grab_release()

        right_click(ana, GENERAL_KEY, message_line(ana, "a las 9"))
        choose(ana, "Borrar")
        for client in (ana, luis):
            await wait_for(lambda c=client: "Ana: (mensaje borrado)" in c.view_text(), "deleted")
    finally:
        await ana.close()
        await luis.close()


@pytest_twisted.ensureDeferred
async def test_connect_form_reaches_a_self_signed_tls_server_with_a_ca_file(tk_root, tmp_path):

    from tests.support import make_certificate, start_server

    key_pem, cert_pem = make_certificate(tmp_path)
    server = await start_server(listen=f"ssl:0:interface=127.0.0.1:privateKey={key_pem}:certKey={cert_pem}")
    port = server.port
    client = GuiClient(tk_root, port, None)
    form = client.window.form
    try:
        form.host.set("localhost")
        form.user.set("Ana")
        form.cafile.set(str(tmp_path / "missing.pem"))
        form.tls.set(True)
        form.button.invoke()
        assert form.error.get() == f"Cannot read the CA certificate {tmp_path / 'missing.pem'}."
        form.cafile.set(str(cert_pem))
        form.tls.set(False)
        form.button.invoke()
        assert form.error.get().startswith("A CA certificate is only used with TLS")
        assert client.model.state is ConnState.DISCONNECTED

        form.tls.set(True)
        form.button.invoke()
        await client.online()
        assert client.window.settings.cafile == str(cert_pem)
        assert client.session.address is not None and client.session.address.cafile == str(cert_pem)
    finally:
        await client.close()
        await server.stopService()


@pytest_twisted.ensureDeferred
async def test_the_window_remembers_its_size(tk_root):
    from twisted.internet import reactor

    from chatserv.client.config import load_settings

    top = tk.Toplevel(tk_root)
    top.geometry("777x555+0+0")
    window = ChatWindow(top, ChatSession(ChatModel(reactor), reactor), Settings(), save=True)
    try:
        await wait_for(lambda: (top.update() or top.winfo_width()) == 777, "the window is mapped")
        window.remember_size()
        assert load_settings().geometry == "777x555"
    finally:
        window.close()
        top.destroy()


@pytest_twisted.ensureDeferred
async def test_large_room_shows_count_and_first_page_then_loads_more_on_scroll(tk_root, chat_server):
    from tests.protocol_support import Silent

    for i in range(1200):
        chat_server.hub.login(Silent(), f"m{i:04d}")
    ana = GuiClient(tk_root, chat_server.port, "Ana")
    try:
        await ana.online()
        users = ana.window.users
        await wait_for(lambda: ana.window.users_label.cget("text") == "Online (1201)", "member count")
        ana.top.update()
        first = users.size()
        assert 0 < first < 1201, "a large room's whole list was loaded at login"
        assert users.get(0) == "Ana"  # case-folded order, as the server pages it
        users.yview_moveto(1.0)
        ana.top.update()
        await wait_for(lambda: users.size() > first, "the next page after scrolling to the end")
        assert users.get(first) == ana.model.conversations[GENERAL_KEY].members[first]
        assert ana.window.users_label.cget("text") == "Online (1201)"
    finally:
        await ana.close()
