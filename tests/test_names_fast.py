"""chatserv.names: the ASCII fast path of check_name gives the full PRECIS
check's answer for every printable ASCII name shape."""

from __future__ import annotations

import itertools

import pytest

from chatserv.names import MAX_NAME_LENGTH, BadName, _checked, _full_check, check_name

ASCII = [chr(c) for c in range(0x20, 0x7F)]


def verdict(check, name):
    try:
        return check(name)
    except BadName as e:
        return ("refused", str(e))


def test_every_two_character_ascii_name_gets_the_full_checks_answer():
    for a, b in itertools.product(ASCII, repeat=2):
        name = a + b
        _checked.cache_clear()
        assert verdict(check_name, name) == verdict(_full_check, name), repr(name)


@pytest.mark.parametrize(
    "name", ["Ana", "ana_2", "B0B", "-_-", "...", "a.b-c", "~x~", "Luis(TG)", "x" * MAX_NAME_LENGTH, "a b"]
)
def test_typical_names(name):
    _checked.cache_clear()
    assert verdict(check_name, name) == verdict(_full_check, name)
