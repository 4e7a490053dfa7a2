"""Interface language for the client (gettext, catalogs shipped in the package).

Modules import ``_`` and ``ngettext`` from here at import time; both look up
the translation installed *when they are called*, so ``--lang`` can be applied
after the modules are imported (and tests can switch language per test).
"""

from __future__ import annotations

import gettext
import os

from chatserv.client.msgfmt import DOMAIN, LOCALE_DIR

LANGUAGES = ("es", "en")

_current: gettext.NullTranslations = gettext.NullTranslations()
_current_lang = "en"


def _from_environment() -> str | None:
    # Same variables, same order as gettext itself; "es_MX.UTF-8" -> "es".
    for var in ("LANGUAGE", "LC_ALL", "LC_MESSAGES", "LANG"):
        value = os.environ.get(var)
        if not value:
            continue
        for part in value.split(":"):
            code = part.split(".")[0].split("@")[0].split("_")[0].lower()
            if code in LANGUAGES:
                return code
        # The first variable that is set wins, even for an unknown language.
        return None
    return None


def install(lang: str | None = None) -> str:
    """Select the interface language: ``lang`` if given, else the locale
    environment, else English. Returns the language in use."""
    global _current, _current_lang
    code = (lang or "").split("_")[0].lower() or _from_environment() or "en"
    if code not in LANGUAGES:
        code = "en"
    _current = gettext.translation(
        DOMAIN, localedir=str(LOCALE_DIR), languages=[code], fallback=True
    )
    _current_lang = code
    return code


def current_language() -> str:
    return _current_lang


def _(message: str) -> str:
    return _current.gettext(message)


def ngettext(singular: str, plural: str, n: int) -> str:
    return _current.ngettext(singular, plural, n)


def join_names(names: list[str]) -> str:
    """'Ana', 'Ana and Luis', 'Ana, Luis and Eva' in the interface language."""
    if not names:
        return ""
    if len(names) == 1:
        return names[0]
    return _("{first} and {last}").format(
        first=", ".join(names[:-1]), last=names[-1]
    )
