"""Display-free tests of the client's smaller parts: line protocol, model,
catalogs, settings."""

from __future__ import annotations

import gettext
import json

import pytest
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from chatserv.client import i18n
from chatserv.client.config import Settings, load_settings, save_settings
from chatserv.client.model import (
    GENERAL_KEY,
    ChatModel,
    ConvKey,
    Line,
    LineKind,
    fold,
)
from chatserv.client.msgfmt import DOMAIN, LOCALE_DIR, extract_messages, make_mo, parse_po, po_files
from chatserv.client.network import (
    DEAD_AFTER,
    KEEPALIVE_INTERVAL,
    ChatLineProtocol,
    clean_text,
    encode_frame,
)


class Frames:
    def __init__(self) -> None:
        self.frames: list[dict] = []
        self.made = 0
        self.lost = 0

    def connection_made(self, conn: ChatLineProtocol) -> None:
        self.made += 1

    def frame_received(self, conn: ChatLineProtocol, frame: dict) -> None:
        self.frames.append(frame)

    def connection_lost(self, conn: ChatLineProtocol, reason: object) -> None:
        self.lost += 1


def make_protocol() -> tuple[ChatLineProtocol, StringTransport, Frames, Clock]:
    clock = Clock()
    handler = Frames()
    proto = ChatLineProtocol(handler, clock)
    transport = StringTransport()
    proto.makeConnection(transport)
    return proto, transport, handler, clock


def test_protocol_frames_in_and_out():
    proto, transport, handler, _clock = make_protocol()
    proto.send_frame({"cmd": "broadcast", "msg": "año\nnuevo 🎉"})
    line = transport.value()
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert json.loads(line) == {"cmd": "broadcast", "msg": "año\nnuevo 🎉"}
    # split across packets, CRLF, several per packet, garbage in between
    proto.dataReceived(b'{"cmd":"users","li')
    proto.dataReceived(b'st":["Ana"]}\r\n\nnot json\n\xff\xfe\n"x"\n{"cmd":"pong"}\n')
    assert handler.frames == [{"cmd": "users", "list": ["Ana"]}, {"cmd": "pong"}]
    assert proto.pong_seen


def test_keepalive_pings_quiet_servers_and_drops_dead_ones():
    proto, transport, handler, clock = make_protocol()
    clock.advance(KEEPALIVE_INTERVAL)
    assert json.loads(transport.value()) == {"cmd": "ping", "data": "keepalive"}
    proto.dataReceived(b'{"cmd":"pong","data":"keepalive"}\n')
    transport.clear()
    # a server that once answered and then falls silent is given up on
    for _ in range(int(DEAD_AFTER // KEEPALIVE_INTERVAL) + 2):
        clock.advance(KEEPALIVE_INTERVAL)
    assert transport.disconnecting


def test_clean_text_joins_surrogate_pairs_and_replaces_lone_ones():
    assert clean_text("a\ud83c\udf89b") == "a🎉b"
    assert clean_text("x\ud800y") == "x\ufffdy"
    assert encode_frame({"msg": "ñ"}) == '{"msg":"ñ"}'.encode()


def test_model_unread_and_active():
    model = ChatModel(Clock())
    luis = model.conversation(ConvKey.private("Luis"), "Luis")
    model.add_line(luis, Line(LineKind.MESSAGE, "hola", sender="Luis"))
    model.add_line(luis, Line(LineKind.SYSTEM, "Luis se ha unido"))
    model.add_line(luis, Line(LineKind.MESSAGE, "mío", sender="Ana", own=True))
    model.add_line(model.conversations[GENERAL_KEY], Line(LineKind.HISTORY, "viejo", sender="Eva"))
    assert luis.unread == 1 and model.total_unread() == 1
    assert luis.lines[0].time  # stamped when the server did not
    model.set_active(luis.key)
    assert luis.unread == 0
    model.remove(luis.key)
    assert model.active == GENERAL_KEY
    model.remove(GENERAL_KEY)
    assert GENERAL_KEY in model.conversations


def test_names_fold_like_the_server():
    assert fold("ＡＮＡ") == fold("ana") == "ana"
    assert ConvKey.private("Ana") == ConvKey.private("ＡＮＡ")


def test_compiled_catalogs_match_their_sources():
    files = po_files()
    assert {p.parent.parent.name for p in files} == set(i18n.LANGUAGES)
    for po in files:
        mo = po.with_suffix(".mo")
        assert mo.read_bytes() == make_mo(parse_po(po.read_text("utf-8"))), (
            f"{mo} is stale: run python -m chatserv.client.msgfmt"
        )


def test_every_interface_string_is_translated():
    wanted = extract_messages()
    assert len(wanted) > 40
    for po in po_files():
        catalog = parse_po(po.read_text("utf-8"))
        missing = sorted(wanted - set(catalog))
        assert not missing, f"{po.parent.parent.name} lacks {missing}"
        for msgid, msgstr in catalog.items():
            for placeholder in ("{user}", "{names}", "{n}", "{server}", "{room}", "{reason}"):
                if placeholder in msgid:
                    assert placeholder in msgstr, (po, msgid)
    with (LOCALE_DIR / "es" / "LC_MESSAGES" / f"{DOMAIN}.mo").open("rb") as mo:
        es = gettext.GNUTranslations(mo)
    assert es.ngettext("{names} is typing…", "{names} are typing…", 2) == "{names} están escribiendo…"


@pytest.mark.parametrize(
    "env, expected",
    [({"LANG": "es_MX.UTF-8"}, "es"), ({"LANGUAGE": "fr:es", "LANG": "C"}, "es"),
     ({"LANG": "C.UTF-8"}, "en"), ({}, "en")],
)
def test_language_from_the_locale(monkeypatch, env, expected):
    for var in ("LANGUAGE", "LC_ALL", "LC_MESSAGES", "LANG"):
        monkeypatch.delenv(var, raising=False)
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    try:
        assert i18n.install(None) == expected
    finally:
        i18n.install("en")


def test_settings_round_trip_without_password(tmp_path):
    path = tmp_path / "chatserv" / "client.json"
    save_settings(Settings("chat.example", 2443, "Ana", True, True, "/etc/ca.pem", "900x700"), path)
    data = json.loads(path.read_text())
    assert data == {
        "host": "chat.example", "port": 2443, "user": "Ana", "tls": True,
        "cafile": "/etc/ca.pem", "geometry": "900x700",
    }
    assert load_settings(path) == Settings("chat.example", 2443, "Ana", True, False, "/etc/ca.pem", "900x700")
    path.write_text("{broken")
    assert load_settings(path) == Settings()
