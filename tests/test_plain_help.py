"""What a new plain-text (nc) user is told: /help, the welcome line, and how
to log in to a name that has an account."""

from __future__ import annotations

from chatserv.dialects.plain import PLAIN_HELP
from tests.protocol_support import World


def test_welcome_line_mentions_help_and_help_lists_the_commands():
    world = World()
    pepe = world.connect()
    pepe.raw(b"Pepe\n")
    welcome, online = pepe.text()
    assert "/help" in welcome and online == "* En línea: Pepe"
    pepe.raw(b"/help\n")
    lines = pepe.text()
    assert lines == list(PLAIN_HELP)
    for command in ("/msg NOMBRE texto", "/users", "/help", "/quit", "//"):
        assert any(command in line for line in lines), command
    assert not world.hub.rooms["general"].history  # nothing was posted


def test_help_before_login_says_how_to_log_in():
    world = World()
    pepe = world.connect()
    pepe.raw(b"/help\n")
    (line,) = pepe.text()
    assert "escribe tu nombre" in line
    assert world.hub.find("/help") is None and pepe.protocol.session is None
    pepe.raw(b"Pepe\n")
    assert pepe.text()[0].startswith("* Hola, Pepe.")


def test_senders_copy_of_a_private_message():
    """As docs/PROTOCOL.md lists it."""
    world = World()
    marta = world.user("Marta")
    ana = world.connect()
    ana.raw(b"Ana\n")
    world.settle(marta, ana)
    ana.raw(b"/msg Marta hola\n")
    assert ana.text() == ["[privado a Marta] Ana: hola"]
    assert marta.frame()["msg"] == "hola"
