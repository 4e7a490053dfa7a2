"""All rooms' history windows together stay within ``--history-memory``
(issue 11, item 3): the least recently used windows are evicted."""

from __future__ import annotations

from twisted.internet.testing import MemoryReactorClock

from chatserv.hub import GENERAL, Hub
from chatserv.windows import cost_of
from tests.protocol_support import Silent

TEXT = "x" * 60_000


def consistent(hub: Hub) -> bool:
    """The counts the hub keeps agree with what the windows hold."""
    rooms = hub.rooms.values()
    for room in rooms:
        held = sum(cost_of(m) for m in room.history) + sum(len(d) for d in room.wire.values())
        if room.cost != held:
            return False
    return hub.windows.used == sum(room.cost for room in rooms)


def held(hub: Hub) -> int:
    """Bytes of message text the windows hold, counted independently of the hub."""
    return sum(len(m.text) for room in hub.rooms.values() for m in room.history)


def test_windows_of_many_rooms_stay_within_the_budget():
    clock = MemoryReactorClock()
    hub = Hub(clock, history_size=50, history_memory=1_000_000)
    sessions = [hub.login(Silent(), f"u{i}") for i in range(10)]
    hub.broadcast(sessions[0], "hola")
    clock.advance(0)
    for i, session in enumerate(sessions):
        for j in range(10):
            hub.join(session, f"sala{i}x{j}")
    for _ in range(3):
        for i, session in enumerate(sessions):
            for j in range(10):
                hub.broadcast(session, TEXT, f"sala{i}x{j}")
                clock.advance(0)
                assert hub.windows.used <= 1_000_000
                assert held(hub) <= 1_000_000
    # 300 messages of 60 KB were posted to 100 rooms in turn: the windows of
    # the rooms written last hold the newest, the others were evicted.
    last = hub.room("sala9x9")
    assert last is not None and [m.id for m in last.history] == [hub.ids.upcoming - 1]
    assert 10 <= sum(bool(room.history) for room in hub.rooms.values()) <= 17
    assert [m.text for m in hub.recent(GENERAL)] == ["hola"]
    assert consistent(hub)
    # Without a database an evicted window is simply gone.
    first = hub.room("sala0x0")
    assert first is not None and list(first.history) == [] and not first.partial


def test_a_room_alone_over_the_budget_keeps_its_newest_messages():
    clock = MemoryReactorClock()
    hub = Hub(clock, history_size=50, history_memory=200_000)
    ana = hub.login(Silent(), "Ana")
    for _ in range(10):
        hub.broadcast(ana, TEXT)
        clock.advance(0)
    assert hub.windows.used <= 200_000
    window = hub.recent(GENERAL)
    assert 1 <= len(window) < 10 and window[-1].id == max(m.id for m in window)


def test_the_cached_window_encoding_is_counted_and_released():
    clock = MemoryReactorClock()
    hub = Hub(clock, history_size=50, history_memory=10_000_000)
    ana = hub.login(Silent(), "Ana")
    hub.broadcast(ana, TEXT)
    clock.advance(0)
    before = hub.windows.used
    room = hub.rooms[GENERAL]
    frame = hub.window_frame(room, "json", lambda r: b"y" * 70_000)
    assert hub.windows.used == before + len(frame)
    hub.broadcast(ana, "otro")
    clock.advance(0)
    assert "json" not in room.wire
    assert hub.windows.used < before + len(frame)
    # Dropping a room (its last member left) releases its window.
    hub.join(ana, "cine")
    hub.broadcast(ana, TEXT, "cine")
    clock.advance(0)
    with_cine = hub.windows.used
    hub.leave(ana, "cine")
    hub.flush_all_presence()
    assert hub.room("cine") is None
    assert hub.windows.used < with_cine - 60_000
    assert consistent(hub)
