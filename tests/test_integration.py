"""The protocol over real loopback sockets, with two and three clients.

Every clause of docs/PROTOCOL.md that a client can observe. "Nothing else
arrives" is checked with a barrier: a later broadcast that must be the very next
frame, since each connection's output keeps its order.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import pytest_twisted

from tests.support import LineClient, connect, make_certificate, sleep, start_server

TIME = re.compile(r"^\d\d:\d\d:\d\d$")
TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


@pytest_twisted.async_yield_fixture
async def custom():
    """Servers with non-default options, and clients of them; all torn down after."""
    servers: list[Any] = []
    made: list[LineClient] = []

    class Custom:
        async def server(self, **options: Any) -> Any:
            srv = await start_server(**options)
            servers.append(srv)
            return srv

        async def client(self, srv: Any) -> LineClient:
            client = await connect(srv)
            made.append(client)
            return client

    yield Custom()
    for client in made:
        client.close()
    for client in made:
        if client.connected:
            await client.closed
    for srv in servers:
        await srv.stopService()


async def together(make: Any, *names: str) -> list[LineClient]:
    """Log *names* in one after the other; return once everyone has seen them all."""
    made = []
    for name in names:
        client = await make()
        history, users = await client.login(name)
        assert users["list"] == list(names[: len(made) + 1])
        made.append(client)
    for client in made[:-1]:
        await client.expect("users", list=list(names))
    return made


async def barrier(sender: LineClient, *readers: LineClient, text: str = "barrier") -> None:
    """*sender* broadcasts *text*; it must be the next frame every reader gets."""
    sender.send(cmd="broadcast", msg=text)
    for reader in readers:
        frame = await reader.frame()
        assert frame["cmd"] == "broadcast" and frame["msg"] == text, frame


async def error(client: LineClient) -> dict[str, Any]:
    frame = await client.frame()
    assert frame["cmd"] == "error", frame
    assert isinstance(frame["msg"], str) and frame["msg"]
    return frame


# -- login, users, join and leave -----------------------------------------------


@pytest_twisted.ensureDeferred
async def test_login_answer(server, clients):
    ana = await clients()
    history, users = await ana.login("Ana")
    assert history == {"cmd": "history", "room": "general", "items": []}
    assert users == {"cmd": "users", "room": "general", "list": ["Ana"]}


@pytest_twisted.ensureDeferred
async def test_users_pushed_on_join_to_everyone(server, clients):
    ana, luis = await together(clients, "Ana", "Luis")
    eva = await clients()
    await eva.login("Eva")
    for client in (ana, luis):
        system = await client.frame()
        assert system == {
            "cmd": "system",
            "room": "general",
            "event": "join",
            "users": ["Eva"],
            "msg": "Eva se ha unido al chat",
        }
        users = await client.frame()
        assert users == {"cmd": "users", "room": "general", "list": ["Ana", "Luis", "Eva"]}
    await barrier(ana, ana, luis, eva)


@pytest_twisted.ensureDeferred
async def test_users_in_answer_to_users(server, clients):
    ana, luis = await together(clients, "Ana", "Luis")
    luis.send(cmd="users")
    assert await luis.frame() == {"cmd": "users", "room": "general", "list": ["Ana", "Luis"]}


@pytest.mark.parametrize("how", ["close", "abort"])
@pytest_twisted.ensureDeferred
async def test_users_pushed_on_leave_and_abrupt_disconnect(server, clients, how):
    ana, luis, eva = await together(clients, "Ana", "Luis", "Eva")
    if how == "close":
        luis.transport.loseConnection()
    else:
        luis.transport.abortConnection()
    await luis.closed
    for client in (ana, eva):
        system = await client.frame()
        assert system == {
            "cmd": "system",
            "room": "general",
            "event": "leave",
            "users": ["Luis"],
            "msg": "Luis ha abandonado el chat",
        }
        assert await client.frame() == {"cmd": "users", "room": "general", "list": ["Ana", "Eva"]}
    # The name is free again at once.
    again = await clients()
    await again.login("luis")
    await ana.expect("users", list=["Ana", "Eva", "luis"])


@pytest_twisted.ensureDeferred
async def test_presence_feature(server, clients):
    ana = await clients()
    await ana.login("Ana", features=["presence"])
    luis = await clients()
    await luis.login("Luis")
    assert await ana.frame() == {"cmd": "presence", "room": "general", "joined": ["Luis"], "left": []}
    luis.close()
    assert await ana.frame() == {"cmd": "presence", "room": "general", "joined": [], "left": ["Luis"]}


# -- broadcast, private, typing -----------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_broadcast_reaches_all_sender_included(server, clients):
    ana, luis, eva = await together(clients, "Ana", "Luis", "Eva")
    luis.send(cmd="broadcast", msg="¡Hola a todos!")
    frames = [await c.frame() for c in (ana, luis, eva)]
    assert frames[0] == frames[1] == frames[2]
    frame = frames[0]
    assert frame["cmd"] == "broadcast" and frame["from"] == "Luis" and frame["msg"] == "¡Hola a todos!"
    assert frame["room"] == "general" and isinstance(frame["id"], int)
    assert TIME.match(frame["time"]) and TS.match(frame["ts"])


@pytest_twisted.ensureDeferred
async def test_broadcast_bytes_identical_for_every_recipient(server, clients):
    ana, luis, eva = await together(clients, "Ana", "Luis", "Eva")
    ana.send(cmd="broadcast", msg="mismos bytes")
    lines = [await c.line() for c in (ana, luis, eva)]
    assert lines[0] == lines[1] == lines[2]


@pytest_twisted.ensureDeferred
async def test_private_reaches_only_its_recipient(server, clients):
    ana, luis, eva = await together(clients, "Ana", "Luis", "Eva")
    ana.send(cmd="message", to="LUIS", msg="¿Vamos al cine?")
    frame = await luis.frame()
    assert frame["cmd"] == "private"
    assert (frame["from"], frame["to"], frame["msg"]) == ("Ana", "Luis", "¿Vamos al cine?")
    assert isinstance(frame["id"], int) and TIME.match(frame["time"]) and TS.match(frame["ts"])
    await barrier(ana, ana, eva, luis)


@pytest_twisted.ensureDeferred
async def test_private_sent_feature(server, clients):
    ana = await clients()
    await ana.login("Ana", features=["sent"])
    luis = await clients()
    await luis.login("Luis")
    await ana.expect("users", list=["Ana", "Luis"])
    ana.send(cmd="message", to="Luis", msg="hola")
    private = await luis.frame()
    sent = await ana.frame()
    assert sent["cmd"] == "sent" and sent["to"] == "Luis" and sent["id"] == private["id"]


@pytest_twisted.ensureDeferred
async def test_typing_in_the_room_reaches_the_others_never_the_typer(server, clients):
    ana, luis, eva = await together(clients, "Ana", "Luis", "Eva")
    ana.send(cmd="typing")
    for client in (luis, eva):
        assert await client.frame() == {"cmd": "typing", "user": "Ana", "room": "general"}
    await barrier(luis, ana, luis, eva)


@pytest_twisted.ensureDeferred
async def test_private_typing_reaches_only_the_peer(server, clients):
    ana, luis, eva = await together(clients, "Ana", "Luis", "Eva")
    ana.send(cmd="typing", to="luis")
    assert await luis.frame() == {"cmd": "typing", "user": "Ana", "private": True}
    await barrier(luis, ana, luis, eva)
    ana.send(cmd="typing", to="Ana")  # to oneself: nobody
    await barrier(eva, ana, luis, eva)


# -- history --------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_history_order_and_bound(custom):
    srv = await custom.server(history=5)
    ana = await custom.client(srv)
    await ana.login("Ana")
    luis = await custom.client(srv)
    await luis.login("Luis")
    await ana.expect("users", list=["Ana", "Luis"])
    for i in range(8):
        (ana if i % 2 else luis).send(cmd="broadcast", msg=f"m{i}")
        await ana.expect("broadcast", msg=f"m{i}")
    ana.send(cmd="message", to="Luis", msg="privado")
    await luis.expect("private")
    eva = await custom.client(srv)
    history, users = await eva.login("Eva")
    items = history["items"]
    assert [item["msg"] for item in items] == ["m3", "m4", "m5", "m6", "m7"]
    assert [item["from"] for item in items] == ["Ana", "Luis", "Ana", "Luis", "Ana"]
    ids = [item["id"] for item in items]
    assert ids == sorted(ids)
    for item in items:
        assert item["room"] == "general" and TIME.match(item["time"]) and TS.match(item["ts"])
    assert users["list"] == ["Ana", "Luis", "Eva"]


@pytest_twisted.ensureDeferred
async def test_history_items_match_the_live_messages(server, clients):
    (ana,) = await together(clients, "Ana")
    ana.send(cmd="broadcast", msg="uno")
    live = await ana.frame()
    luis = await clients()
    history, _ = await luis.login("Luis")
    (item,) = history["items"]
    assert {"cmd": "broadcast", **item} == live


# -- names ----------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_name_rules(server, clients):
    (ana,) = await together(clients, "Ana")
    other = await clients()
    for taken in ["Ana", "ana", "ANA", "ＡＮＡ"]:
        other.send(cmd="login", user=taken)
        frame = await error(other)
        assert frame["code"] == "name_taken" and frame["ref"] == "login"
    for bad in ["", "x" * 33, "Ana María", "tab\there", "nul\x00", "zw\u200bsp"]:
        other.send(cmd="login", user=bad)
        assert (await error(other))["code"] == "bad_name"
    # Same connection, another name; shown as written.
    history, users = await other.login("Ｌｕｉｓ")
    assert users["list"] == ["Ana", "Ｌｕｉｓ"]
    ana.send(cmd="message", to="luis", msg="hola")
    frame = await other.expect("private")
    assert frame["to"] == "Ｌｕｉｓ"


# -- errors ---------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_every_error_code_keeps_the_connection(server, clients):
    listener, ana = await together(clients, "Listener", "Ana")
    cases = [
        (b"not json at all", "bad_json"),
        (b'{"cmd": "broadcast", "msg": "\xff"}', "bad_json"),
        (b"[1, 2, 3]", "bad_request"),
        (b'{"msg": "no cmd"}', "bad_request"),
        (b'{"cmd": "broadcast", "msg": 5}', "bad_request"),
        (b'{"cmd": "broadcast", "msg": "\\ud800"}', "bad_request"),
        (b'{"cmd": "login", "user": "Otra"}', "bad_request"),
        (b'{"cmd": "dance"}', "unknown_cmd"),
        (b'{"cmd": "message", "to": "Nadie", "msg": "x"}', "no_such_user"),
        (b'{"cmd": "typing", "to": "Nadie"}', "no_such_user"),
        (b'{"cmd": "broadcast", "msg": "x", "room": "cocina"}', "not_in_room"),
        (b'{"cmd": "leave", "room": "general"}', "not_in_room"),
        (b'{"cmd": "join", "room": "co cina"}', "bad_name"),
    ]
    for line, code in cases:
        ana.send_raw(line + b"\n")
        frame = await error(ana)
        assert frame["code"] == code, (line, frame)
    await barrier(ana, ana, listener)


@pytest_twisted.ensureDeferred
async def test_not_logged_in_name_taken_bad_name(server, clients):
    (ana,) = await together(clients, "Ana")
    anon = await clients()
    anon.send(cmd="broadcast", msg="x")
    frame = await error(anon)
    assert frame["code"] == "not_logged_in" and frame["ref"] == "broadcast"
    anon.send(cmd="login", user="ANA")
    assert (await error(anon))["code"] == "name_taken"
    anon.send(cmd="login", user=" Ana")
    assert (await error(anon))["code"] == "bad_name"
    await anon.login("Anon")
    await ana.expect("users", list=["Ana", "Anon"])


@pytest_twisted.ensureDeferred
async def test_rate_limited(custom):
    srv = await custom.server(rate_limit=5, rate_burst=20)
    client = await custom.client(srv)
    client.send_raw(b'{"cmd": "ping"}\n' * 21)
    frames = [await client.frame() for _ in range(21)]
    assert [f["cmd"] for f in frames] == ["pong"] * 20 + ["error"]
    assert frames[-1]["code"] == "rate_limited"
    assert client.connected


@pytest_twisted.ensureDeferred
async def test_line_too_long_closes(server, clients):
    listener, ana = await together(clients, "Listener", "Ana")
    ana.send_raw(b"{" + b" " * 65_536 + b"\n")
    frame = await error(ana)
    assert frame["code"] == "line_too_long"
    await ana.closed
    system = await listener.expect("system", event="leave")
    assert system["users"] == ["Ana"]


@pytest_twisted.ensureDeferred
async def test_server_full(custom):
    srv = await custom.server(max_connections=2)
    first, second = await custom.client(srv), await custom.client(srv)
    for client in (first, second):
        client.send(cmd="ping")
        assert await client.frame() == {"cmd": "pong"}
    third = await custom.client(srv)
    frame = await error(third)
    assert frame["code"] == "server_full"
    await third.closed
    # The others are untouched, and a freed slot can be used again.
    first.close()
    await first.closed
    for _ in range(200):  # until the server, too, has seen it go
        if len(srv.factory.connections) < 2:
            break
        await sleep(0.01)
    await second.login("Luis")
    fourth = await custom.client(srv)
    await fourth.login("Ana")


# -- impersonation ----------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_client_supplied_from_is_ignored(server, clients):
    ana, luis, eva = await together(clients, "Ana", "Luis", "Eva")
    ana.send(cmd="broadcast", msg="soy Luis", **{"from": "Luis", "user": "Luis", "id": 1})
    frame = await eva.frame()
    assert frame["from"] == "Ana" and frame["msg"] == "soy Luis"
    ana.send(cmd="message", to="Eva", msg="psst", **{"from": "Luis"})
    frame = await eva.expect("private")
    assert frame["from"] == "Ana"
    ana.send(cmd="typing", user="Luis", **{"from": "Luis"})
    frame = await eva.expect("typing")
    assert frame["user"] == "Ana"
    # A plain client cannot speak for someone else either.
    pepe = await clients()
    pepe.send_raw(b"Pepe\n")
    await eva.expect("users", list=["Ana", "Luis", "Eva", "Pepe"])
    pepe.send_raw(b"Luis: soy Luis\n")
    frame = await eva.expect("broadcast")
    assert frame["from"] == "Pepe" and frame["msg"] == "Luis: soy Luis"


# -- message text -------------------------------------------------------------------


TEXTS = [
    "línea uno\nlínea dos\r\nlínea tres\n",
    "\n",
    " ",
    "😀🎉 𝄞 𠜎 \U0010fffd",
    "ＡＮＡ ﬁ e\u0301 é Å Å",  # would change under NFC/NFKC
    'comillas " y \\ barras \\n literales',
    "\t\x00\x01\x1b[31m\x7f\u2028\u2029\ufeff",
    "x" * 10_000,
]


@pytest.mark.parametrize("text", TEXTS, ids=range(len(TEXTS)))
@pytest_twisted.ensureDeferred
async def test_message_text_is_relayed_exactly(server, clients, text):
    ana, luis = await together(clients, "Ana", "Luis")
    ana.send(cmd="broadcast", msg=text)
    assert (await luis.frame())["msg"] == text
    ana.send(cmd="message", to="Luis", msg=text)
    assert (await luis.frame())["msg"] == text
    eva = await clients()
    history, _ = await eva.login("Eva")
    assert history["items"][-1]["msg"] == text


@pytest_twisted.ensureDeferred
async def test_non_bmp_is_sent_as_utf8(server, clients):
    ana, luis = await together(clients, "Ana", "Luis")
    # Sent as an escaped surrogate pair, relayed as the real character in UTF-8.
    ana.send_raw(b'{"cmd": "broadcast", "msg": "\\ud83d\\ude00 \xf0\x9d\x84\x9e"}\n')
    raw = await luis.line()
    assert "😀 𝄞".encode() in raw
    assert json.loads(raw)["msg"] == "😀 𝄞"


@pytest_twisted.ensureDeferred
async def test_crlf_is_accepted(server, clients):
    (luis,) = await together(clients, "Luis")
    ana = await clients()
    ana.send_raw(b'{"cmd": "login", "user": "Ana"}\r\n')
    assert (await ana.frame())["cmd"] == "history"
    assert (await ana.frame())["list"] == ["Luis", "Ana"]
    ana.send_raw(b'{"cmd": "broadcast", "msg": "hola"}\r\n{"cmd": "ping"}\r\n')
    assert (await luis.expect("broadcast"))["msg"] == "hola"
    assert (await ana.expect("pong")) == {"cmd": "pong"}
    pepe = await clients()
    pepe.send_raw(b"Pepe: buenas\r\nAh\xc3\xad va\r\n")
    assert (await luis.expect("broadcast"))["msg"] == "buenas"
    assert (await luis.expect("broadcast"))["msg"] == "Ahí va"


# -- plain text <-> JSON ----------------------------------------------------------


async def plain_line(client: LineClient) -> str:
    return (await client.line()).decode("utf-8")


@pytest_twisted.ensureDeferred
async def test_plain_and_json_share_the_room(server, clients):
    (luis,) = await together(clients, "Luis")
    luis.send(cmd="broadcast", msg="antes")
    await luis.frame()
    ana = await clients()
    ana.send_raw(b"Ana: hola a todos\n")
    welcome = await plain_line(ana)
    assert welcome.startswith("* Hola, Ana.")
    assert re.match(r"^\[\d\d:\d\d:\d\d\] Luis: antes$", await plain_line(ana))
    assert await plain_line(ana) == "* En línea: Luis, Ana"
    assert await plain_line(ana) == "Ana: hola a todos"
    # The JSON client sees Ana join before it sees her message.
    assert (await luis.frame())["cmd"] == "system"
    assert (await luis.frame())["list"] == ["Luis", "Ana"]
    frame = await luis.frame()
    assert (frame["cmd"], frame["from"], frame["msg"]) == ("broadcast", "Ana", "hola a todos")
    # JSON -> plain, multi-line indented.
    luis.send(cmd="broadcast", msg="qué tal\ntodo bien")
    await luis.expect("broadcast", msg="qué tal\ntodo bien")
    assert await plain_line(ana) == "Luis: qué tal"
    assert await plain_line(ana) == "  todo bien"
    # Own-name prefix stripped, // escape, private both ways.
    ana.send_raw(b"Ana: sigo aqu\xc3\xad\n//me\n/msg Luis en privado\n")
    assert (await luis.expect("broadcast"))["msg"] == "sigo aquí"
    assert (await luis.expect("broadcast"))["msg"] == "/me"
    frame = await luis.expect("private")
    assert (frame["from"], frame["msg"]) == ("Ana", "en privado")
    luis.send(cmd="message", to="ana", msg="recibido")
    lines = [await plain_line(ana) for _ in range(4)]
    assert lines == [
        "Ana: sigo aquí",
        "Ana: /me",
        "[privado a Luis] Ana: en privado",
        "[privado] Luis: recibido",
    ]
    # /users, then a JSON client joins and leaves.
    ana.send_raw(b"/users\n")
    assert await plain_line(ana) == "* En línea: Luis, Ana"
    eva = await clients()
    await eva.login("Eva")
    assert await plain_line(ana) == "Eva se ha unido al chat."
    eva.close()
    assert await plain_line(ana) == "Eva ha abandonado el chat."
    # /quit: the JSON client sees the plain client leave.
    ana.send_raw(b"/quit\n")
    await ana.closed
    await luis.expect("system", event="leave", users=["Ana"])


@pytest_twisted.ensureDeferred
async def test_two_plain_clients_and_a_json_client(server, clients):
    """The `make run` scenario: two `nc` sessions and a JSON client."""
    ana = await clients()
    ana.send_raw(b"Ana\n")
    assert (await plain_line(ana)).startswith("* Hola, Ana.")
    await plain_line(ana)  # En línea
    bob = await clients()
    bob.send_raw(b"Bob: hola Ana\n")
    assert (await plain_line(bob)).startswith("* Hola, Bob.")
    assert await plain_line(bob) == "* En línea: Ana, Bob"
    assert await plain_line(bob) == "Bob: hola Ana"
    assert await plain_line(ana) == "Bob se ha unido al chat."
    assert await plain_line(ana) == "Bob: hola Ana"
    luis = await clients()
    history, users = await luis.login("Luis")
    assert [i["msg"] for i in history["items"]] == ["hola Ana"]
    assert users["list"] == ["Ana", "Bob", "Luis"]
    luis.send(cmd="broadcast", msg="hola a los dos")
    for client in (ana, bob):
        assert await plain_line(client) == "Luis se ha unido al chat."
        assert await plain_line(client) == "Luis: hola a los dos"


@pytest_twisted.ensureDeferred
async def test_plain_name_taken_retry(server, clients):
    (luis,) = await together(clients, "Luis")
    pepe = await clients()
    pepe.send_raw(b"luis: hola\n")
    assert (await plain_line(pepe)).startswith("* error name_taken:")
    pepe.send_raw(b"Pepe\n")
    assert (await plain_line(pepe)).startswith("* Hola, Pepe.")
    await luis.expect("users", list=["Luis", "Pepe"])


# -- rooms ------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_rooms(server, clients):
    ana, luis, eva = await together(clients, "Ana", "Luis", "Eva")
    ana.send(cmd="join", room="Cocina")
    assert await ana.frame() == {"cmd": "history", "room": "Cocina", "items": []}
    assert await ana.frame() == {"cmd": "users", "room": "Cocina", "list": ["Ana"]}
    luis.send(cmd="join", room="cocina")
    await luis.expect("users", room="Cocina", list=["Ana", "Luis"])
    await ana.expect("users", room="Cocina", list=["Ana", "Luis"])
    luis.send(cmd="broadcast", room="cocina", msg="solo aquí")
    assert (await ana.frame())["room"] == "Cocina"
    await luis.expect("broadcast", msg="solo aquí")
    await barrier(luis, eva)  # Eva, outside the room, got nothing before this
    eva.send(cmd="rooms")
    rooms = await eva.expect("rooms")
    assert {"name": "Cocina", "members": 2} in rooms["list"]
    luis.send(cmd="leave", room="COCINA")
    assert await luis.expect("left") == {"cmd": "left", "room": "Cocina"}
    await ana.expect("users", room="Cocina", list=["Ana"])


# -- TLS ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A self-signed certificate for localhost: (key path, certificate path)."""
    key_path, cert_path = make_certificate(tmp_path_factory.mktemp("tls"))
    return str(key_path), str(cert_path)


@pytest.mark.filterwarnings("ignore:Passing pyOpenSSL:DeprecationWarning")
@pytest_twisted.ensureDeferred
async def test_tls_listener_next_to_tcp(tls_files):
    """`--listen ssl:...` beside `--listen tcp:...`: one room, and TLS really is TLS."""
    from twisted.internet import reactor
    from twisted.internet.endpoints import SSL4ClientEndpoint, TCP4ClientEndpoint, connectProtocol
    from twisted.internet.ssl import Certificate, optionsForClientTLS

    from chatserv.protocol import Limits
    from chatserv.service import ServerConfig, build_server

    key, cert = tls_files
    config = ServerConfig(
        listen=[
            f"ssl:0:privateKey={key}:certKey={cert}:interface=127.0.0.1",
            "tcp:0:interface=127.0.0.1",
        ],
        limits=Limits(rate_limit=0),
    )
    srv = build_server(config, reactor)
    srv.startService()
    ports = await srv.listening
    tls_port, tcp_port = (p.getHost().port for p in ports)
    with open(cert, "rb") as f:
        trust = Certificate.loadPEM(f.read())
    made: list[LineClient] = []
    try:
        tls_endpoint = SSL4ClientEndpoint(
            reactor, "127.0.0.1", tls_port, optionsForClientTLS("localhost", trustRoot=trust)
        )
        ana = await connectProtocol(tls_endpoint, LineClient())
        made.append(ana)
        await ana.login("Ana")
        luis = await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", tcp_port), LineClient())
        made.append(luis)
        await luis.login("Luis")
        await ana.expect("users", list=["Ana", "Luis"])
        big = "ñ😀" * 3_000  # 18 kB of UTF-8 (54 kB escaped): several TLS records
        for i in range(10):
            luis.send(cmd="broadcast", msg=f"{i}{big}")
        for i in range(10):
            assert (await ana.expect("broadcast"))["msg"] == f"{i}{big}"
        ana.send(cmd="message", to="Luis", msg="cifrado")
        assert (await luis.expect("private"))["msg"] == "cifrado"
        # A plain-text client speaking TCP to the TLS port gets no plaintext back.
        raw = await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", tls_port), LineClient())
        made.append(raw)
        raw.send_raw(b"Mallory: hola\n")
        await raw.closed
        assert b"Hola" not in raw.buffer and b"error" not in raw.buffer
    finally:
        for client in made:
            client.close()
        for client in made:
            if client.connected:
                await client.closed
        await srv.stopService()
