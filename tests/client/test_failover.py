"""Several servers, catching up after a reconnect, and ``cid``: the session
against scripted frames (the Harness of test_session.py), then the real thing
in test_twistd.py's style: two twistd processes, the first killed."""

from __future__ import annotations

import pytest
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock

from chatserv.client.model import GENERAL_KEY, ConvKey, LineKind, SendState
from chatserv.client.network import RoundRobinEndpoint, ServerAddress, parse_servers
from chatserv.client.session import NAME_RETRIES, NAME_RETRY_DELAY
from tests.client.test_session import Harness


def item(pos: int, sender: str, msg: str, room: str = "general") -> dict[str, object]:
    return {"id": pos, "pos": pos, "time": "10:00:00", "room": room, "from": sender, "msg": msg}


def texts(h: Harness, key: ConvKey = GENERAL_KEY) -> list[str]:
    kinds = (LineKind.MESSAGE, LineKind.HISTORY)
    return [ln.text for ln in h.model.conversations[key].lines if ln.kind in kinds]


# -- addresses ----------------------------------------------------------------------------


def test_server_lists_parse_with_default_ports_and_ipv6():
    assert [str(a) for a in parse_servers("a:2001, b ,[::1]:2003,::1", 2000)] == [
        "a:2001",
        "b:2000",
        "::1:2003",
        "::1:2000",
    ]
    assert parse_servers("a", 2000, tls=True, cafile="ca.pem")[0] == ServerAddress("a", 2000, True, "ca.pem")
    with pytest.raises(ValueError, match="port"):
        parse_servers("a:x", 2000)
    with pytest.raises(ValueError):
        parse_servers(" , ", 2000)


def test_each_attempt_goes_to_the_next_server():
    reactor = MemoryReactorClock()
    endpoint = RoundRobinEndpoint(reactor, parse_servers("127.0.0.1:2001,127.0.0.1:2002", 2000))
    for _ in range(3):
        endpoint.connect(Factory.forProtocol(Protocol))
        reactor.advance(0)
    assert [port for _host, port, *_ in reactor.tcpClients] == [2001, 2002, 2001]
    assert str(endpoint.current) == "127.0.0.1:2001"


# -- catching up ----------------------------------------------------------------------------


def test_a_reconnect_catches_up_in_order_and_resends_only_what_is_missing():
    h = Harness()
    h.login(users=["Ana", "Luis"], items=[item(1, "Luis", "uno"), item(2, "Luis", "dos")])
    stored = h.session.send(GENERAL_KEY, "llegó")
    lost = h.session.send(GENERAL_KEY, "no llegó")
    sent = [f for f in h.sent(cids=True) if f["cmd"] == "broadcast"]
    cids = [f["cid"] for f in sent]
    assert len(set(cids)) == 2 and all(cids)
    h.drop()

    h.connect()
    h.sent()
    # The login window: its newest messages are past what we saw; they
    # come with the catch-up instead, in order.
    h.recv(cmd="history", room="general", items=[item(2, "Luis", "dos"), item(9, "Luis", "nueve")])
    h.recv(cmd="users", room="general", list=["Ana", "Luis"])
    assert h.sent() == [{"cmd": "history", "after": 2, "limit": 200, "room": "general"}, {"cmd": "rooms"}]
    assert stored is not None and lost is not None
    assert stored.state is SendState.QUEUED and lost.state is SendState.QUEUED  # not resent yet

    h.recv(cmd="broadcast", **item(10, "Luis", "en vivo"))  # live, while catching up: waits
    assert "en vivo" not in texts(h)
    h.recv(cmd="history", room="general", more=True, items=[item(3, "Luis", "tres"), item(4, "Ana", "llegó")])
    assert stored.state is SendState.SENT and stored.msg_id == 4
    assert h.sent() == [{"cmd": "history", "after": 4, "limit": 200, "room": "general"}]
    h.recv(
        cmd="history",
        room="general",
        more=False,
        items=[item(9, "Luis", "nueve"), item(10, "Luis", "en vivo")],
    )
    assert texts(h) == ["uno", "dos", "llegó", "no llegó", "tres", "nueve", "en vivo"]
    # Only what the server did not have goes out again, with its first cid.
    assert h.sent(cids=True) == [{"cmd": "broadcast", "msg": "no llegó", "cid": cids[1]}]
    h.recv(cmd="broadcast", cid=cids[1], **item(11, "Ana", "no llegó"))
    assert lost.state is SendState.SENT and lost.msg_id == 11
    assert texts(h).count("no llegó") == 1
    assert "Reconnected." in [ln.text for ln in h.model.conversations[GENERAL_KEY].lines]


def test_a_server_without_positions_is_not_asked_to_catch_up():
    h = Harness()
    h.login(users=["Ana"], items=[{"id": 1, "time": "10:00:00", "from": "Luis", "msg": "uno"}])
    h.drop()
    h.connect()
    h.sent()
    h.recv(cmd="history", room="general", items=[])
    h.recv(cmd="users", room="general", list=["Ana"])
    assert h.sent() == [{"cmd": "rooms"}]


def test_rooms_catch_up_once_joined_and_private_conversations_at_once():
    h = Harness()
    h.login(users=["Ana", "Luis"], items=[item(1, "Luis", "hola")])
    h.session.join("Cine")
    h.sent()
    h.recv(cmd="history", room="Cine", items=[item(2, "Luis", "peli", room="Cine")])
    h.recv(cmd="users", room="Cine", list=["Ana", "Luis"])
    h.recv(
        cmd="private", **{"id": 3, "pos": 3, "time": "10:00:01", "from": "Luis", "to": "Ana", "msg": "psst"}
    )
    h.drop()

    h.connect()
    h.sent()
    h.recv(cmd="history", room="general", items=[])
    h.recv(cmd="users", room="general", list=["Ana", "Luis"])
    assert h.sent() == [
        {"cmd": "history", "after": 1, "limit": 200, "room": "general"},
        {"cmd": "join", "room": "Cine"},
        {"cmd": "history", "after": 3, "limit": 200, "with": "Luis"},
        {"cmd": "rooms"},
    ]
    h.recv(cmd="history", room="Cine", items=[])
    h.recv(cmd="users", room="Cine", list=["Ana", "Luis"])
    assert h.sent() == [{"cmd": "history", "after": 2, "limit": 200, "room": "Cine"}]
    private = {"id": 5, "pos": 5, "time": "10:00:02", "from": "Luis", "to": "Ana", "msg": "¿sigues?"}
    h.recv(cmd="history", room="general", items=[], more=False)
    h.recv(cmd="history", items=[private], more=False, **{"with": "Luis"})
    h.recv(cmd="history", room="Cine", items=[item(4, "Luis", "entradas", room="Cine")], more=False)
    assert texts(h, ConvKey.private("Luis")) == ["psst", "¿sigues?"]
    assert texts(h, ConvKey.room("Cine")) == ["peli", "entradas"]


def test_a_refused_catch_up_lets_live_messages_through():
    h = Harness()
    h.login(users=["Ana"], items=[item(1, "Luis", "uno")])
    h.drop()
    h.connect()
    h.sent()
    h.recv(cmd="history", room="general", items=[])
    h.recv(cmd="users", room="general", list=["Ana"])
    h.recv(cmd="broadcast", **item(7, "Luis", "siete"))
    h.recv(cmd="error", code="bad_request", msg="?", ref="history")
    assert texts(h) == ["uno", "siete"]


def test_an_echo_with_our_cid_confirms_that_very_line():
    h = Harness()
    h.login()
    first = h.session.send(GENERAL_KEY, "igual")
    second = h.session.send(GENERAL_KEY, "igual")
    cids = [f["cid"] for f in h.sent(cids=True) if f["cmd"] == "broadcast"]
    assert first is not None and second is not None
    h.recv(cmd="broadcast", cid=cids[1], **item(8, "Ana", "igual"))
    assert (first.state, second.state) == (SendState.SENDING, SendState.SENT)
    assert second.msg_id == 8


def test_our_name_is_retried_while_a_cluster_frees_it():
    # A dead node's sessions are gone from the cluster within 15 s.
    assert NAME_RETRIES * NAME_RETRY_DELAY > 15
