"""The notices nodes send each other on the bus: one JSON object per notice.

``t`` says what it is:

* ``m``: a committed message (``pos`` its stream position), room (``room``) or private (``to``);
* ``c``: a recorded correction (edit: ``text``; deletion: ``text`` null), with its ``pos``;
* ``y``: somebody types, in a room (``room``) or to one user (``key``: the recipient's name key);
* ``p``: membership on node ``node``: ``who`` joined (``j``) or left (``l``) the room ``room``;
* ``h``: node ``node`` is alive, and ``pos`` is the last position it committed;
* ``s``: node ``node`` has written its members whole (after a reconnect): read them;
* ``g``: node ``node`` is gone (reaped), with all its members and names.

Events are encoded once per notice, never per recipient; the notices of
one commit batch travel in one publication, as a JSON array.
"""

from __future__ import annotations

import json
from typing import Any

from ..events import ChatMessage, Correction, Typing

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def message_notice(message: ChatMessage, node: str) -> str:
    notice: dict[str, Any] = {
        "t": "m", "n": node, "pos": message.pos, "id": message.id, "ts": message.ts,
        "from": message.sender, "text": message.text,
    }
    if message.room is not None:
        notice["room"] = message.room
    else:
        notice["to"] = message.recipient
    for name in ("reply_to", "edit_of", "cid", "sender_key"):
        value = getattr(message, name, None)
        if value is not None:
            notice[name] = value
    return _dumps(notice)  # type: ignore[no-any-return]


def decode_message(notice: dict[str, Any]) -> ChatMessage:
    message = ChatMessage(
        notice["id"], notice["ts"], notice["from"], notice["text"],
        room=notice.get("room"), recipient=notice.get("to"),
        reply_to=notice.get("reply_to"), edit_of=notice.get("edit_of"),
    )
    message.pos = notice["pos"]
    for name in ("cid", "sender_key"):
        if name in notice:
            setattr(message, name, notice[name])
    return message


def correction_notice(correction: Correction, node: str) -> str:
    return _dumps(  # type: ignore[no-any-return]
        {
            "t": "c", "n": node, "pos": correction.pos, "id": correction.id,
            "ts": correction.ts, "from": correction.sender, "text": correction.text,
            "room": correction.room, "to": correction.recipient,
        }
    )


def decode_correction(notice: dict[str, Any]) -> Correction:
    correction = Correction(
        notice["id"], notice["ts"], notice["from"], notice["text"],
        room=notice.get("room"), recipient=notice.get("to"),
    )
    correction.pos = notice["pos"]
    return correction


def typing_notice(typing: Typing, key: str, node: str) -> str:
    return _dumps({"t": "y", "n": node, "user": typing.user, "room": typing.room, "key": key})  # type: ignore[no-any-return]


def presence_notice(node: str, room: str, joined: str | None, left: str | None) -> str:
    notice: dict[str, Any] = {"t": "p", "n": node, "room": room}
    if joined is not None:
        notice["j"] = joined
    if left is not None:
        notice["l"] = left
    return _dumps(notice)  # type: ignore[no-any-return]


def heartbeat_notice(node: str, pos: int) -> str:
    return _dumps({"t": "h", "n": node, "pos": pos})  # type: ignore[no-any-return]


def synced_notice(node: str) -> str:
    return _dumps({"t": "s", "n": node})  # type: ignore[no-any-return]


def gone_notice(node: str) -> str:
    return _dumps({"t": "g", "n": node})  # type: ignore[no-any-return]


def batch(notices: list[str]) -> str:
    """Several encoded notices as one publication."""
    return "[" + ",".join(notices) + "]"


def decode(data: str) -> list[dict[str, Any]]:
    """The notices of one publication."""
    found = json.loads(data)
    notices = found if isinstance(found, list) else [found]
    for notice in notices:
        if not isinstance(notice, dict) or "t" not in notice:
            raise ValueError("not a notice")
    return notices
