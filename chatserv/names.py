"""Rules for user and room names.

Names are compared by a canonical key (NFKC, then case-folded) so that look-alike
spellings such as "Ana" and "ＡＮＡ" cannot be online at once, while the name is
always shown as its owner wrote it.
"""

from __future__ import annotations

import unicodedata

MAX_NAME_LENGTH = 32


class BadName(ValueError):
    """The name is empty, too long, or contains characters a name may not have."""


def name_key(name: str) -> str:
    """Return the key under which *name* is unique."""
    return unicodedata.normalize("NFKC", name).casefold()


def check_name(name: object) -> str:
    """Return *name* if it is a valid user or room name, else raise :class:`BadName`."""
    if not isinstance(name, str) or not name:
        raise BadName("el nombre no puede estar vacío")
    if len(name) > MAX_NAME_LENGTH:
        raise BadName(f"el nombre tiene más de {MAX_NAME_LENGTH} caracteres")
    for char in name:
        # Z* is white space of every kind; C* is control, format, surrogate,
        # private-use and unassigned: all of them make names impossible to
        # read or to type back.
        if unicodedata.category(char)[0] in "ZC":
            raise BadName("el nombre no puede tener espacios ni caracteres de control")
    key = name_key(name)
    if not key or any(unicodedata.category(c)[0] in "ZC" for c in key):
        raise BadName("el nombre no puede tener espacios ni caracteres de control")
    return name
