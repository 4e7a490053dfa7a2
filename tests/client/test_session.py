"""The client session against scripted server frames (no display, no sockets).

The frames here are the ones docs/PROTOCOL.md shows; the live tests in
test_live.py check the same paths against the real server.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from chatserv.client import i18n
from chatserv.client.model import (
    GENERAL_KEY,
    TYPING_SHOWN_FOR,
    ChatModel,
    ConnState,
    ConvKey,
    LineKind,
    SendState,
)
from chatserv.client.network import ChatLineProtocol
from chatserv.client.outbox import FLUSH_BATCH
from chatserv.client.session import BUSY_RETRY, ChatSession, Credentials
from tests.client.support import FailureLog

#: What the client asks for at every login.
FEATURES = ["sent", "lazy_members"]


class Harness:
    """A session wired to a protocol on a StringTransport, on a fake clock."""

    def __init__(self, user: str = "Ana", **creds: Any) -> None:
        i18n.install("en")
        self.clock = Clock()
        self.model = ChatModel(self.clock)
        self.session = ChatSession(self.model, self.clock)
        self.session.creds = Credentials(user, **creds)
        self.model.me = user
        self.recorder = FailureLog()
        self.model.subscribe(self.recorder)
        self.proto: ChatLineProtocol | None = None
        self.transport: StringTransport | None = None

    def connect(self) -> None:
        self.proto = ChatLineProtocol(self.session, self.clock)
        self.transport = StringTransport()
        self.proto.makeConnection(self.transport)

    def drop(self) -> None:
        assert self.proto is not None
        self.proto.connectionLost(Failure(ConnectionError("gone")))
        self.proto = None

    def sent(self, cids: bool = False) -> list[dict[str, Any]]:
        """The frames sent since the last call; without their ``cid`` (each
        message's own client id) unless *cids*."""
        assert self.transport is not None
        data = self.transport.value()
        self.transport.clear()
        frames = [json.loads(line) for line in data.splitlines()]
        if not cids:
            for frame in frames:
                frame.pop("cid", None)
        return frames

    def recv(self, **frame: Any) -> None:
        assert self.proto is not None
        self.proto.dataReceived(json.dumps(frame).encode() + b"\r\n")

    def login(self, users: list[str] | None = None, items: list[dict[str, Any]] | None = None) -> None:
        self.connect()
        assert self.sent() == [{"cmd": "login", "user": self.model.me, "features": FEATURES}]
        self.recv(cmd="history", room="general", items=items or [])
        self.recv(cmd="users", room="general", list=users or [self.model.me])
        assert self.model.state is ConnState.ONLINE

    def general(self) -> list[tuple[str, str | None, str]]:
        return [(ln.kind.value, ln.sender, ln.text) for ln in self.model.conversations[GENERAL_KEY].lines]


def test_login_then_history_shown_first_and_marked():
    h = Harness()
    item = {"id": 1, "time": "10:30:15", "room": "general", "from": "Luis", "msg": "Buenos días"}
    h.login(users=["Luis", "Ana"], items=[item])
    assert h.general() == [("info", None, "Earlier messages"), ("history", "Luis", "Buenos días")]
    assert h.model.conversations[GENERAL_KEY].lines[1].time == "10:30:15"
    assert h.model.online() == ["Luis", "Ana"]
    # rooms are probed once logged in; a server without them just says unknown_cmd
    assert h.sent() == [{"cmd": "rooms"}]
    h.recv(cmd="error", code="unknown_cmd", msg="?", ref="rooms")
    assert h.model.rooms_supported is False


def test_broadcast_echo_confirms_own_line_without_doubling_it():
    h = Harness()
    h.login()
    h.sent()
    line = h.session.send(GENERAL_KEY, "¡Hola a todos!\n")
    assert line is not None and line.state is SendState.SENDING
    assert h.sent() == [{"cmd": "broadcast", "msg": "¡Hola a todos!"}]
    h.recv(cmd="broadcast", id=2, time="10:31:02", room="general", **{"from": "Ana"}, msg="¡Hola a todos!")
    assert line.state is SendState.SENT and line.time == "10:31:02" and line.msg_id == 2
    assert h.general() == [("message", "Ana", "¡Hola a todos!")]
    assert h.session.outbox == []


def test_multiline_text_is_sent_as_written():
    h = Harness()
    h.login()
    h.sent()
    h.session.send(GENERAL_KEY, "  uno\n\n  dos\n")
    assert h.sent() == [{"cmd": "broadcast", "msg": "  uno\n\n  dos"}]


def test_private_confirmed_by_ping_barrier_and_tab_opened_on_arrival():
    h = Harness()
    h.login(users=["Ana", "Luis"])
    h.sent()
    key = h.session.open_private("luis")
    line = h.session.send(key, "¿Vamos al cine?")
    assert h.sent() == [
        {"cmd": "message", "to": "luis", "msg": "¿Vamos al cine?"},
        {"cmd": "ping", "data": "ack:1"},
    ]
    h.recv(cmd="pong", data="ack:1")
    assert line is not None and line.state is SendState.SENT
    # an incoming private opens (or reuses) the tab, titled as its owner writes it
    h.model.set_active(GENERAL_KEY)
    h.recv(cmd="private", id=3, time="10:32:00", to="Ana", msg="¡Sí!", **{"from": "Luis"})
    conv = h.model.conversations[ConvKey.private("Luis")]
    assert conv.title == "Luis" and conv.unread == 1 and h.model.total_unread() == 1
    h.model.set_active(conv.key)
    assert conv.unread == 0 and h.model.total_unread() == 0


def test_private_to_offline_user_is_held_until_they_return():
    h = Harness()
    h.login(users=["Ana", "Luis"])
    h.sent()
    key = h.session.open_private("Luis")
    line = h.session.send(key, "hola")
    h.sent()
    h.recv(cmd="error", code="no_such_user", msg="no", ref="message")
    assert line is not None and line.state is SendState.HELD and "Luis" in line.note
    h.recv(cmd="users", room="general", list=["Ana"])
    assert h.sent() == []
    h.recv(cmd="users", room="general", list=["Ana", "Luis"])
    assert h.sent() == [{"cmd": "message", "to": "Luis", "msg": "hola"}, {"cmd": "ping", "data": "ack:2"}]


def test_offline_outbox_kept_and_sent_after_relogin_without_duplicates():
    h = Harness()
    h.login(users=["Ana", "Luis"])
    h.sent()
    in_flight = h.session.send(GENERAL_KEY, "en vuelo")
    lost = h.session.send(GENERAL_KEY, "perdido")
    h.drop()
    assert h.model.state is ConnState.CONNECTING
    assert in_flight is not None and in_flight.state is SendState.QUEUED
    assert lost is not None and lost.state is SendState.QUEUED
    offline = h.session.send(GENERAL_KEY, "escrito sin conexión")
    assert offline is not None and offline.state is SendState.QUEUED
    assert ("info", None, "Connection to the server lost.") in h.general()

    h.connect()
    assert h.sent() == [{"cmd": "login", "user": "Ana", "features": FEATURES}]
    # the server got "en vuelo" before the drop: history says so
    h.recv(cmd="history", room="general", items=[
        {"id": 7, "time": "11:00:00", "room": "general", "from": "Ana", "msg": "en vuelo"},
    ])
    assert in_flight.state is SendState.SENT and in_flight.msg_id == 7
    h.recv(cmd="users", room="general", list=["Ana", "Luis"])
    assert h.sent() == [
        {"cmd": "rooms"},
        {"cmd": "broadcast", "msg": "perdido"},
        {"cmd": "broadcast", "msg": "escrito sin conexión"},
    ]
    texts = [text for _k, _s, text in h.general()]
    assert texts.count("en vuelo") == 1 and "Reconnected." in texts


def test_long_offline_queue_is_paced_under_the_rate_limit():
    h = Harness()
    h.connect()
    for i in range(FLUSH_BATCH + 3):
        h.session.send(GENERAL_KEY, f"m{i}")
    h.sent()
    h.recv(cmd="history", room="general", items=[])
    h.recv(cmd="users", room="general", list=["Ana"])
    first = [f for f in h.sent() if f["cmd"] == "broadcast"]
    assert len(first) == FLUSH_BATCH
    h.clock.advance(2.5)
    assert [f["msg"] for f in h.sent()] == [f"m{i}" for i in range(FLUSH_BATCH, FLUSH_BATCH + 3)]


def test_rate_limited_message_is_retried_not_dropped():
    h = Harness()
    h.login()
    h.sent()
    line = h.session.send(GENERAL_KEY, "rápido")
    h.sent()
    h.recv(cmd="error", code="rate_limited", msg="slow down", ref="broadcast")
    assert line is not None and line.state is SendState.QUEUED
    h.clock.advance(2)
    assert h.sent() == [{"cmd": "broadcast", "msg": "rápido"}]


def test_name_taken_on_first_login_returns_to_form():
    h = Harness()
    h.connect()
    h.sent()
    h.recv(cmd="error", code="name_taken", msg="en uso", ref="login")
    assert h.model.state is ConnState.DISCONNECTED
    assert h.recorder.failures == ["The name Ana is already in use. Choose another one."]


def test_name_taken_after_reconnect_is_retried():
    h = Harness()
    h.login()
    h.drop()
    h.connect()
    h.sent()
    h.recv(cmd="error", code="name_taken", msg="en uso", ref="login")
    assert h.recorder.failures == []
    h.clock.advance(2.5)
    assert h.sent() == [{"cmd": "login", "user": "Ana", "features": FEATURES}]


def test_server_pings_are_answered():
    h = Harness()
    h.login()
    h.sent()
    h.recv(cmd="ping")
    assert h.sent() == [{"cmd": "pong"}]
    assert h.recorder.failures == []


def test_a_busy_server_is_asked_again_later():
    h = Harness(password="secreto123", register=True)
    h.connect()
    h.sent()
    h.recv(cmd="error", code="server_busy", msg="ocupado", ref="register")
    assert h.recorder.failures == []
    h.clock.advance(BUSY_RETRY)
    assert h.sent() == [{"cmd": "register", "user": "Ana", "password": "secreto123"}]
    h.recv(cmd="registered", user="Ana")
    h.sent()
    h.recv(cmd="error", code="server_busy", msg="ocupado", ref="login")
    h.clock.advance(BUSY_RETRY)
    assert h.sent() == [{"cmd": "login", "user": "Ana", "features": FEATURES, "password": "secreto123"}]


def test_register_then_login_and_servers_without_accounts():
    h = Harness(password="secreto123", register=True)
    h.connect()
    assert h.sent() == [{"cmd": "register", "user": "Ana", "password": "secreto123"}]
    h.recv(cmd="registered", user="Ana")
    assert h.sent() == [{"cmd": "login", "user": "Ana", "features": FEATURES, "password": "secreto123"}]

    old = Harness(password="secreto123", register=True)
    old.connect()
    old.sent()
    old.recv(cmd="error", code="unknown_cmd", msg="?", ref="register")
    assert old.recorder.failures == ["This server has no accounts: connect without creating one."]


def test_typing_sent_at_most_every_three_seconds():
    h = Harness()
    h.login(users=["Ana", "Luis"])
    h.sent()
    for _ in range(5):
        h.session.user_typing(GENERAL_KEY)
        h.clock.advance(0.5)
    assert h.sent() == [{"cmd": "typing"}]
    h.clock.advance(1)
    h.session.user_typing(GENERAL_KEY)
    assert h.sent() == [{"cmd": "typing"}]
    key = h.session.open_private("Luis")
    h.session.user_typing(key)
    assert h.sent() == [{"cmd": "typing", "to": "Luis"}]


def test_peer_typing_shown_then_expires_and_cleared_by_message():
    h = Harness()
    h.login(users=["Ana", "Luis"])
    h.recv(cmd="typing", user="Luis")
    general = h.model.conversations[GENERAL_KEY]
    assert general.typing_names() == ["Luis"]
    h.clock.advance(TYPING_SHOWN_FOR - 1)
    h.recv(cmd="typing", user="Luis")  # refreshes
    h.clock.advance(TYPING_SHOWN_FOR - 1)
    assert general.typing_names() == ["Luis"]
    h.clock.advance(1.5)
    assert general.typing_names() == []
    h.recv(cmd="typing", user="Luis")
    h.recv(cmd="broadcast", room="general", msg="ya", **{"from": "Luis"})
    assert general.typing_names() == []
    # our own typing is never shown, private typing needs an open tab
    h.recv(cmd="typing", user="ana")
    h.recv(cmd="typing", user="Eva", private=True)
    assert general.typing_names() == [] and ConvKey.private("Eva") not in h.model.conversations


def test_system_notices_in_the_interface_language():
    h = Harness()
    h.login(users=["Ana"])
    h.session.open_private("Luis")
    h.recv(cmd="system", room="general", msg="Luis se ha unido al chat", event="join", users=["Luis"])
    h.recv(cmd="system", msg="Eva y Luis han abandonado el chat", event="leave", users=["Eva", "Luis"])
    h.recv(cmd="system", msg="Texto libre del servidor")
    assert h.general()[-3:] == [
        ("system", None, "Luis joined the chat"),
        ("system", None, "Eva and Luis left the chat"),
        ("system", None, "Texto libre del servidor"),
    ]
    private = h.model.conversations[ConvKey.private("Luis")]
    assert [ln.text for ln in private.lines] == ["Luis joined the chat", "Eva and Luis left the chat"]
    i18n.install("es")
    try:
        h.recv(cmd="system", event="join", users=["Eva", "Luis"], msg="x")
        assert h.general()[-1] == ("system", None, "Eva y Luis se han unido al chat")
    finally:
        i18n.install("en")


def test_errors_are_readable_and_unknown_frames_ignored():
    h = Harness()
    h.login()
    h.proto.dataReceived(b"not json\n[1,2]\n{\"cmd\": 3}\n")  # type: ignore[union-attr]
    h.recv(cmd="future_thing", x=1)
    h.recv(cmd="error", code="not_logged_in", msg="Inicia sesión primero")
    h.recv(cmd="error", code="mystery", msg="Algo raro")
    errors = [ln.text for ln in h.model.conversations[GENERAL_KEY].lines if ln.kind is LineKind.ERROR]
    assert errors == ["Server error: You are not logged in yet.", "Server error: Algo raro"]


def test_rooms_joined_rejoined_and_refused_by_old_servers():
    h = Harness()
    h.login()
    h.recv(cmd="rooms", list=[{"name": "cine", "members": 2}])
    assert h.model.rooms_supported and h.model.room_list == [("cine", 2)]
    h.sent()
    key = h.session.join("Cine")
    assert h.sent() == [{"cmd": "join", "room": "Cine"}]
    h.session.send(key, "antes de entrar")
    assert h.sent() == []  # waits for the join's answer
    h.recv(cmd="history", room="cine", items=[])
    h.recv(cmd="users", room="cine", list=["Luis", "Ana"])
    assert h.sent() == [{"cmd": "broadcast", "msg": "antes de entrar", "room": "Cine"}]
    h.recv(cmd="typing", user="Luis", room="cine")
    assert h.model.conversations[key].typing_names() == ["Luis"]
    h.drop()
    h.connect()
    h.sent()
    h.recv(cmd="history", room="general", items=[])
    h.recv(cmd="users", room="general", list=["Ana"])
    assert {"cmd": "join", "room": "Cine"} in h.sent()

    old = Harness()
    old.login()
    old.sent()
    old.session.join("cine")
    old.recv(cmd="error", code="unknown_cmd", msg="?", ref="join")
    assert ConvKey.room("cine") not in old.model.conversations
    assert old.general()[-1] == ("error", None, "This server has no rooms.")


@pytest.mark.parametrize("lang, expected", [("es", "Enviar"), ("en", "Send")])
def test_language_switch(lang: str, expected: str) -> None:
    try:
        assert i18n.install(lang) == lang
        assert i18n._("Send") == expected
    finally:
        i18n.install("en")


def test_replies_edits_and_deletes_from_the_session():
    h = Harness()
    h.login(users=["Ana", "Luis"])
    h.sent()
    h.recv(cmd="broadcast", id=7, time="10:00:00", room="general", msg="¿Vamos al cine?", **{"from": "Luis"})
    original = h.model.conversations[GENERAL_KEY].line_by_id(7)
    line = h.session.send(GENERAL_KEY, "¡Sí!", reply_to=original)
    assert h.sent() == [{"cmd": "broadcast", "msg": "¡Sí!", "reply_to": 7}]
    assert line.reply_to == {"id": 7, "from": "Luis", "msg": "¿Vamos al cine?"}
    h.recv(cmd="broadcast", id=8, time="10:00:01", room="general", msg="¡Sí!", **{"from": "Ana"},
           reply_to={"id": 7, "from": "Luis", "msg": "¿Vamos al cine?"})
    assert line.msg_id == 8 and line.can_correct and not original.can_correct

    assert h.session.edit(line, "¡Sí, claro!")
    assert h.sent() == [{"cmd": "edit", "id": 8, "msg": "¡Sí, claro!"}]
    assert line.text == "¡Sí!"  # changed when the server says so
    h.recv(cmd="edited", id=8, time="10:00:05", room="general", msg="¡Sí, claro!", **{"from": "Ana"})
    assert line.text == "¡Sí, claro!" and line.edited
    h.recv(cmd="deleted", id=7, time="10:00:06", room="general", **{"from": "Luis"})
    assert original.deleted and original.text == "" and not original.can_reply

    # After a reconnect, history replays the corrected message: no second line.
    h.drop()
    h.connect()
    h.sent()
    h.recv(cmd="history", room="general", items=[
        {"id": 8, "time": "10:00:01", "room": "general", "from": "Ana", "msg": "¡Sí, claro! (bis)",
         "edited": "2026-11-29T10:01:00.000Z"},
    ])
    shown = [ln.text for ln in h.model.conversations[GENERAL_KEY].lines if ln.msg_id == 8]
    assert shown == ["¡Sí, claro! (bis)"]


def test_own_private_messages_learn_their_id_from_sent():
    h = Harness()
    h.login(users=["Ana", "Luis"])
    h.sent()
    key = h.session.open_private("Luis")
    line = h.session.send(key, "te espero")
    h.recv(cmd="sent", id=12, time="10:00:00", to="Luis", msg="te espero")
    assert line.msg_id == 12
    h.recv(cmd="edited", id=12, time="10:00:09", to="Luis", msg="te espero dentro", **{"from": "Ana"})
    assert line.text == "te espero dentro" and line.edited


# -- large rooms (lazy_members) ---------------------------------------------------


def test_large_room_first_page_count_and_paging_on_request():
    h = Harness()
    h.connect()
    h.sent()
    h.recv(cmd="history", room="general", items=[])
    first = [f"u{i:03d}" for i in range(200)]
    h.recv(cmd="users", room="general", list=first, count=900, more=True)
    general = h.model.conversations[GENERAL_KEY]
    assert h.model.state is ConnState.ONLINE
    assert general.member_count == 900 and general.members_more and general.members == first
    h.sent()
    h.session.more_members(GENERAL_KEY)
    h.session.more_members(GENERAL_KEY)  # one request in flight at a time
    assert h.sent() == [{"cmd": "members", "room": "general", "limit": 200, "after": "u199"}]
    h.recv(cmd="members", room="general", list=["u200", "u201"], count=900, more=False)
    assert general.members == first + ["u200", "u201"] and not general.members_more
    # Someone unknown is not shown offline while pages are missing; here the
    # list is complete, so they are.
    assert not h.model.is_online("zzz")


def test_large_room_presence_applies_count_and_names_and_reload():
    h = Harness()
    h.connect()
    h.sent()
    h.recv(cmd="history", room="general", items=[])
    h.recv(cmd="users", room="general", list=["Ana", "Bea", "Dani"], count=700, more=True)
    general = h.model.conversations[GENERAL_KEY]
    assert h.model.is_online("Nadie")  # may be in a page not loaded
    h.sent()
    h.recv(cmd="presence", room="general", joined=["Carla", "Zoe"], left=["Bea"], count=701)
    # Carla sorts among the loaded names; Zoe comes with a later page.
    assert general.members == ["Ana", "Carla", "Dani"] and general.member_count == 701
    h.recv(cmd="presence", room="general", joined=[], left=[], count=950, reload=True)
    assert h.sent() == [{"cmd": "members", "room": "general", "limit": 200}]
    h.recv(cmd="members", room="general", list=["Aaron", "Ana"], count=950, more=True)
    assert general.members == ["Aaron", "Ana"] and general.member_count == 950
