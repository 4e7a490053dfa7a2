"""Bounds on connections (issue 11, item 4): per address, in time, before login,
and within the file limit.

Unit tests on StringTransport and the fake clock (see test_protocol_unit); the
TLS handshake deadline is in tests/storage/test_tls.py.
"""

from __future__ import annotations

import resource

import pytest

from chatserv.addresses import host as _host
from chatserv.protocol import SWEEP_INTERVAL
from chatserv.service import FD_RESERVE, fit_file_limit
from tests.protocol_support import World
from tests.test_hub import Recorder


def tick(world: World, seconds: float) -> None:
    """Let *seconds* pass as the reactor would: one sweep a second."""
    for _ in range(round(seconds / SWEEP_INTERVAL)):
        world.clock.advance(SWEEP_INTERVAL)


# -- per address ------------------------------------------------------------------


def test_connections_per_address_are_bounded_and_others_are_not_affected():
    world = World(max_per_address=3)
    attacker = [world.connect("127.0.0.2") for _ in range(3)]
    refused = world.connect("127.0.0.2")
    assert refused.error()["code"] == "too_many_connections"
    assert refused.closing
    # A bystander from another address gets in and logs in.
    world.connect("127.0.0.3").login("Ana")
    # When one of the attacker's connections closes, its address may use the slot.
    attacker[0].lose()
    world.connect("127.0.0.2").login("Luis")
    assert not any(c.closing for c in attacker[1:])


def test_ipv6_clients_are_counted_by_their_64():
    from twisted.internet.address import IPv6Address

    assert _host(IPv6Address("TCP", "2001:db8:1:2:aaaa::1", 1)) == "2001:db8:1:2::/64"
    assert _host(IPv6Address("TCP", "2001:db8:1:2:bbbb::7", 1)) == "2001:db8:1:2::/64"
    assert _host(IPv6Address("TCP", "::ffff:10.0.0.1", 1)) == "10.0.0.1"


# -- deadlines, all on one timer ----------------------------------------------------


def test_a_connection_that_does_not_log_in_in_time_is_closed():
    world = World(login_timeout=30)
    idle = world.connect()
    quick = world.connect()
    quick.login("Ana")
    tick(world, 29)
    assert idle.lines() == [] and not idle.closing
    tick(world, 1 + SWEEP_INTERVAL)
    frame = idle.error()
    assert frame["code"] == "login_timeout"
    assert idle.closing
    assert not quick.closing


def test_a_failed_login_does_not_extend_the_deadline():
    world = World(login_timeout=30)
    conn = world.connect()
    tick(world, 20)
    conn.send(cmd="login", user="con espacio")
    assert conn.error()["code"] == "bad_name"
    tick(world, 10 + SWEEP_INTERVAL)
    assert conn.error()["code"] == "login_timeout"


def test_idle_connections_are_pinged_then_closed():
    world = World(idle_timeout=300, ping_grace=60)
    quiet = world.user("Quiet")
    answers = world.user("Answers")
    talks = world.user("Talks")
    plain = world.connect()
    plain.raw(b"Plain\n")
    world.settle(quiet, answers, talks, plain)
    for _ in range(6):
        tick(world, 50)
        talks.send(cmd="broadcast", msg="sigo aquí")
    tick(world, 2 * SWEEP_INTERVAL)
    assert {"cmd": "ping"} in quiet.frames()
    assert {"cmd": "ping"} in answers.frames()
    assert any("Sigues ahí" in line for line in plain.text())
    assert {"cmd": "ping"} not in talks.frames()
    answers.send(cmd="pong")
    plain.raw(b"\n")  # an empty line is an answer too
    assert answers.lines() == []  # pong has no answer
    tick(world, 60 + SWEEP_INTERVAL)
    assert quiet.frames()[-1]["code"] == "idle_timeout"
    assert quiet.closing
    assert not answers.closing and not plain.closing and not talks.closing
    # The others saw the idle one leave.
    assert world.hub.find("Quiet") is None
    assert world.hub.find("Answers") is not None


def test_participants_without_a_connection_are_never_timed_out():
    # The Telegram bridge's users are in the hub without a connection.
    world = World(idle_timeout=10, ping_grace=10)
    bridge = Recorder()
    world.hub.login(bridge, "Luis (TG)", trusted=True)
    world.user("Ana")
    tick(world, 100)
    assert world.hub.find("Luis (TG)") is not None
    assert world.hub.find("Ana") is None


def test_one_timer_serves_every_connection():
    world = World()
    conns = [world.connect(f"127.0.0.{2 + i // 50}") for i in range(200)]
    for i, c in enumerate(conns[:40]):
        c.login(f"u{i}")
    world.clock.advance(0)
    assert len(world.clock.getDelayedCalls()) == 1
    # And none at all once every connection has gone.
    for c in conns:
        c.lose()
    world.clock.advance(SWEEP_INTERVAL)
    world.clock.advance(0)
    assert world.clock.getDelayedCalls() == []


# -- lines before login -----------------------------------------------------------------


def test_the_unfinished_line_before_login_is_capped():
    world = World(max_line=65_536, max_login_line=16_384)
    conn = world.connect()
    conn.raw(b"{" + b"x" * 16_384)
    assert conn.error()["code"] == "line_too_long"
    assert conn.closing
    # After login the usual limit applies.
    ana = world.user("Ana")
    ana.raw(b'{"cmd":"broadcast","msg":"' + b"y" * 40_000 + b'"}\n')
    assert ana.frames()[0]["cmd"] == "broadcast"


# -- the file limit -------------------------------------------------------------------


@pytest.fixture
def nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    yield soft, hard
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_the_soft_file_limit_is_raised_for_max_connections(nofile):
    _, hard = nofile
    if hard != resource.RLIM_INFINITY and hard < 1000 + FD_RESERVE:
        pytest.skip(f"hard RLIMIT_NOFILE {hard} is too low for this test")
    resource.setrlimit(resource.RLIMIT_NOFILE, (200, hard))
    assert fit_file_limit(1000) == 1000
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] >= 1000 + FD_RESERVE


def test_max_connections_is_lowered_to_what_the_hard_file_limit_allows(nofile):
    _, hard = nofile
    if hard == resource.RLIM_INFINITY:
        pytest.skip("no hard RLIMIT_NOFILE")
    assert fit_file_limit(hard + 10_000) == hard - FD_RESERVE
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == hard
