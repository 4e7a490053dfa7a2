"""Compile the client's gettext catalogs (.po -> .mo) without GNU gettext.

The compiled ``.mo`` files are committed next to their ``.po`` sources so that
``pip install .``, ``pip install -e .`` and a plain checkout all find a usable
catalog without a build step (setuptools has no hook for msgfmt, and requiring
GNU gettext on every machine for two tiny catalogs is not worth it). A test
compiles every ``.po`` again and compares the bytes, so the two never drift.

Run ``python -m chatserv.client.msgfmt`` after editing a ``.po`` file.
"""

from __future__ import annotations

import ast
import struct
import sys
from pathlib import Path

LOCALE_DIR = Path(__file__).with_name("locale")
DOMAIN = "chatserv_client"


def parse_po(text: str) -> dict[str, str]:
    """Return {msgid: msgstr} of a .po file; plural entries use gettext's
    NUL-joined form and fuzzy or untranslated entries are left out, as
    msgfmt does."""
    catalog: dict[str, str] = {}
    entry: dict[str, list[str]] = {}
    fuzzy = False
    current: str | None = None

    def flush() -> None:
        nonlocal entry, fuzzy, current
        if "msgid" in entry:
            msgid = "".join(entry["msgid"])
            if "msgid_plural" in entry:
                msgid += "\0" + "".join(entry["msgid_plural"])
                forms = sorted(k for k in entry if k.startswith("msgstr["))
                msgstr = "\0".join("".join(entry[k]) for k in forms)
            else:
                msgstr = "".join(entry.get("msgstr", []))
            # msgfmt keeps the header (msgid "") even though it is "fuzzy"-free
            if msgstr.replace("\0", "") and (not fuzzy or msgid == ""):
                catalog[msgid] = msgstr
        entry, fuzzy, current = {}, False, None

    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            flush()
            continue
        if line.startswith("#"):
            if line.startswith("#,") and "fuzzy" in line:
                if "msgid" in entry:
                    flush()
                fuzzy = True
            continue
        if line.startswith('"'):
            if current is None:
                raise ValueError(f"continuation line without a keyword: {raw!r}")
            entry[current].append(ast.literal_eval(line))
            continue
        keyword, _, rest = line.partition(" ")
        if keyword == "msgid" and "msgid" in entry:
            flush()
        current = keyword
        entry[current] = [ast.literal_eval(rest.strip())]
    flush()
    return catalog


def make_mo(catalog: dict[str, str]) -> bytes:
    """Serialise a catalog in the GNU .mo format (little endian, no hash table)."""
    keys = sorted(catalog)
    ids = [k.encode("utf-8") for k in keys]
    strs = [catalog[k].encode("utf-8") for k in keys]
    header_size = 7 * 4
    table_size = len(keys) * 8
    ids_start = header_size + 2 * table_size
    offsets_ids: list[tuple[int, int]] = []
    blob = b""
    for data in ids:
        offsets_ids.append((len(data), ids_start + len(blob)))
        blob += data + b"\0"
    strs_start = ids_start + len(blob)
    offsets_strs: list[tuple[int, int]] = []
    blob2 = b""
    for data in strs:
        offsets_strs.append((len(data), strs_start + len(blob2)))
        blob2 += data + b"\0"
    out = struct.pack(
        "<7I", 0x950412DE, 0, len(keys), header_size, header_size + table_size, 0, 0
    )
    for length, offset in offsets_ids:
        out += struct.pack("<2I", length, offset)
    for length, offset in offsets_strs:
        out += struct.pack("<2I", length, offset)
    return out + blob + blob2


def po_files() -> list[Path]:
    return sorted(LOCALE_DIR.glob(f"*/LC_MESSAGES/{DOMAIN}.po"))


def compile_all() -> list[Path]:
    written = []
    for po in po_files():
        mo = po.with_suffix(".mo")
        mo.write_bytes(make_mo(parse_po(po.read_text(encoding="utf-8"))))
        written.append(mo)
    return written


if __name__ == "__main__":
    for path in compile_all():
        print(path, file=sys.stderr)


def extract_messages(sources: list[Path] | None = None) -> set[str]:
    """Every literal msgid passed to ``_`` or ``ngettext`` in the client's
    sources (``ngettext`` entries as ``singular\\0plural``, as in a .mo)."""
    if sources is None:
        sources = sorted(Path(__file__).parent.glob("*.py"))
    found: set[str] = set()
    for path in sources:
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name):
                continue
            args = node.args
            consts = [a.value for a in args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
            if node.func.id == "_" and len(args) == 1 and consts:
                found.add(consts[0])
            elif node.func.id == "ngettext" and len(consts) >= 2:
                found.add(f"{consts[0]}\0{consts[1]}")
    return found
