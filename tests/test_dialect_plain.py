"""The plain-text dialect (chatserv.dialects.plain) on a StringTransport connection."""

from __future__ import annotations

import pytest

from tests.protocol_support import World, plain


@pytest.fixture
def world() -> World:
    return World()


# -- plain-text dialect ---------------------------------------------------------


def test_plain_first_line_name_and_text(world):
    luis = world.user("Luis")
    world.settle(luis)
    ana = plain(world, b"Ana: hola a todos\r\n")
    lines = ana.text()
    assert lines[0].startswith("* Hola, Ana.")
    assert lines[1:] == ["* En línea: Luis, Ana", "Ana: hola a todos"]
    system, users, broadcast = luis.frames()
    assert system["event"] == "join" and users["list"] == ["Luis", "Ana"]
    assert broadcast["cmd"] == "broadcast" and broadcast["from"] == "Ana"
    assert broadcast["msg"] == "hola a todos"


def test_plain_first_line_name_only(world):
    luis = world.user("Luis")
    world.settle(luis)
    ana = plain(world, b"  Ana  \n")
    lines = ana.text()
    assert lines[-1] == "* En línea: Luis, Ana"
    assert [f["cmd"] for f in luis.frames()] == ["system", "users"]


def test_plain_history_on_login(world):
    luis = world.user("Luis")
    luis.send(cmd="broadcast", msg="uno")
    luis.send(cmd="broadcast", msg="dos\ntres")
    world.clock.advance(0)
    lines = plain(world, b"Ana\n").text()
    assert lines[1].startswith("[") and lines[1][9:] == "] Luis: uno"
    assert lines[2][9:] == "] Luis: dos" and lines[3] == "  tres"
    assert lines[4] == "* En línea: Luis, Ana"


def test_plain_lines_and_own_name_prefix(world):
    luis = world.user("Luis")
    ana = plain(world, b"Ana\n")
    world.settle(luis, ana)
    ana.raw(b"hola\nAna: con prefijo\nana:sin espacio\nLuis: no es mi nombre\n\n   \nAna: \n")
    assert [f["msg"] for f in luis.frames()] == [
        "hola",
        "con prefijo",
        "sin espacio",
        "Luis: no es mi nombre",
    ]
    assert ana.text() == ["Ana: hola", "Ana: con prefijo", "Ana: sin espacio", "Ana: Luis: no es mi nombre"]


def test_plain_double_slash_escape(world):
    luis = world.user("Luis")
    ana = plain(world, b"Ana\n")
    world.settle(luis, ana)
    ana.raw(b"//shrug\nAna: //users\n")
    assert [f["msg"] for f in luis.frames()] == ["/shrug", "/users"]


def test_plain_users_command(world):
    world.user("Luis")
    ana = plain(world, b"Ana\n")
    ana.lines()
    ana.raw(b"/users\n")
    assert ana.text() == ["* En línea: Luis, Ana"]


def test_plain_msg_command(world):
    luis = world.user("Luis")
    eva = world.user("Eva")
    ana = plain(world, b"Ana\n")
    world.settle(luis, eva, ana)
    ana.raw(b"/msg luis hola   Luis\n")
    frame = luis.frame()
    assert frame["cmd"] == "private" and frame["from"] == "Ana" and frame["to"] == "Luis"
    assert frame["msg"] == "hola   Luis"
    assert eva.lines() == []
    assert ana.text() == ["[privado a Luis] Ana: hola   Luis"]
    luis.send(cmd="message", to="Ana", msg="qué\ntal")
    assert ana.text() == ["[privado] Luis: qué", "  tal"]


def test_plain_msg_errors(world):
    ana = plain(world, b"Ana\n")
    ana.lines()
    ana.raw(b"/msg\n/msg Luis\n/msg Nadie hola\n/nope\n")
    lines = ana.text()
    assert [line.split(":")[0] for line in lines] == [
        "* error bad_request",
        "* error bad_request",
        "* error no_such_user",
        "* error unknown_cmd",
    ]
    assert not ana.closing


def test_plain_quit(world):
    luis = world.user("Luis")
    ana = plain(world, b"Ana\n")
    world.settle(luis, ana)
    ana.raw(b"/quit\nnot sent\n")
    assert ana.closing
    system, users = luis.frames()
    assert system["event"] == "leave" and system["users"] == ["Ana"]
    ana.lose()
    assert luis.lines() == []


def test_plain_name_taken_retry(world):
    world.user("Ana")
    conn = plain(world, b"ana: hola\n")
    (line,) = conn.text()
    assert line.startswith("* error name_taken:")
    conn.raw(b"Ana Maria\n")
    (line,) = conn.text()
    assert line.startswith("* error bad_name:")
    conn.raw(b": hola\n")
    assert conn.text()[0].startswith("* error bad_name:")
    conn.raw(b"Anita: por fin\n")
    lines = conn.text()
    assert lines[0].startswith("* Hola, Anita.") and lines[-1] == "Anita: por fin"


def test_plain_receives_room_messages_and_notices(world):
    ana = plain(world, b"Ana\n")
    ana.lines()
    luis = world.user("Luis")
    assert ana.text() == ["Luis se ha unido al chat."]
    luis.send(cmd="broadcast", msg="hola\r\nqué tal\n")
    assert ana.text() == ["Luis: hola", "  qué tal", "  "]
    luis.lose()
    assert ana.text() == ["Luis ha abandonado el chat."]


def test_plain_invalid_utf8(world):
    luis = world.user("Luis")
    ana = plain(world, b"Ana\n")
    world.settle(luis, ana)
    ana.raw(b"caf\xe9\n")
    (line,) = ana.text()
    assert line.startswith("* error bad_json:")
    assert luis.lines() == []


def test_plain_control_characters_are_relayed_to_json_clients(world):
    luis = world.user("Luis")
    ana = plain(world, b"Ana\n")
    world.settle(luis, ana)
    ana.raw(b"a\x00b\x07c\td\n")
    assert luis.frame()["msg"] == "a\x00b\x07c\td"


def test_blank_first_lines_do_not_decide_the_mode(world):
    conn = world.connect()
    conn.raw(b"\n  \r\n\t\n")
    assert conn.lines() == []
    conn.raw(b'  {"cmd": "login", "user": "Ana"}\n')
    assert [f["cmd"] for f in conn.frames()] == ["history", "users"]


def test_a_json_client_sending_plain_text_gets_bad_json(world):
    ana = world.user("Ana")
    ana.raw(b"Ana: hola\n")
    assert ana.error()["code"] == "bad_json"


def test_plain_client_sending_json_posts_it_as_text(world):
    luis = world.user("Luis")
    ana = plain(world, b"Ana\n")
    world.settle(luis, ana)
    ana.raw(b'{"cmd": "broadcast", "msg": "x"}\n')
    assert luis.frame()["msg"] == '{"cmd": "broadcast", "msg": "x"}'
