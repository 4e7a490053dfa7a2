"""Large rooms for ``lazy_members`` clients (chatserv.dialects.members):
count and first page instead of the whole list, ``members`` pages, and one
count-carrying ``presence`` frame per window; seed-000 clients unchanged."""

from __future__ import annotations

import json

import pytest

from chatserv.dialects import members
from chatserv.hub import presence_window
from tests.protocol_support import Silent, World

LAZY = ["lazy_members"]


@pytest.fixture
def world():
    return World()


def fill(world, count, prefix="m"):
    """*count* quiet members in general, their presence announced."""
    sessions = [world.hub.login(Silent(), f"{prefix}{i:04d}") for i in range(count)]
    world.hub.flush_all_presence()
    return sessions


def end_window(world):
    world.clock.advance(presence_window(len(world.hub.rooms["general"].members)) + 0.01)


def login_answer(world, name, **extra):
    conn = world.connect()
    conn.send(cmd="login", user=name, **extra)
    frames = conn.frames()
    end_window(world)
    frames += conn.frames()
    assert [f["cmd"] for f in frames] == ["history", "users"], frames
    return conn, frames[1]


def test_small_room_lazy_client_gets_the_whole_list(world):
    fill(world, 3)
    conn, users = login_answer(world, "Ana", features=LAZY)
    assert users == {"cmd": "users", "room": "general", "list": ["m0000", "m0001", "m0002", "Ana"]}


def test_large_room_lazy_login_gets_count_and_first_page(world):
    fill(world, members.LAZY_THRESHOLD)
    conn, users = login_answer(world, "Ana", features=LAZY)
    count = members.LAZY_THRESHOLD + 1
    assert users["count"] == count and users["more"] is True
    # Case-folded name order: "Ana" before every "m…".
    assert users["list"] == ["Ana"] + [f"m{i:04d}" for i in range(members.FIRST_PAGE - 1)]


def test_large_room_seed000_client_still_gets_the_whole_list(world):
    fill(world, members.LAZY_THRESHOLD + 10)
    conn, users = login_answer(world, "Ana")
    assert set(users) == {"cmd", "room", "list"}
    assert len(users["list"]) == members.LAZY_THRESHOLD + 11 and users["list"][-1] == "Ana"


def test_members_pages_cover_the_room_once(world):
    fill(world, 700)
    conn, users = login_answer(world, "Ana", features=LAZY)
    seen = list(users["list"])
    after = seen[-1]
    for _ in range(10):
        conn.send(cmd="members", after=after, limit=250)
        (page,) = conn.frames()
        assert page["cmd"] == "members" and page["room"] == "general" and page["count"] == 701
        seen += page["list"]
        if not page["more"]:
            break
        after = page["list"][-1]
    assert len(seen) == len(set(seen)) == 701
    assert seen == sorted(seen, key=str.casefold)


def test_members_is_for_any_member_and_bounded(world):
    fill(world, 3)
    ana = world.user("Ana")  # no features: the command works all the same
    ana.send(cmd="members", limit=2)
    assert ana.frame() == {
        "cmd": "members", "room": "general", "list": ["Ana", "m0000"], "count": 4, "more": True,
    }
    ana.send(cmd="members", after="m0001")
    assert ana.frame()["list"] == ["m0002"]
    ana.send(cmd="members", limit=0)
    assert ana.error()["code"] == "bad_request"
    ana.send(cmd="members", after="no vale")
    assert ana.error()["code"] == "bad_name"
    ana.send(cmd="members", room="cine")
    assert ana.error()["code"] == "not_in_room"
    fill(world, members.MAX_PAGE + 5, prefix="x")
    ana.lines()
    ana.send(cmd="members", limit=members.MAX_PAGE * 3)
    assert len(ana.frame()["list"]) == members.MAX_PAGE


def test_users_command_in_a_large_room_answers_the_first_page(world):
    fill(world, members.LAZY_THRESHOLD + 1)
    conn, _ = login_answer(world, "Ana", features=LAZY)
    conn.send(cmd="users")
    users = conn.frame()
    assert len(users["list"]) == members.FIRST_PAGE and users["more"] is True
    assert users["count"] == members.LAZY_THRESHOLD + 2


def test_lazy_presence_is_a_count_and_small_deltas(world):
    fill(world, members.LAZY_THRESHOLD)
    lazy, _ = login_answer(world, "Ana", features=LAZY)
    seed, _ = login_answer(world, "Eva")
    assert lazy.frames() == [
        {"cmd": "presence", "room": "general", "joined": ["Eva"], "left": [], "count": 502}
    ]
    luis, _ = login_answer(world, "Luis", features=LAZY)
    lazy_frames = lazy.frames()
    seed_frames = seed.frames()
    assert lazy_frames == [
        {"cmd": "presence", "room": "general", "joined": ["Luis"], "left": [], "count": 503}
    ]
    # Seed 000: the notice and the whole list, as always.
    assert [f["cmd"] for f in seed_frames] == ["system", "users"]
    assert len(seed_frames[1]["list"]) == 503
    luis.lose()
    end_window(world)
    assert lazy.frames() == [
        {"cmd": "presence", "room": "general", "joined": [], "left": ["Luis"], "count": 502}
    ]


def test_lazy_presence_of_a_storm_window_says_reload():
    world = World(max_per_address=0)
    fill(world, members.LAZY_THRESHOLD)
    lazy, _ = login_answer(world, "Ana", features=LAZY)
    newcomers = [world.connect() for _ in range(members.MAX_PRESENCE_NAMES + 1)]
    for i, conn in enumerate(newcomers):
        conn.send(cmd="login", user=f"n{i:04d}", features=LAZY)
    end_window(world)
    (frame,) = lazy.frames()
    assert frame == {
        "cmd": "presence", "room": "general", "joined": [], "left": [], "reload": True,
        "count": members.LAZY_THRESHOLD + 2 + members.MAX_PRESENCE_NAMES,
    }
    # Every newcomer of the window got the same first page, encoded once.
    pages = [conn.lines()[-1] for conn in newcomers]
    assert len(set(pages)) == 1
    first = json.loads(pages[0])
    assert first["cmd"] == "users" and first["more"] is True and first["count"] == frame["count"]


def test_member_order_follows_joins_and_leaves(world):
    sessions = fill(world, 5)
    world.hub.logout(sessions[2])
    room = world.hub.rooms["general"]
    assert world.hub.member_page(room) == (["m0000", "m0001", "m0003", "m0004"], False)
    assert world.hub.member_page(room, "m0001", 1) == (["m0003"], True)
    assert len(room.order) == len(room.members)
