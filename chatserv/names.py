"""Rules for user and room names.

What a name may contain is the PRECIS ``UsernameCaseMapped`` profile of
RFC 8265 (as implemented by ``precis-i18n``): letters, digits and ASCII
punctuation, no spaces, symbols, controls, default-ignorable characters
(U+034F, U+FE0F, U+17B4, U+3164 …) or compatibility forms; and at least one
letter or digit, so that no name is blank or punctuation only.

Names are compared by a key: NFKC and case folding (``Ana``, ``ana`` and
``ＡＮＡ`` are one name), then the confusable skeleton of Unicode TS #39
(``Ana`` and Cyrillic ``Аna``, ``l`` and ``I`` are one name too). The
skeleton's data is Unicode's confusables.txt as ``confusable-homoglyphs``
ships it; see :func:`_prototypes` for how the mapping is read from it. A name
is always shown as its owner wrote it; the key is used for ownership (who is
online, which account a name belongs to) and for storage.
"""

from __future__ import annotations

import functools
import unicodedata

from confusable_homoglyphs.utils import load as _load_data
from precis_i18n import get_profile

MAX_NAME_LENGTH = 32

_PROFILE = get_profile("UsernameCaseMapped")
#: Longer strings are not names: their keys are computed, never cached.
_CACHED_LENGTH = 4 * MAX_NAME_LENGTH


class BadName(ValueError):
    """The name is empty, too long, or contains characters a name may not have."""


def _strip_marks(text: str) -> str:
    # confusable-homoglyphs keeps the left-to-right marks that confusables.txt
    # puts around right-to-left characters in its comments.
    if len(text) > 2 and text[0] == text[-1] == "\u200e":
        return text[1:-1]
    return text


@functools.cache
def _prototypes() -> dict[str, str]:
    """Each confusable character -> the prototype its skeleton uses.

    confusables.txt maps a source character to a prototype (one or more
    characters), and no prototype is itself a source. confusable-homoglyphs
    stores each line in both directions, so the direction is read back: a
    character with several partners is a prototype (its partners are its
    sources); a character whose one partner is a sequence or a character
    with several partners is a source of that partner. A pair of characters that only
    have each other is mapped to one of them (see :func:`_rank`): the
    skeleton then treats them as one, which is all a skeleton is for.
    """
    # The package's annotated matrix is ~100,000 small objects; building
    # the table from a packed copy lets all of them go (about 16 MB of
    # resident memory otherwise stays with the server for good).
    packed = _packed_table()
    return dict(entry.split("\x01", 1) for entry in packed.split("\x00"))


def _packed_table() -> str:
    # The data file, not the package's confusables module: that one keeps the
    # matrix (and script tables) loaded at import.
    partners: dict[str, list[str]] = {}
    for char, entries in _load_data("confusables.json").items():
        partners[_strip_marks(char)] = [_strip_marks(e["c"]) for e in entries]
    table: dict[str, str] = {}
    for char, others in partners.items():
        if len(char) != 1 or len(others) != 1:
            continue
        (other,) = others
        if len(other) != 1 or len(partners.get(other, ())) > 1:
            table[char] = other
        elif _rank(other) < _rank(char):
            table[char] = other
    return "\x00".join(f"{char}\x01{other}" for char, other in table.items())


def _rank(char: str) -> tuple[bool, str]:
    # Of a pair, the one NFKC leaves alone is the prototype, else the smaller.
    return (unicodedata.normalize("NFKC", char) != char, char)


def _skeleton(text: str) -> str:
    """The UTS #39 skeleton of *text*, for names that are compared without case.

    A skeleton alone is case-sensitive (capital ``I`` looks like ``l``, small
    ``i`` does not), and case folding alone misses look-alikes. So the text
    is upper-cased first and the skeleton taken, which catches "AIice" for
    "Alice"; then it is folded and the skeleton taken again, until nothing
    changes, which catches the small look-alikes ("rn" for "m"). Both
    spellings of "Ali" and "All" get one key: erring towards "the same name"
    only ever refuses a name, never lets one impersonate another.
    """
    table = _prototypes()
    text = text.upper()
    for _ in range(4):
        mapped = "".join(table.get(c, c) for c in unicodedata.normalize("NFD", text))
        mapped = unicodedata.normalize("NFC", unicodedata.normalize("NFD", mapped).casefold())
        if mapped == text:
            break
        text = mapped
    return text


def rekey(old_key: str) -> str:
    """The key of a name whose key before issue 11 (NFKC, then case folding)
    was *old_key*: storage migration 4 turns old keys into new ones with it."""
    return _skeleton(old_key)


# Keys are taken on every message's path (rooms, conversations): cached,
# 16,384 strings of at most 128 characters, a few MB at worst.
@functools.lru_cache(maxsize=1 << 14)
def _cached_key(name: str) -> str:
    return _skeleton(unicodedata.normalize("NFKC", name).casefold())


def name_key(name: str) -> str:
    """Return the key under which *name* is unique (see the module docstring)."""
    if len(name) > _CACHED_LENGTH:
        # No valid name is this long: any key is good enough, and this one
        # costs no skeleton and no cache entry.
        return unicodedata.normalize("NFKC", name).casefold()
    return _cached_key(name)


def check_name(name: object) -> str:
    """Return *name* if it is a valid user or room name, else raise :class:`BadName`."""
    if not isinstance(name, str) or not name:
        raise BadName("el nombre no puede estar vacío")
    if len(name) > MAX_NAME_LENGTH:
        raise BadName(f"el nombre tiene más de {MAX_NAME_LENGTH} caracteres")
    return _checked(name)


# A login checks its name twice (accounts, then the hub), and the PRECIS
# profile is most of that check: valid names are remembered (refusals are
# exceptions, which lru_cache does not keep, so they are checked each time).
@functools.lru_cache(maxsize=1 << 12)
def _checked(name: str) -> str:
    if name.isascii() and name.isprintable() and " " not in name:
        # Every character from "!" to "~" is PVALID in PRECIS's
        # IdentifierClass (ASCII7), none is Z* or C*, and no mapping of
        # UsernameCaseMapped takes one out of that set: the profile accepts
        # such a name, and only the letter-or-digit rule is left. The full
        # check costs some 30 µs a name, most of a guest login's CPU
        # (tests/test_names_fast.py holds the two to the same answers).
        if not any(c.isalnum() for c in name):
            raise BadName(NO_LETTER)
        return name
    return _full_check(name)


def _full_check(name: str) -> str:
    for char in name:
        # Z* is white space of every kind; C* is control, format, surrogate,
        # private-use and unassigned: all of them make names impossible to
        # read or to type back.
        if unicodedata.category(char)[0] in "ZC":
            raise BadName("el nombre no puede tener espacios ni caracteres de control")
    try:
        _PROFILE.enforce(name)
    except UnicodeError as e:
        bad = getattr(e, "object", name)[getattr(e, "start", 0) : getattr(e, "end", 0)]
        where = f" (U+{ord(bad[0]):04X})" if bad else ""
        raise BadName(f"el nombre tiene caracteres que no puede tener{where}") from None
    if not any(unicodedata.category(c)[0] in "LN" for c in name):
        raise BadName(NO_LETTER)
    return name


NO_LETTER = "el nombre necesita al menos una letra o un número"
