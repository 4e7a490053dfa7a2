"""The hub on its own: no sockets, no JSON, a fake clock and recording participants."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock

from chatserv.errors import ChatError, InvalidName, NameTaken, NoSuchUser, NotInRoom
from chatserv.events import ChatMessage, PresenceChange, Typing
from chatserv.hub import GENERAL, MAX_ROOMS_PER_SESSION, Hub, presence_window


class Recorder:
    """A participant that writes down every event it is handed, in order."""

    def __init__(self, label: str = "") -> None:
        self.label = label
        self.events: list[tuple[str, Any]] = []

    def receive_message(self, message: ChatMessage) -> None:
        self.events.append(("message", message))

    def receive_own(self, message: ChatMessage) -> None:
        self.events.append(("own", message))

    def receive_presence(self, change: PresenceChange) -> None:
        self.events.append(("presence", change))

    def receive_typing(self, typing: Typing) -> None:
        self.events.append(("typing", typing))

    def receive_correction(self, correction: Any) -> None:
        self.events.append(("correction", correction))

    def take(self, kind: str | None = None) -> list[Any]:
        """The events received so far (of *kind* only, if given); forget all of them."""
        events, self.events = self.events, []
        return [e for k, e in events if kind is None or k == kind]

    def kinds(self) -> list[str]:
        return [k for k, _ in self.events]


@pytest.fixture
def clock() -> MemoryReactorClock:
    return MemoryReactorClock()


@pytest.fixture
def hub(clock: MemoryReactorClock) -> Hub:
    return Hub(clock, history_size=5)


def online(hub: Hub, clock: MemoryReactorClock, *names: str) -> list[tuple[Any, Recorder]]:
    """Log *names* in, let presence settle, and return (session, recorder) pairs with
    empty recorders."""
    pairs = []
    for name in names:
        recorder = Recorder(name)
        pairs.append((hub.login(recorder, name), recorder))
    clock.advance(0)
    hub.flush_all_presence()
    for _, recorder in pairs:
        recorder.take()
    return pairs


# -- names --------------------------------------------------------------------


def test_login_keeps_the_name_as_written(hub, clock):
    session = hub.login(Recorder(), "ＡＮＡ")
    assert session.name == "ＡＮＡ"
    assert hub.users() == ("ＡＮＡ",)
    assert hub.find("ana") is session
    assert hub.find("ANA") is session


@pytest.mark.parametrize("other", ["Ana", "ana", "ANA", "ＡＮＡ", "ａｎａ", "AnA"])
def test_names_are_unique_after_nfkc_and_casefold(hub, other):
    hub.login(Recorder(), "Ana")
    with pytest.raises(NameTaken) as info:
        hub.login(Recorder(), other)
    assert info.value.code == "name_taken"
    assert hub.users() == ("Ana",)


def test_casefold_not_just_lower(hub):
    # German sharp s case-folds to "ss"; lower() would not unify them.
    hub.login(Recorder(), "Strauß")
    with pytest.raises(NameTaken):
        hub.login(Recorder(), "STRAUSS")


def test_a_different_name_is_not_taken(hub):
    hub.login(Recorder(), "Ana")
    hub.login(Recorder(), "Ana2")
    assert hub.users() == ("Ana", "Ana2")


@pytest.mark.parametrize(
    "name",
    [
        "",
        "x" * 33,
        "Ana María",
        "Ana\tMaría",
        "Ana\n",
        "\u3000Ana",  # ideographic space
        "Ana\u00a0",  # no-break space
        "Ana\x00",
        "Ana\x1b[31m",
        "Ana\u200b",  # zero-width space (Cf)
        "Ana\u202e",  # right-to-left override (Cf)
        "\ud800",  # lone surrogate (Cs)
        "Ana\ue000",  # private use (Co)
        "\U000e0001",  # language tag (Cf)
        None,
        5,
        ["Ana"],
        {"name": "Ana"},
    ],
)
def test_bad_names(hub, name):
    with pytest.raises(InvalidName) as info:
        hub.login(Recorder(), name)
    assert info.value.code == "bad_name"
    assert hub.sessions == {}
    assert hub.users() == ()


@pytest.mark.parametrize(
    "name", ["x" * 32, "Ñandú", "李小龍", "a-b_c.d", "José", "Zoë", "李小龙", "Анна", "O'Brien", "Ana2"]
)
def test_good_names(hub, name):
    assert hub.login(Recorder(), name).name == name


@pytest.mark.parametrize(
    "name",
    [
        "Ana\u034f",  # combining grapheme joiner
        "Ana\ufe0f",  # variation selector 16
        "Ana\u17b4",  # Khmer inherent vowel, invisible
        "\u2800",  # Braille blank
        "\u3164",  # Hangul filler
        "\uffa0",  # half-width Hangul filler
        "\u115f",  # Hangul choseong filler
        "😀",  # symbols are not name characters in PRECIS
        "𝔄𝔫𝔞",  # compatibility forms neither (mathematical Fraktur)
        "...",  # no letter or digit
        "Luis\u2800(TG)",
        "Luis\u3164(TG)",
    ],
)
def test_invisible_and_blank_characters_are_not_names(hub, name):
    with pytest.raises(InvalidName):
        hub.login(Recorder(), name)
    assert hub.sessions == {}


@pytest.mark.parametrize(
    "first, second",
    [
        ("Ana", "\u0410na"),  # Cyrillic capital A
        ("Ana", "\u0391\u039d\u0391"),  # Greek capitals
        ("Alice", "AIice"),  # capital I for small l
        ("marta", "rnarta"),
        ("Bob", "B0B"),
        ("Анна", "анна"),
    ],
)
def test_look_alike_names_cannot_be_online_together(hub, first, second):
    hub.login(Recorder(), first)
    with pytest.raises(NameTaken):
        hub.login(Recorder(), second)
    assert hub.find(second) is hub.find(first)


def test_names_that_only_look_different_stay_different(hub):
    for name in ["Ana", "Ána", "Zoe", "Zoë", "李小龙", "李小龍", "Анна", "Anna"]:
        hub.login(Recorder(), name)
    assert len(hub.sessions) == 8


def test_no_client_name_imitates_the_telegram_marker(hub):
    hub.reserve_suffix(" (TG)")
    hub.login(Recorder(), "Luis (TG)", trusted=True)
    for name in ["Luis(TG)", "Luis(\u0422G)", "Pepe(tg)", "Ana_(TG)", "Luis\u2800(TG)", "Luis\u3164(TG)"]:
        with pytest.raises(InvalidName):
            hub.login(Recorder(), name)
    hub.login(Recorder(), "Luis")
    hub.login(Recorder(), "TG")
    assert sorted(hub.sessions) == sorted(s.key for s in hub.sessions.values())
    assert len(hub.sessions) == 3


def test_logout_frees_the_name(hub, clock):
    ana = hub.login(Recorder(), "Ana")
    hub.logout(ana)
    again = hub.login(Recorder(), "ana")
    assert hub.users() == ("ana",)
    # Logging out a stale session is harmless and does not log out the new one.
    hub.logout(ana)
    assert hub.find("Ana") is again
    hub.logout(again)
    hub.logout(again)
    assert hub.users() == ()


# -- broadcast, private, typing -------------------------------------------------


def test_broadcast_reaches_every_member_with_the_same_object(hub, clock):
    (ana, ra), (luis, rl), (eva, re) = online(hub, clock, "Ana", "Luis", "Eva")
    clock.advance(12.5)
    message = hub.broadcast(luis, "hola\nqué tal 😀")
    clock.advance(0)
    got = [r.take("message") for r in (ra, rl, re)]
    assert got == [[message]] * 3
    assert message.sender == "Luis" and message.text == "hola\nqué tal 😀"
    assert message.room == GENERAL and message.recipient is None and not message.is_private
    assert message.ts == 12.5


def test_message_ids_grow(hub, clock):
    (ana, _), (luis, _) = online(hub, clock, "Ana", "Luis")
    ids = [
        hub.broadcast(ana, "1").id,
        hub.private(ana, "Luis", "2").id,
        hub.broadcast(luis, "3").id,
    ]
    assert ids == sorted(ids) and len(set(ids)) == 3


def test_private_reaches_the_recipient_and_a_copy_to_the_sender_only(hub, clock):
    (ana, ra), (luis, rl), (eva, re) = online(hub, clock, "Ana", "Luis", "Eva")
    message = hub.private(ana, "LUIS", "secreto")
    clock.advance(0)
    assert message.recipient == "Luis"  # as Luis wrote it
    assert message.is_private and message.room is None
    assert rl.take() == [message]
    assert ra.take() == [message]
    assert re.take() == []


def test_private_to_self_is_delivered_once(hub, clock):
    ((ana, ra),) = online(hub, clock, "Ana")
    message = hub.private(ana, "ana", "nota")
    clock.advance(0)
    assert ra.take() == [message]


def test_private_to_nobody(hub, clock):
    ((ana, ra),) = online(hub, clock, "Ana")
    with pytest.raises(NoSuchUser) as info:
        hub.private(ana, "Luis", "hola")
    assert info.value.code == "no_such_user"
    assert ra.take() == []


def test_private_messages_are_not_history(hub, clock):
    (ana, _), (luis, _) = online(hub, clock, "Ana", "Luis")
    hub.private(ana, "Luis", "secreto")
    assert hub.recent() == []


def test_room_typing_reaches_the_others_never_the_typer(hub, clock):
    (ana, ra), (luis, rl), (eva, re) = online(hub, clock, "Ana", "Luis", "Eva")
    hub.typing(ana)
    assert ra.take() == []
    for recorder in (rl, re):
        (event,) = recorder.take()
        assert isinstance(event, Typing)
        assert event.user == "Ana" and event.room == GENERAL


def test_private_typing_reaches_the_peer_only(hub, clock):
    (ana, ra), (luis, rl), (eva, re) = online(hub, clock, "Ana", "Luis", "Eva")
    hub.typing(ana, to="luis")
    (event,) = rl.take()
    assert event.user == "Ana" and event.room is None
    assert ra.take() == [] and re.take() == []


def test_typing_to_self_tells_nobody(hub, clock):
    (ana, ra), (luis, rl) = online(hub, clock, "Ana", "Luis")
    hub.typing(ana, to="Ana")
    assert ra.take() == [] and rl.take() == []


def test_typing_errors(hub, clock):
    ((ana, ra),) = online(hub, clock, "Ana")
    with pytest.raises(NoSuchUser):
        hub.typing(ana, to="Luis")
    with pytest.raises(NotInRoom) as info:
        hub.typing(ana, room_name="cocina")
    assert info.value.code == "not_in_room"


# -- presence -------------------------------------------------------------------


def test_presence_window_grows_with_the_room():
    assert presence_window(1) == 0.0
    assert presence_window(50) == 0.0
    assert 0.05 < presence_window(51) < 0.06
    assert presence_window(10_000) < presence_window(15_000) <= 2.0
    assert presence_window(1_000_000) == 2.0


def test_small_room_hears_of_a_login_in_the_same_turn(hub, clock):
    ((ana, ra),) = online(hub, clock, "Ana")
    luis = hub.login(Recorder(), "Luis")
    assert ra.take() == []  # not yet: at the end of the reactor turn
    clock.advance(0)
    (change,) = ra.take()
    assert isinstance(change, PresenceChange)
    assert (change.room, change.joined, change.left, change.members) == (
        GENERAL,
        ("Luis",),
        (),
        ("Ana", "Luis"),
    )
    # The newcomer learns the member list from the same change.
    (own,) = luis.participant.take()
    assert own is change


def test_presence_is_coalesced_in_one_window(hub, clock):
    ((ana, ra),) = online(hub, clock, "Ana")
    luis = hub.login(Recorder(), "Luis")
    eva = hub.login(Recorder(), "Eva")
    hub.login(Recorder(), "Pep")
    hub.logout(eva)
    clock.advance(0)
    (change,) = ra.take()
    # Eva came and went inside the window: nobody hears of her.
    assert change.joined == ("Luis", "Pep")
    assert change.left == ()
    assert change.members == ("Ana", "Luis", "Pep")
    assert luis.participant.take() == [change]


def test_leave_is_announced_to_the_remaining_members(hub, clock):
    (ana, ra), (luis, rl), (eva, re) = online(hub, clock, "Ana", "Luis", "Eva")
    hub.logout(luis)
    clock.advance(0)
    assert rl.take() == []
    for recorder in (ra, re):
        (change,) = recorder.take()
        assert change.left == ("Luis",) and change.joined == ()
        assert change.members == ("Ana", "Eva")


def test_members_are_listed_in_the_order_they_came_online(hub, clock):
    names = ["Zoe", "ana", "Ñu", "Bob", "ＡＮＡ2"]
    online(hub, clock, *names)
    assert hub.users() == tuple(names)


def crowd(hub: Hub, clock: MemoryReactorClock, n: int) -> list[tuple[Any, Recorder]]:
    return online(hub, clock, *[f"u{i}" for i in range(n)])


def test_large_room_gathers_changes_for_a_window(hub, clock):
    members = crowd(hub, clock, 60)
    window = presence_window(61)
    assert window > 0
    hub.login(Recorder(), "late1")
    clock.advance(window / 2)
    hub.login(Recorder(), "late2")
    hub.logout(members[5][0])
    assert all(r.events == [] for _, r in members)
    clock.advance(window / 2 + 1e-6)
    first = members[0][1].take()
    assert len(first) == 1
    change = first[0]
    assert change.joined == ("late1", "late2") and change.left == ("u5",)
    assert change.members[-2:] == ("late1", "late2") and "u5" not in change.members
    # Everyone got the very same object.
    assert all(r.take() == [change] for s, r in members[1:] if s.name != "u5")
    # Nothing more is pending.
    clock.advance(10)
    assert all(r.events == [] for _, r in members)


def test_pending_presence_is_flushed_before_a_message_to_the_room(hub, clock):
    members = crowd(hub, clock, 60)
    late = hub.login(Recorder(), "late")
    message = hub.broadcast(late, "hola")
    clock.advance(0)
    # No time passed, yet every member hears of "late" before reading it.
    watcher = members[0][1]
    assert watcher.kinds() == ["presence", "message"]
    change, got = watcher.take()
    assert change.joined == ("late",) and got is message
    assert late.participant.kinds() == ["presence", "message"]
    clock.advance(10)
    assert watcher.take() == []


def test_flush_all_presence(hub, clock):
    members = crowd(hub, clock, 60)
    hub.login(Recorder(), "late")
    hub.flush_all_presence()
    assert members[0][1].kinds() == ["presence"]
    clock.advance(10)
    assert members[0][1].kinds() == ["presence"]


def test_reconnect_with_the_same_name_inside_the_window_still_gets_the_member_list(hub, clock):
    """The login answer's `users` frame is the presence change of the window the
    session entered in (docs/PROTOCOL.md); a session that logs out and back in
    inside one window must still get one."""
    members = crowd(hub, clock, 60)
    old = members[0][0]
    hub.logout(old)
    again = Recorder("again")
    hub.login(again, "u0")
    clock.advance(2.0)
    changes = again.take("presence")
    assert changes, "the new session never learns who is online"
    assert changes[-1].members[-1] == "u0"


# -- history --------------------------------------------------------------------


def test_history_is_bounded_and_oldest_first(hub, clock):
    ((ana, _),) = online(hub, clock, "Ana")
    sent = [hub.broadcast(ana, f"m{i}") for i in range(8)]
    clock.advance(0)
    assert hub.recent() == sent[-5:]
    assert [m.text for m in hub.recent(GENERAL)] == ["m3", "m4", "m5", "m6", "m7"]


def test_history_is_per_room(hub, clock):
    ((ana, _),) = online(hub, clock, "Ana")
    hub.join(ana, "Cocina")
    a = hub.broadcast(ana, "en general")
    clock.advance(0)
    b = hub.broadcast(ana, "en cocina", "cocina")
    clock.advance(0)
    assert hub.recent() == [a]
    assert hub.recent("COCINA") == [b]
    assert hub.recent("nowhere") == []


def test_remember_fills_the_window_and_the_ids(clock):
    hub = Hub(clock, history_size=3)
    old = [ChatMessage(i, float(i), "Ana", f"m{i}", room=GENERAL) for i in range(1, 6)]
    old.append(ChatMessage(9, 9.0, "Ana", "private", recipient="Luis"))
    hub.remember(old)
    assert hub.recent() == old[2:5]
    ana = hub.login(Recorder(), "Ana")
    assert hub.broadcast(ana, "new").id > 9


def test_zero_history(clock):
    hub = Hub(clock, history_size=0)
    ana = hub.login(Recorder(), "Ana")
    hub.broadcast(ana, "x")
    assert hub.recent() == []


# -- rooms ----------------------------------------------------------------------


def test_join_creates_a_room_and_keeps_its_first_spelling(hub, clock):
    (ana, ra), (luis, rl) = online(hub, clock, "Ana", "Luis")
    room = hub.join(ana, "Cocina")
    assert room.name == "Cocina"
    assert hub.join(luis, "COCINA") is room
    clock.advance(0)
    assert hub.users("cocina") == ("Ana", "Luis")
    assert ("Cocina", 2) in hub.room_list() and (GENERAL, 2) in hub.room_list()
    message = hub.broadcast(luis, "hola", "cocina")
    clock.advance(0)
    assert message.room == "Cocina"
    assert ra.take("message") == [message] and rl.take("message") == [message]


def test_room_messages_stay_in_the_room(hub, clock):
    (ana, ra), (luis, rl), (eva, re) = online(hub, clock, "Ana", "Luis", "Eva")
    hub.join(ana, "cocina")
    hub.join(luis, "cocina")
    clock.advance(0)
    for r in (ra, rl, re):
        r.take()
    hub.broadcast(ana, "solo cocina", "cocina")
    clock.advance(0)
    hub.typing(ana, room_name="cocina")
    assert re.take() == []
    assert [k for k in rl.kinds()] == ["message", "typing"]


def test_room_presence(hub, clock):
    (ana, ra), (luis, rl) = online(hub, clock, "Ana", "Luis")
    hub.join(ana, "cocina")
    clock.advance(0)
    ra.take()
    hub.join(luis, "cocina")
    clock.advance(0)
    (change,) = ra.take()
    assert change.room == "cocina" and change.joined == ("Luis",)
    assert hub.leave(luis, "COCINA") == "cocina"
    clock.advance(0)
    (change,) = ra.take()
    assert change.room == "cocina" and change.left == ("Luis",)
    assert change.members == ("Ana",)


def test_leave_errors(hub, clock):
    ((ana, _),) = online(hub, clock, "Ana")
    with pytest.raises(NotInRoom):
        hub.leave(ana, GENERAL)
    with pytest.raises(NotInRoom):
        hub.leave(ana, "GENERAL")
    with pytest.raises(NotInRoom):
        hub.leave(ana, "cocina")
    with pytest.raises(NotInRoom):
        hub.broadcast(ana, "x", "cocina")


def test_join_bad_room_names(hub, clock):
    ((ana, _),) = online(hub, clock, "Ana")
    for bad in ["", "co cina", "x" * 33, None, 3, "\x00"]:
        with pytest.raises(InvalidName):
            hub.join(ana, bad)


def test_join_twice_and_join_general_are_harmless(hub, clock):
    ((ana, ra),) = online(hub, clock, "Ana")
    first = hub.join(ana, "cocina")
    assert hub.join(ana, "Cocina") is first
    assert hub.join(ana, "General").name == GENERAL
    clock.advance(0)
    assert hub.users("cocina") == ("Ana",)
    assert sorted(ana.rooms) == ["cocina", GENERAL]


def test_the_last_member_leaving_drops_the_room(hub, clock):
    (ana, _), (luis, _) = online(hub, clock, "Ana", "Luis")
    hub.join(ana, "cocina")
    hub.join(luis, "cocina")
    hub.leave(ana, "cocina")
    assert hub.room("cocina") is not None
    hub.leave(luis, "cocina")
    assert hub.room("cocina") is None
    assert [n for n, _ in hub.room_list()] == [GENERAL]
    clock.advance(10)  # no pending call on the dropped room fires


def test_logout_leaves_every_room_and_drops_empty_ones(hub, clock):
    (ana, ra), (luis, rl) = online(hub, clock, "Ana", "Luis")
    hub.join(ana, "Cocina")  # not lower case: rooms are keyed by their canonical form
    hub.join(ana, "ＳＡＬＡ")
    hub.join(luis, "Cocina")
    clock.advance(0)
    rl.take()
    hub.logout(ana)
    assert hub.users() == ("Luis",)
    assert hub.users("cocina") == ("Luis",)
    assert hub.room("sala") is None
    clock.advance(0)
    rooms = sorted(c.room for c in rl.take("presence"))
    assert rooms == ["Cocina", GENERAL]
    # Ana is gone everywhere: nothing reaches her any more.
    hub.broadcast(luis, "hola")
    hub.broadcast(luis, "hola", "cocina")
    assert ra.take("message") == []


def test_room_limit_per_session(hub, clock):
    ((ana, _),) = online(hub, clock, "Ana")
    for i in range(MAX_ROOMS_PER_SESSION - 1):
        clock.advance(60)  # creating rooms is rate-limited too
        hub.join(ana, f"r{i}")
    rooms = len(hub.rooms)
    for i in range(20):
        with pytest.raises(ChatError) as info:
            hub.join(ana, f"one-too-many-{i}")
        assert info.value.code == "bad_request"
    # A refused join leaves nothing behind (issue 11: 14,373 empty rooms).
    assert hub.room("one-too-many-0") is None and len(hub.rooms) == rooms
    page, more = hub.room_page()
    assert [room.name for room in page if room.name.startswith("one")] == []


def test_creating_rooms_is_rate_limited_per_session(clock):
    hub = Hub(clock, history_size=5, room_rate=0.1, room_burst=3)
    (ana, _), (luis, _) = online(hub, clock, "Ana", "Luis")
    for i in range(3):
        hub.join(ana, f"r{i}")
    with pytest.raises(ChatError) as info:
        hub.join(ana, "r3")
    assert info.value.code == "rate_limited" and hub.room("r3") is None
    # Joining rooms that exist is not creating them; another session has its own budget.
    hub.join(ana, GENERAL)
    hub.join(luis, "r0")
    hub.join(luis, "l0")
    hub.join(ana, "l0")
    clock.advance(10)
    hub.join(ana, "r3")
    with pytest.raises(ChatError):
        hub.join(ana, "r4")


def test_empty_rooms_disappear_and_rooms_are_paged_in_key_order(hub, clock):
    ((ana, _),) = online(hub, clock, "Ana")
    for name in ["b", "C", "a", "d"]:
        hub.join(ana, name)
    page, more = hub.room_page(limit=2)
    assert [r.name for r in page] == ["a", "b"] and more
    page, more = hub.room_page("B", limit=2)
    assert [r.name for r in page] == ["C", "d"] and more
    page, more = hub.room_page("d", limit=2)
    assert [r.name for r in page] == [GENERAL] and not more
    hub.leave(ana, "c")
    clock.advance(0)
    assert hub.room("c") is None
    assert [r.name for r in hub.room_page()[0]] == ["a", "b", "d", GENERAL]
    hub.logout(ana)
    clock.advance(0)
    assert [r.name for r in hub.room_page()[0]] == [GENERAL] and list(hub.rooms) == [GENERAL]


# -- robustness -----------------------------------------------------------------


class Leaver(Recorder):
    """A participant that goes offline while it is being handed a message
    (a bridge whose upstream failed, a connection aborted synchronously)."""

    hub: Hub
    session: Any

    def receive_message(self, message: ChatMessage) -> None:
        super().receive_message(message)
        self.hub.logout(self.session)


def test_a_participant_leaving_during_delivery_does_not_break_the_others(hub, clock):
    online(hub, clock, "Ana")
    leaver = Leaver()
    leaver.hub = hub
    leaver.session = hub.login(leaver, "Leaver")
    (luis, rl), (eva, re) = online(hub, clock, "Luis", "Eva")
    message = hub.broadcast(luis, "hola")
    clock.advance(0)
    assert rl.take("message") == [message] and re.take("message") == [message]
    assert hub.find("Leaver") is None


# -- storage seam ---------------------------------------------------------------


class SlowLog:
    keeps_history = True

    def __init__(self) -> None:
        self.pending: list[tuple[ChatMessage, Deferred[None]]] = []

    def append_then(self, message: ChatMessage, deliver: Callable[[ChatMessage], None]) -> None:
        d: Deferred[None] = Deferred()
        self.pending.append((message, d))
        d.addCallback(lambda _: deliver(message))
        d.addErrback(lambda _: None)  # not stored: never relayed

    def congested(self) -> bool:
        return False


def test_messages_are_relayed_only_once_committed(clock):
    store = SlowLog()
    hub = Hub(clock, store=store)
    ana = hub.login(Recorder(), "Ana")
    clock.advance(0)
    ana.participant.take()
    first = hub.broadcast(ana, "uno")
    second = hub.broadcast(ana, "dos")
    assert ana.participant.take() == []
    assert [m for m, _ in store.pending] == [first, second]
    store.pending[0][1].callback(None)
    assert ana.participant.take() == [first]
    store.pending[1][1].errback(RuntimeError("disk full"))
    assert ana.participant.take() == []
    assert hub.recent() == [first]


def test_message_stamps_match_datetime_formatting():
    """The per-second cache in wire gives exactly what datetime would."""
    import random

    from chatserv.wire import _stamps, clock_time, iso_time

    rng = random.Random(7)
    for _ in range(20_000):
        ts = 1_700_000_000 + rng.random() * 1e6
        assert _stamps(ts) == (clock_time(ts), iso_time(ts))


# -- replies and corrections ------------------------------------------------------


def test_corrections_are_for_their_author_within_the_window(hub, clock):
    from chatserv.errors import EditTooLate, MessageDeleted, NoSuchMessage, NotYourMessage
    from chatserv.hub import EDIT_WINDOW

    (ana, ana_r), (luis, luis_r) = online(hub, clock, "Ana", "Luis")
    message = hub.broadcast(ana, "hola")
    clock.advance(0)
    with pytest.raises(NotYourMessage):
        hub.correct(luis, message, "cambiado")
    # A guest that took the name after the message was sent is not its author.
    with pytest.raises(NotYourMessage):
        hub.correct(ana, message, "cambiado", since=message.ts + 1)
    correction = hub.correct(ana, message, "hola, corregido")
    clock.advance(0)
    assert [c.text for c in ana_r.take("correction")] == ["hola, corregido"]
    assert luis_r.take("correction") == [correction]
    assert hub.recent()[-1].text == "hola, corregido" and hub.recent()[-1].edited == clock.seconds()
    assert message.text == "hola"  # encodings of the old object may still be queued
    clock.advance(EDIT_WINDOW + 1)
    with pytest.raises(EditTooLate):
        hub.correct(ana, hub.recent()[-1], None)
    fresh = hub.broadcast(ana, "nuevo")
    clock.advance(0)
    hub.correct(ana, fresh, None)
    clock.advance(0)
    gone = hub.recent()[-1]
    assert gone.deleted == clock.seconds() and gone.text == ""
    with pytest.raises(MessageDeleted):
        hub.correct(ana, gone, "otra vez")
    with pytest.raises(MessageDeleted):
        hub.reply_quote(luis, gone)
    with pytest.raises(NoSuchMessage):
        hub.correct(ana, None, "x")


def test_a_private_correction_reaches_both_participants_only(hub, clock):
    (ana, ana_r), (luis, luis_r), (_, eva_r) = online(hub, clock, "Ana", "Luis", "Eva")
    message = hub.private(ana, "Luis", "te espero")
    clock.advance(0)
    hub.correct(ana, message, "te espero dentro")
    clock.advance(0)
    assert len(ana_r.take("correction")) == len(luis_r.take("correction")) == 1
    assert eva_r.take() == []


# -- the local cluster and the in-memory log ----------------------------------------


def test_without_a_database_messages_are_committed_at_the_end_of_the_turn(hub, clock):
    """The in-memory log commits as the threaded store does: nothing reaches
    anyone inside the sender's call, and one turn's messages (corrections
    included) arrive together, in the order they were sent."""
    (ana, ra), (luis, rl) = online(hub, clock, "Ana", "Luis")
    first = hub.broadcast(ana, "uno")
    second = hub.private(luis, "Ana", "dos")
    assert ra.take() == [] and rl.take() == [] and hub.recent() == []
    clock.advance(0)
    assert ra.take() == [first, second] and rl.take() == [first, second]
    edit = hub.correct(ana, first, "uno bis")
    third = hub.broadcast(ana, "tres")
    assert ra.take() == []
    clock.advance(0)
    assert ra.take() == [edit, third] and [m.text for m in hub.recent()] == ["uno bis", "tres"]


class Relay:
    """A cluster that hands what this node publishes to another hub too, as
    a bus would: only the hub's public entry points are used."""

    def __init__(self, here: Any) -> None:
        self.here = here
        self.ids = here.ids
        self.other: Hub | None = None
        self.hub: Hub | None = None

    def attach(self, hub: Hub) -> None:
        self.hub = hub

    def reserve_name(self, key: str) -> None:
        return self.here.reserve_name(key)

    def claim_name(self, key: str) -> bool:
        return self.here.claim_name(key)

    def elsewhere(self, room_key: str) -> dict[str, str]:
        return self.here.elsewhere(room_key)

    def where(self, key: str) -> str | None:
        return self.here.where(key)

    def release_name(self, key: str) -> None:
        self.here.release_name(key)

    def membership(self, room: str, joined: str | None = None, left: str | None = None) -> None:
        for hub in (self.hub, self.other):
            assert hub is not None
            hub.note_presence(room, joined, left)

    def publish_room(self, message: ChatMessage) -> None:
        for hub in (self.hub, self.other):
            assert hub is not None
            hub.deliver_to_room(message)

    def publish_private(self, message: ChatMessage) -> None:
        assert self.hub is not None
        self.hub.deliver_private(message)

    def publish_correction(self, correction: Any) -> None:
        assert self.hub is not None
        self.hub.deliver_correction(correction)

    def publish_typing(self, typing: Typing, key: str) -> None:
        for hub in (self.hub, self.other):
            assert hub is not None
            hub.deliver_typing(typing, key)


def test_events_from_elsewhere_arrive_through_the_public_entry_points(clock):
    from chatserv.local import LocalCluster

    there = Hub(clock)
    here_local = LocalCluster()
    relay = Relay(here_local)
    here = Hub(clock, cluster=relay)
    here_local.attach(here)
    relay.other = there
    ((eva, re),) = online(there, clock, "Eva")
    ((ana, ra),) = online(here, clock, "Ana")
    here.typing(ana)
    assert [(t.user, t.room) for t in re.take("typing")] == [("Ana", GENERAL)]
    message = here.broadcast(ana, "hola")
    clock.advance(0)
    assert re.take("message") == [message] and ra.take("message") == [message]
    assert there.recent() == [message] and here.ids.upcoming == 2
    luis = here.login(Recorder(), "Luis")
    clock.advance(0)
    there.flush_all_presence()
    assert [c.joined for c in re.take("presence")] == [("Luis",)]
    here.logout(luis)
    there.flush_all_presence()
    assert [c.left for c in re.take("presence")] == [("Luis",)]


def test_refusals_are_codes_that_wire_renders(hub, clock):
    """The hub raises a code and its arguments, no sentence; the text
    clients read comes from chatserv.wire."""
    from chatserv.wire import ERROR_TEXTS, error_text

    ((ana, _),) = online(hub, clock, "Ana")
    with pytest.raises(NoSuchUser) as info:
        hub.private(ana, "Nadie", "hola")
    assert (info.value.code, info.value.reason, info.value.params) == (
        "no_such_user", "not_online", {"name": "Nadie"}
    )
    assert error_text(info.value) == "Nadie no está conectado"
    with pytest.raises(NotInRoom) as info:
        hub.broadcast(ana, "hola", "cine")
    assert error_text(info.value) == "no estás en la sala cine"
    with pytest.raises(NameTaken) as info:
        hub.login(Recorder(), "ANA")
    assert error_text(info.value) == "el nombre ANA ya está en uso"
    # Every reason the hub can raise has its text.
    import inspect
    import re

    import chatserv.hub

    raised = set(re.findall(r'raise \w+\("(\w+)"', inspect.getsource(chatserv.hub)))
    assert raised and raised <= set(ERROR_TEXTS)


class SharedFanout:
    """A :class:`chatserv.hub.Fanout` that records its bindings and hands
    each message on to the bound participants' ``receive_message``."""

    def __init__(self) -> None:
        self.bindings: list[list[str]] = []

    def bind(self, participants: list[Any]) -> Any:
        self.bindings.append([p.label for p in participants])

        def deliver(message: ChatMessage, leave_out: Any = None) -> None:
            for p in participants:
                if p is not leave_out:
                    p.receive_message(message)

        return deliver


class Sharing(Recorder):
    def __init__(self, label: str, fanout: SharedFanout) -> None:
        super().__init__(label)
        self.fanout = fanout


def test_participants_sharing_a_fanout_get_room_messages_through_one_binding_per_membership(clock):
    hub = Hub(clock)
    shared = SharedFanout()
    ana, luis, own = Sharing("ana", shared), Sharing("luis", shared), Recorder("own")
    a = hub.login(ana, "Ana")
    hub.login(luis, "Luis")
    hub.login(own, "Own")
    for text in ("one", "two"):
        hub.broadcast(a, text)
    clock.advance(0)
    assert shared.bindings == [["ana", "luis"]]  # once for both messages
    for who in (ana, luis, own):
        assert [m.text for m in who.take("message")] == ["one", "two"]
    mia = Sharing("mia", shared)
    hub.login(mia, "Mia")
    hub.logout(hub.find("Luis"))
    hub.broadcast(a, "three")
    clock.advance(0)
    assert shared.bindings[1:] == [["ana", "mia"]]  # the membership changed
    assert [m.text for m in mia.take("message")] == ["three"]
    assert luis.take("message") == [] and [m.text for m in own.take("message")] == ["three"]
