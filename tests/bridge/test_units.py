"""The bridge's pure parts: formatting, placeholders, the pacer, the outbox,
options, and the reactor check."""

from __future__ import annotations

import json
from typing import Any

import pytest
from telegram import Message
from twisted.internet.task import Clock
from twisted.python import usage

from chatserv.bridge.aio import ReactorMismatch, require_asyncio_reactor
from chatserv.bridge.config import BridgeConfig, check_runtime
from chatserv.bridge.format import (
    clean_name,
    excerpt,
    message_body,
    render_line,
    reply_text,
    split_text,
    utf16_len,
)
from chatserv.bridge.outbox import Outbox, Pacer
from chatserv.tap import Options
from tests.bridge.fakebot import BOT, FakeBotAPI, parse_html


def tg_message(**fields: Any) -> Message:
    data = {
        "message_id": 1,
        "date": 0,
        "chat": {"id": -1, "type": "supergroup", "title": "g"},
        "from": FakeBotAPI.user(5, "Luis"),
    }
    data.update(fields)
    return Message.de_json(json.loads(json.dumps(data)), None)


def test_render_escapes_html():
    assert render_line("A<b>", "x & y < z > w") == "<b>A&lt;b&gt;</b>: x &amp; y &lt; z &gt; w"
    assert parse_html(render_line("Ana", '<i>not</i> & "q"')) == 'Ana: <i>not</i> & "q"'
    assert render_line(None, "aviso") == "<i>aviso</i>"


def test_split_keeps_every_character_and_fits():
    text = ("palabra " * 700 + "<&>" * 500 + "\n" + "😀" * 3000).strip()
    pieces = split_text("Ana", text, 4096)
    assert "".join(pieces) == text
    assert len(pieces) > 2
    for piece in pieces:
        html = render_line("Ana", piece)
        assert utf16_len(html) <= 4096
        assert utf16_len(parse_html(html)) <= 4096
    assert split_text("Ana", "corto", 4096) == ["corto"]


def test_split_prefers_spaces():
    pieces = split_text("A", "aaaa bbbb cccc dddd", 20)
    assert all(p.endswith(" ") for p in pieces[:-1])
    assert "".join(pieces) == "aaaa bbbb cccc dddd"


@pytest.mark.parametrize(
    "fields, body",
    [
        ({"text": "hola\nmundo"}, "hola\nmundo"),
        (
            {"photo": [{"file_id": "f", "file_unique_id": "u", "width": 1, "height": 1}], "caption": "mira"},
            "[foto] mira",
        ),
        ({"photo": [{"file_id": "f", "file_unique_id": "u", "width": 1, "height": 1}]}, "[foto]"),
        (
            {
                "sticker": {
                    "file_id": "f",
                    "file_unique_id": "u",
                    "width": 1,
                    "height": 1,
                    "is_animated": False,
                    "is_video": False,
                    "type": "regular",
                    "emoji": "😀",
                }
            },
            "[sticker 😀]",
        ),
        (
            {
                "document": {"file_id": "f", "file_unique_id": "u", "file_name": "informe.pdf"},
                "caption": "ahí va",
            },
            "[documento informe.pdf] ahí va",
        ),
        ({"voice": {"file_id": "f", "file_unique_id": "u", "duration": 3}}, "[audio de voz]"),
        ({"location": {"latitude": 40.4168, "longitude": -3.7038}}, "[ubicación 40.41680,-3.70380]"),
        (
            {
                "animation": {"file_id": "f", "file_unique_id": "u", "width": 1, "height": 1, "duration": 1},
                "document": {"file_id": "f", "file_unique_id": "u"},
            },
            "[GIF]",
        ),
        ({"new_chat_members": [FakeBotAPI.user(9, "Eva")]}, None),
    ],
)
def test_message_body_and_placeholders(fields, body):
    assert message_body(tg_message(**fields)) == body


def test_names_and_excerpts():
    assert clean_name("  Luis \n\t García\u200b ") == "Luis García"
    assert clean_name("x" * 50) == "x" * 32
    assert excerpt("una línea\nla segunda") == "una línea…"
    assert excerpt("a" * 100) == "a" * 40 + "…"
    assert reply_text("Ana", "hola", "sí") == "(respuesta a Ana: «hola») sí"


def test_pacer_window_and_burst():
    pacer = Pacer(20, 60.0, burst=3)
    now = 0.0
    times = []
    for _ in range(25):
        now += pacer.delay(now)
        pacer.record(now)
        times.append(now)
    assert times[:3] == [0.0, 0.0, 0.0]
    # then evenly spaced at 20 a minute
    assert times[3] == pytest.approx(3.0)
    # never more than 20 in any 60 s
    for i in range(len(times) - 20):
        assert times[i + 20] - times[i] >= 60.0 - 1e-9


def test_outbox_coalesces_in_order_within_limit():
    box = Outbox(max_entries=1000, max_length=200)
    for i in range(50):
        box.add(i, "Ana", f"línea {i}")
    got = []
    while (batch := box.batch()) is not None:
        assert utf16_len(batch.html) <= 200
        assert len(batch.entries) > 1
        got.extend(e.chat_id for e in batch.entries)
        box.done(batch)
    assert got == list(range(50))


def test_outbox_bound_drops_oldest_and_says_so():
    box = Outbox(max_entries=3, max_length=4096)
    dropped = []
    for i in range(5):
        dropped += box.add(i, "Ana", str(i))[1]
    assert [e.chat_id for e in dropped] == [0, 1]
    batch = box.batch()
    assert batch is not None
    assert parse_html(batch.html).split("\n") == [
        "[2 mensajes del chat no han llegado a Telegram: cola llena]",
        "Ana: 2",
        "Ana: 3",
        "Ana: 4",
    ]
    box.done(batch)
    assert box.dropped == 0 and box.batch() is None


def test_reactor_check():
    with pytest.raises(ReactorMismatch, match="asyncio reactor"):
        require_asyncio_reactor(Clock())
    with pytest.raises(SystemExit, match="^chatserv: .*twistd -n -r asyncio"):
        check_runtime(Clock())
    from twisted.internet import reactor

    require_asyncio_reactor(reactor)


def parse(args: list[str]) -> Options:
    options = Options()
    options.parseOptions(args)
    return options


def test_options(monkeypatch, tmp_path):
    monkeypatch.delenv("TELEGRAM_BOT_TOKEN", raising=False)
    assert parse([]).config().telegram is None
    with pytest.raises(SystemExit, match="TELEGRAM_BOT_TOKEN"):
        parse(["--telegram-chat", "-100"])
    with pytest.raises(SystemExit, match="need --telegram-chat"):
        parse(["--telegram-room", "x"])
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", "1:env")
    config = (
        parse(["--telegram-chat", "-100", "--telegram-notices", "--telegram-room", "tg"]).config().telegram
    )
    assert isinstance(config, BridgeConfig)
    assert (config.chat_id, config.token, config.room, config.notices) == (-100, "1:env", "tg", True)
    assert config.marker == " (TG)" and config.api_url == "https://api.telegram.org/bot"
    assert "1:env" not in repr(config)
    token_file = tmp_path / "token"
    token_file.write_text("1:file\n")
    config = parse(["--telegram-chat", "-5", "--telegram-token-file", str(token_file)]).config().telegram
    assert config.token == "1:file"
    with pytest.raises(SystemExit, match="--telegram-room"):
        parse(["--telegram-chat", "-5", "--telegram-room", "dos palabras"])


def test_cluster_options_reach_the_bridge(monkeypatch):
    """The bridge reads --cluster, --cluster-name and --db where the options
    define them (chatserv.tap's cluster options), and needs PostgreSQL then."""
    from chatserv.bridge.cluster import ClusteredBridge, build_bridge
    from chatserv.bridge.config import config_from_options
    from chatserv.hub import Hub

    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", "4242:env")
    options = parse(["--telegram-chat", "-100"])
    assert options.config().telegram.cluster_url is None
    options.update({"cluster": "redis://127.0.0.1:6379/0", "cluster-name": "dos", "db": "postgresql://x@h/db"})
    config = config_from_options(options)
    assert config is not None
    assert (config.cluster_url, config.cluster_name, config.db_url) == (
        "redis://127.0.0.1:6379/0",
        "dos",
        "postgresql://x@h/db",
    )
    assert config.bot_id == "4242"
    assert isinstance(build_bridge(config, Hub(Clock()), Clock()), ClusteredBridge)
    options["db"] = "chat.sqlite3"
    with pytest.raises(usage.UsageError, match="PostgreSQL"):
        config_from_options(options)


def test_checking_the_cluster_options_installs_no_reactor():
    """``twistd chatserv --cluster … --telegram-chat …`` without ``-r``: the
    bridge installs the asyncio reactor after the options are checked, so
    checking --cluster must not import txredisapi (which installs the
    default one). In a fresh interpreter: this one has its reactor."""
    import os
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from chatserv.tap import Options\n"
        "Options().parseOptions(['--db', 'postgresql://x@h/db', '--cluster', 'redis://127.0.0.1:6379/0',"
        " '--telegram-chat', '-100'])\n"
        "print('twisted.internet.reactor' in sys.modules)\n"
    )
    env = {**os.environ, "TELEGRAM_BOT_TOKEN": "4242:env"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "False", done.stdout + done.stderr


def test_fake_bot_identity():
    # The fake's getMe answer must parse as a real User.
    from telegram import User

    assert User.de_json(BOT, None).username == "chatserv_bridge_bot"


def test_several_chats_on_the_command_line(monkeypatch):
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", "1:env")
    config = parse(["--telegram-chat", "-100", "--telegram-chat", "-200=cine"]).config().telegram
    assert config.chats() == [(-100, "general"), (-200, "cine")]
    args = ["--telegram-room", "sala", "--telegram-chat", "-1", "--telegram-chat", "-2=b"]
    config = parse(args).config().telegram
    assert config.chats() == [(-1, "sala"), (-2, "b")]
    for args, why in (
        (["--telegram-chat", "-1", "--telegram-chat", "-1=otra"], "same chat"),
        (["--telegram-chat", "-1", "--telegram-chat", "-2"], "room of its own"),
        (["--telegram-chat", "-1=Cine", "--telegram-chat", "-2=cine"], "room of its own"),
        (["--telegram-chat", "grupo"], "not a chat id"),
        (["--telegram-chat", "-1="], "room is empty"),
        (["--telegram-chat", "-1=dos palabras"], "ID=dos palabras"),
    ):
        with pytest.raises(SystemExit, match=why):
            parse(args)


def test_a_corrected_line_changes_in_the_queue():
    outbox = Outbox(10, 4096)
    outbox.add(1, "Ana", "uno")
    outbox.add(2, "Ana", "dos")
    assert outbox.replace(1, "Ana", "uno, corregido") == ([], [outbox.entries[0]])
    assert outbox.entries[0].text == "uno, corregido"
    removed, added = outbox.replace(2, "Ana", None)
    assert [e.text for e in removed] == ["dos"] and added == []
    assert outbox.replace(3, "Ana", "x") is None
    # A reply to a Telegram message goes out as a message of its own.
    outbox.add(4, "Ana", "cuatro", reply_tg=77)
    outbox.add(5, "Ana", "cinco")
    first = outbox.batch()
    assert [e.chat_id for e in first.entries] == [1] and first.reply_tg is None
    outbox.done(first)
    second = outbox.batch()
    assert [e.chat_id for e in second.entries] == [4] and second.reply_tg == 77
