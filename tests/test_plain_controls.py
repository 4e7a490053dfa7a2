"""Plain-text clients see C1 controls and Unicode line separators as U+FFFD
(issue 11, item 9), as docs/PROTOCOL.md says of control characters."""

from __future__ import annotations

from chatserv import wire
from tests.protocol_support import World

TRICKS = "\u0085\u009b31m\u2028\u2029\x1b[2K\x7f"


def test_c1_controls_and_line_separators_reach_plain_clients_as_replacement_characters():
    world = World()
    luis = world.user("Luis")
    ana = world.connect()
    ana.raw(b"Ana\n")
    world.settle(luis, ana)
    luis.send(cmd="broadcast", msg=f"a{TRICKS}b")
    (line,) = ana.text()
    assert line == "Luis: a\ufffd\ufffd31m\ufffd\ufffd\ufffd[2K\ufffdb"
    # JSON clients get the text exactly as sent.
    assert luis.frame()["msg"] == f"a{TRICKS}b"


def test_printable_text_is_left_alone():
    text = "ñandú ¡hola! € 日本語 \u00a0 \u00ad"
    assert wire.plain_line(text) == (text + "\n").encode("utf-8")
