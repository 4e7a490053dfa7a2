"""Text on both sides of the bridge: Telegram HTML out, chat text in.

Pure functions, no I/O, so they are tested on their own.
"""

from __future__ import annotations

import html
import unicodedata
from typing import Any

#: A reply's readable prefix in ``msg``, for clients that ignore ``reply_to``.
REPLY_PREFIX = "(respuesta a {who}: «{excerpt}») "
#: Marks a Telegram edit relayed as a new chat message.
EDIT_PREFIX = "(editado) "
EXCERPT_LENGTH = 40
NAME_LENGTH = 32

_ESCAPES = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}


def utf16_len(text: str) -> int:
    """Length as Telegram counts it: UTF-16 code units."""
    return len(text.encode("utf-16-le")) // 2


def escape(text: str) -> str:
    # Telegram's HTML mode knows only a few named entities; quotes need none.
    return html.escape(text, quote=False)


def render_line(sender: str | None, text: str) -> str:
    """One chat line as Telegram HTML: ``<b>Ana</b>: text``, or a notice in italics."""
    if sender is None:
        return f"<i>{escape(text)}</i>"
    return f"<b>{escape(sender)}</b>: {escape(text)}"


def split_text(sender: str | None, text: str, limit: int) -> list[str]:
    """Cut *text* into pieces whose :func:`render_line` fits in *limit*.

    The budget is counted on the escaped HTML, which is never shorter than
    what Telegram counts after parsing, so a piece is never refused as too
    long. Cuts prefer a line break, then a space, near the end of a piece.
    """
    budget = limit - utf16_len(render_line(sender, ""))
    if budget < 8:
        raise ValueError("message length limit too small for the sender's name")
    if utf16_len(escape(text)) <= budget:
        return [text]
    pieces = []
    start = 0
    while start < len(text):
        used = 0
        end = start
        while end < len(text):
            ch = text[end]
            cost = len(_ESCAPES[ch]) if ch in _ESCAPES else (2 if ord(ch) > 0xFFFF else 1)
            if used + cost > budget:
                break
            used += cost
            end += 1
        if end < len(text):
            floor = start + (end - start) * 4 // 5
            for sep in ("\n", " "):
                cut = text.rfind(sep, floor, end)
                if cut > start:
                    end = cut + 1
                    break
        pieces.append(text[start:end])
        start = end
    return pieces


def clean_name(name: str) -> str:
    """A Telegram display name made fit for the chat's user list: no control or
    format characters, runs of white space as one space, at most 32 characters."""
    out: list[str] = []
    for ch in unicodedata.normalize("NFC", name):
        cat = unicodedata.category(ch)
        if cat[0] == "Z" or ch in "\t\n\r":
            if out and out[-1] != " ":
                out.append(" ")
        elif cat[0] != "C":
            out.append(ch)
    return "".join(out).strip()[:NAME_LENGTH].strip()


def display_name(user: Any, chat: Any = None) -> str:
    """The name a Telegram sender is shown by, before the marker.

    Anonymous admins and channels post with ``sender_chat``; their title is
    the only name they have.
    """
    if chat is not None:
        return clean_name(getattr(chat, "title", None) or "") or "Telegram"
    if user is None:
        return "Telegram"
    full = " ".join(p for p in (user.first_name, user.last_name) if p)
    return clean_name(full) or clean_name(user.username or "") or f"tg{user.id}"


def excerpt(text: str, length: int = EXCERPT_LENGTH) -> str:
    """The first line of *text*, cut to *length* characters with an ellipsis."""
    line = text.strip().split("\n", 1)[0].strip()
    if len(line) > length or "\n" in text.strip():
        return line[:length].rstrip() + "…"
    return line


def reply_text(who: str, quoted: str, text: str) -> str:
    return REPLY_PREFIX.format(who=who, excerpt=excerpt(quoted)) + text


def edit_text(text: str) -> str:
    return EDIT_PREFIX + text


def _file_name(doc: Any) -> str:
    name = getattr(doc, "file_name", None)
    return f" {name}" if name else ""


def placeholder(message: Any) -> str | None:
    """A short text standing for a Telegram message's media, or None for text.

    Checked in an order that matters: an animation also carries a document,
    a venue also a location.
    """
    if message.photo:
        return "[foto]"
    if message.sticker is not None:
        emoji = message.sticker.emoji
        return f"[sticker {emoji}]" if emoji else "[sticker]"
    if message.animation is not None:
        return "[GIF]"
    if message.video is not None:
        return "[vídeo]"
    if message.video_note is not None:
        return "[videomensaje]"
    if message.voice is not None:
        return "[audio de voz]"
    if message.audio is not None:
        title = getattr(message.audio, "title", None)
        return f"[audio {title}]" if title else "[audio]"
    if message.document is not None:
        return f"[documento{_file_name(message.document)}]"
    if message.venue is not None:
        return f"[lugar {message.venue.title}]"
    if message.location is not None:
        loc = message.location
        return f"[ubicación {loc.latitude:.5f},{loc.longitude:.5f}]"
    if message.contact is not None:
        names = " ".join(p for p in (message.contact.first_name, message.contact.last_name) if p)
        return f"[contacto {names}]"
    if message.poll is not None:
        return f"[encuesta: {message.poll.question}]"
    if message.dice is not None:
        return f"[dado {message.dice.emoji} {message.dice.value}]"
    return None


def message_body(message: Any) -> str | None:
    """What a Telegram message says in the chat: its text, or a placeholder and
    its caption; None for service messages (joins, pins, title changes...)."""
    if message.text is not None:
        return message.text
    mark = placeholder(message)
    if mark is None:
        return None
    caption = message.caption
    return f"{mark} {caption}" if caption else mark
