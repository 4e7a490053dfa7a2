"""Positions and client message ids in the hub on its own (no database: the
in-memory log), with a fake clock and recording participants."""

from __future__ import annotations

import json

from twisted.internet.testing import MemoryReactorClock

from chatserv import wire
from chatserv.events import ChatMessage
from chatserv.hub import RECENT_CIDS_SECONDS, Hub
from tests.protocol_support import Silent
from tests.test_hub import online


def test_the_memory_log_numbers_messages_and_corrections_in_commit_order():
    clock = MemoryReactorClock()
    hub = Hub(clock, history_size=50)
    (ana, ana_r), (luis, luis_r) = online(hub, clock, "Ana", "Luis")
    first = hub.broadcast(ana, "uno")
    assert first.pos == 0  # not committed yet: nobody has it
    hub.private(luis, "Ana", "dos")
    clock.advance(0)
    hub.correct(ana, first, "uno bis")
    hub.broadcast(luis, "tres")
    clock.advance(0)
    got = [(type(e).__name__, e.pos) for e in luis_r.take() if hasattr(e, "pos")]
    assert got == [("ChatMessage", 1), ("ChatMessage", 2), ("Correction", 3), ("ChatMessage", 4)]
    assert hub.store.position == 4  # type: ignore[attr-defined]


def test_a_resent_cid_is_relayed_once_and_confirmed_again_to_its_sender_only():
    clock = MemoryReactorClock()
    hub = Hub(clock, history_size=50)
    (ana, ana_r), (luis, luis_r) = online(hub, clock, "Ana", "Luis")
    sent = hub.broadcast(ana, "hola", cid="k1")
    # A resend within the same turn (same batch), and one after the commit.
    hub.broadcast(ana, "hola", cid="k1")
    clock.advance(0)
    [echo, repeat] = ana_r.take("own")  # the sender's: its confirmations
    assert echo is sent and echo.pos == 1 and echo.cid == "k1"
    assert repeat.id == sent.id and repeat.pos == 1 and repeat is not sent
    [seen] = luis_r.take("message")
    assert seen is sent
    again = hub.broadcast(ana, "hola", cid="k1")
    clock.advance(0)
    assert again is sent
    [confirmation] = ana_r.take("own")
    assert confirmation.id == sent.id and confirmation is not sent
    assert luis_r.take("message") == []
    assert [m.id for m in hub.recent()] == [sent.id]
    # Private: the same; another sender's identical cid is its own.
    # One cid names one message of its sender, whatever the conversation:
    # a private send under it is answered with the room message.
    p = hub.private(ana, "Luis", "psst", cid="k1")
    clock.advance(0)
    assert p is sent and [m.id for m in ana_r.take("own")] == [sent.id]
    assert luis_r.take("message") == []
    mine = hub.broadcast(luis, "hola", cid="k1")
    clock.advance(0)
    assert mine.pos == 2 and luis_r.take("own") == [mine]


def test_the_hub_forgets_cids_after_its_window_and_the_log_decides_again():
    clock = MemoryReactorClock()
    hub = Hub(clock, history_size=50)
    (ana, ana_r), _ = online(hub, clock, "Ana", "Luis")
    hub.broadcast(ana, "hola", cid="k1")
    clock.advance(0)
    clock.advance(RECENT_CIDS_SECONDS + 1)
    hub.broadcast(ana, "otro", cid="k2")  # remembering k2 forgets k1
    clock.advance(0)
    assert ("g:ana", "k1") not in hub._recent
    # Without a database nothing else remembers it: the window is the hub's.
    late = hub.broadcast(ana, "hola", cid="k1")
    clock.advance(0)
    assert late.pos == 3


def test_accounts_and_guests_of_one_name_have_separate_cids():
    clock = MemoryReactorClock()
    hub = Hub(clock, history_size=50)
    (guest, _), = online(hub, clock, "Ana")
    first = hub.broadcast(guest, "hola", cid="k")
    clock.advance(0)
    hub.logout(guest)
    account = hub.login(Silent(), "Ana", account=True)
    clock.advance(0)
    second = hub.broadcast(account, "hola", cid="k")
    clock.advance(0)
    assert second is not first and second.pos == 2


def test_a_private_message_to_oneself_with_a_cid_is_confirmed_once():
    clock = MemoryReactorClock()
    hub = Hub(clock, history_size=50)
    (ana, ana_r), = online(hub, clock, "Ana")
    sent = hub.private(ana, "Ana", "nota", cid="n1")
    clock.advance(0)
    assert ana_r.kinds() == ["own"]
    assert ana_r.take("own") == [sent]
    frame = json.loads(wire.own_frame(sent))
    assert frame["cmd"] == "private" and frame["cid"] == "n1" and frame["pos"] == 1


def test_own_frames_carry_the_cid_and_the_shared_ones_do_not():
    room = ChatMessage(7, 1_700_000_000.0, "Ana", "hola", room="general", pos=3, cid="c")
    private = ChatMessage(8, 1_700_000_000.0, "Ana", "psst", recipient="Luis", pos=4, cid="d")
    own_room, own_private = json.loads(wire.own_frame(room)), json.loads(wire.own_frame(private))
    assert own_room == {**json.loads(wire.broadcast_frame(room)), "cid": "c"}
    assert own_private == {**json.loads(wire.sent_frame(private)), "cid": "d"}
    assert "cid" not in json.loads(wire.private_frame(private))
    assert own_private["cmd"] == "sent" and own_private["pos"] == 4


def test_a_page_forward_keeps_the_oldest_events_within_the_byte_bound():
    big = "x" * (wire.MAX_PAGE_BYTES // 3)
    events = [(True, {"id": i, "pos": i, "msg": big}) for i in (1, 2, 3, 5)]
    events.insert(3, (False, {"cmd": "edited", "id": 1, "pos": 4, "msg": "y"}))
    page = json.loads(wire.forward_page({"cmd": "history", "room": "general"}, events, False))
    # Two large items fit; the third, and everything after it, wait for the next page.
    assert [i["pos"] for i in page["items"]] == [1, 2]
    assert page["corrections"] == [] and page["more"] is True
    small = [(True, {"id": 1, "pos": 1}), (False, {"cmd": "deleted", "id": 1, "pos": 2})]
    page = json.loads(wire.forward_page({"cmd": "history", "with": "Luis"}, small, False))
    assert page == {
        "cmd": "history", "with": "Luis", "items": [{"id": 1, "pos": 1}],
        "corrections": [{"cmd": "deleted", "id": 1, "pos": 2}], "more": False,
    }
