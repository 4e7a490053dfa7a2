"""How hub events look on the wire, in the JSON dialect and the plain-text one.

Every encoder stores its result in the event's ``wire`` cache, so an event that
goes to ten thousand connections is encoded once and the same ``bytes`` object
is written to all of them.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from .errors import ChatError
from .events import ChatMessage, Correction, PresenceChange, Typing

if TYPE_CHECKING:
    from .hub import Room

# allow_nan=False: NaN and Infinity are not JSON; no client could parse them.
_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode
# Error frames may echo client input that is not valid Unicode (a lone
# surrogate in a name, say); ASCII escapes keep those encodable.
_dumps_ascii = json.JSONEncoder(ensure_ascii=True, separators=(",", ":")).encode


def frame(obj: dict[str, Any]) -> bytes:
    """One JSON line."""
    return _dumps(obj).encode("utf-8") + b"\n"


def error_frame(code: str, msg: str, ref: str | None = None) -> bytes:
    obj: dict[str, Any] = {"cmd": "error", "code": code, "msg": msg}
    if ref is not None:
        obj["ref"] = ref
    try:
        return _dumps(obj).encode("utf-8") + b"\n"
    except UnicodeEncodeError:
        return _dumps_ascii(obj).encode("ascii") + b"\n"


#: The sentence each refusal reads as (``ChatError.reason`` -> template over
#: its ``params``). Clients see these texts; tests compare many of them.
ERROR_TEXTS: dict[str, str] = {
    # names and rooms (chatserv.hub)
    "name_rules": "{detail}",
    "trusted_name": "nombre vacío o con caracteres de control",
    "reserved_name": "el nombre {name} se parece a uno reservado para Telegram",
    "name_taken": "el nombre {name} ya está en uso",
    "name_lost": (
        "este servidor perdió el contacto con los demás y el nombre {name} pasó a otra sesión;"
        " vuelve a entrar con otro nombre"
    ),
    "too_many_rooms": "no se puede estar en más de {limit} salas",
    "room_creation": "demasiadas salas nuevas; espera un momento",
    "leave_general": "no se puede salir de la sala general",
    "not_in_room": "no estás en la sala {room}",
    # messages
    "not_online": "{name} no está conectado",
    "store_behind": "el servidor va con retraso guardando mensajes; reenvía en unos segundos",
    "not_visible": "no hay ningún mensaje con ese id a la vista",
    "other_conversation": "ese mensaje no es de esta conversación",
    "quoted_deleted": "ese mensaje se ha borrado",
    "already_deleted": "ese mensaje ya se ha borrado",
    "not_author": "solo su autor puede editar o borrar un mensaje",
    "edit_window": "solo se puede editar o borrar un mensaje durante {hours:g} horas",
    # password hashing (chatserv.hashing)
    "hashing_busy": "el servidor está ocupado comprobando contraseñas; vuelve a intentarlo en unos segundos",
    # the cluster (chatserv.cluster_redis)
    "cluster_unavailable": (
        "el servidor ha perdido el contacto con los demás nodos; vuelve a intentarlo en unos segundos"
    ),
}


def error_text(error: BaseException) -> str:
    """The sentence a client reads for *error*: a :class:`ChatError`'s
    template filled with its params, or the text of any other refusal."""
    if isinstance(error, ChatError):
        template = ERROR_TEXTS.get(error.reason)
        if template is not None:
            return template.format(**error.params)
    return str(error)


def clock_time(ts: float) -> str:
    """Seed 000's ``HH:MM:SS``, in the server's local time."""
    return time.strftime("%H:%M:%S", time.localtime(ts))


def iso_time(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z"
    )


class _Stamps:
    """Both time fields of a message, formatting each second only once.

    Under load thousands of messages share a second; formatting dates was a
    visible share of the private-message path.
    """

    __slots__ = ("second", "clock", "iso_prefix")

    def __init__(self) -> None:
        self.second = -1
        self.clock = ""
        self.iso_prefix = ""

    def __call__(self, ts: float) -> tuple[str, str]:
        second = int(ts)
        if second != self.second:
            self.second = second
            self.clock = clock_time(second)
            self.iso_prefix = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        # As datetime does: round to the microsecond, then truncate to the millisecond.
        micros = round((ts - second) * 1e6)
        if micros >= 1_000_000:
            return clock_time(ts), iso_time(ts)
        return self.clock, f"{self.iso_prefix}.{micros // 1000:03d}Z"


_stamps = _Stamps()


# -- JSON dialect ----------------------------------------------------------


def message_object(message: ChatMessage) -> dict[str, Any]:
    """The message as it appears in ``history`` items and ``broadcast`` frames."""
    obj = message.wire.get("obj")
    if obj is None:
        clock, iso = _stamps(message.ts)
        obj = message.wire["obj"] = {
            "id": message.id,
            "pos": message.pos,
            "time": clock,
            "ts": iso,
            "room": message.room,
            "from": message.sender,
            "msg": message.text,
        }
        if message.reply_to is not None:
            obj["reply_to"] = message.reply_to
        if message.edit_of is not None:
            obj["edit_of"] = message.edit_of
        _correction_marks(obj, message)
    return obj


def _correction_marks(obj: dict[str, Any], message: ChatMessage) -> None:
    if message.deleted is not None:
        obj["deleted"] = iso_time(message.deleted)
        obj.pop("reply_to", None)  # a removed message quotes nothing
    elif message.edited is not None:
        obj["edited"] = iso_time(message.edited)


def broadcast_frame(message: ChatMessage) -> bytes:
    data = message.wire.get("json")
    if data is None:
        data = message.wire["json"] = frame({"cmd": "broadcast", **message_object(message)})
    return data


def private_object(message: ChatMessage) -> dict[str, Any]:
    """A private message as it appears in ``private`` frames and private history."""
    clock, iso = _stamps(message.ts)
    obj = {
        "id": message.id,
        "pos": message.pos,
        "time": clock,
        "ts": iso,
        "from": message.sender,
        "to": message.recipient,
        "msg": message.text,
    }
    if message.reply_to is not None:
        obj["reply_to"] = message.reply_to
    _correction_marks(obj, message)
    return obj


def private_frame(message: ChatMessage) -> bytes:
    data = message.wire.get("json")
    if data is None:
        data = message.wire["json"] = frame({"cmd": "private", **private_object(message)})
    return data


def _sent_object(message: ChatMessage) -> dict[str, Any]:
    clock, iso = _stamps(message.ts)
    return {
        "cmd": "sent",
        "id": message.id,
        "pos": message.pos,
        "time": clock,
        "ts": iso,
        "to": message.recipient,
        "msg": message.text,
    }


def sent_frame(message: ChatMessage) -> bytes:
    data = message.wire.get("json-sent")
    if data is None:
        data = message.wire["json-sent"] = frame(_sent_object(message))
    return data


def own_frame(message: ChatMessage) -> bytes:
    """What the sender of *message*, sent with a ``cid``, reads as its
    confirmation, with that ``cid``: its ``broadcast`` echo, or ``sent`` for
    a private message (``private`` when it wrote to itself). Other
    recipients get the shared frames, without the cid."""
    data = message.wire.get("json-own")
    if data is None:
        if message.room is not None:
            obj = {"cmd": "broadcast", **message_object(message)}
        elif message.recipient != message.sender:
            obj = _sent_object(message)
        else:
            obj = {"cmd": "private", **private_object(message)}
        obj["cid"] = message.cid
        data = message.wire["json-own"] = frame(obj)
    return data


#: The most bytes of items one history answer carries (a ``history`` page, or
#: the window sent on ``login`` and ``join``): older items are left for the
#: next page. One item is always sent, however large, so that paging moves on;
#: the largest message is about 6 x ``--max-line`` once escaped.
MAX_PAGE_BYTES = 256 * 1024


def history_page(head: dict[str, Any], objects: list[dict[str, Any]], more: bool | None = None) -> bytes:
    """A ``history`` frame of *head*'s fields and the newest *objects* (given
    oldest first) that fit in :data:`MAX_PAGE_BYTES`; ``more`` (when not None)
    is set as well when older items had to be left out.

    Items are encoded one by one, newest first, so that a page of large
    messages stops at the bound instead of being built whole first.
    """
    parts: list[bytes] = []
    total = 0
    for obj in reversed(objects):
        item = _dumps(obj).encode("utf-8")
        if parts and total + len(item) + 1 > MAX_PAGE_BYTES:
            if more is not None:
                more = True
            break
        parts.append(item)
        total += len(item) + 1
    parts.reverse()
    start = _dumps(head).encode("utf-8")[:-1]  # the object without its closing brace
    end = b"}\n" if more is None else (b',"more":true}\n' if more else b',"more":false}\n')
    return b"".join((start, b',"items":[', b",".join(parts), b"]", end))


def forward_page(
    head: dict[str, Any], events: list[tuple[bool, dict[str, Any]]], more: bool
) -> bytes:
    """A ``history`` page forward (``after``): *events* in position order,
    each ``(is_message, object)``, split into ``items`` and ``corrections``.
    Within :data:`MAX_PAGE_BYTES` the oldest events are kept (at least one),
    so that the highest ``pos`` of the page is where the next one starts;
    ``more`` is then set too."""
    items: list[bytes] = []
    corrections: list[bytes] = []
    total = 0
    for is_message, obj in events:
        encoded = _dumps(obj).encode("utf-8")
        if total and total + len(encoded) + 1 > MAX_PAGE_BYTES:
            more = True
            break
        (items if is_message else corrections).append(encoded)
        total += len(encoded) + 1
    start = _dumps(head).encode("utf-8")[:-1]  # the object without its closing brace
    return b"".join(
        (
            start,
            b',"items":[', b",".join(items),
            b'],"corrections":[', b",".join(corrections),
            b'],"more":true}\n' if more else b'],"more":false}\n',
        )
    )


def history_frame(room: str, messages: list[ChatMessage]) -> bytes:
    return history_page({"cmd": "history", "room": room}, [message_object(m) for m in messages])


def room_history_frame(room: Room) -> bytes:
    """The room's history window. Callers get it through ``Hub.window_frame``,
    which caches it (a login storm encodes it once, not once per login) and
    counts it against the memory bound of history windows."""
    return history_frame(room.name, list(room.history))


def users_frame(room: str, names: tuple[str, ...] | list[str]) -> bytes:
    return frame({"cmd": "users", "room": room, "list": list(names)})


def members_page_frame(cmd: str, room: str, names: list[str], count: int, more: bool) -> bytes:
    """A page of a large room's member list for a ``lazy_members`` client:
    ``users`` (the first page, where others get the whole list) or
    ``members`` (an answer to ``members``); *count* is how many members it has."""
    return frame({"cmd": cmd, "room": room, "list": names, "count": count, "more": more})


def lazy_presence_frame(change: PresenceChange, max_names: int) -> bytes:
    """What a ``lazy_members`` client hears of a window's changes in a large
    room: the new member count, and who joined and left unless that is more
    than *max_names* names (then ``reload``: pages it holds may be stale).
    The same bytes for every such member: O(1) per member per window."""

    def make() -> bytes:
        obj: dict[str, Any] = {"cmd": "presence", "room": change.room}
        if len(change.joined) + len(change.left) > max_names:
            obj.update(joined=[], left=[], reload=True)
        else:
            obj.update(joined=list(change.joined), left=list(change.left))
        obj["count"] = len(change.members)
        return frame(obj)

    return _cached(change, "json-lazy", make)


def _name_list(names: tuple[str, ...], count: int) -> str:
    if count == 1:
        return names[0]
    if count <= 3:
        return ", ".join(names[:-1]) + " y " + names[-1]
    return ", ".join(names[:2]) + f" y {count - 2} más"


def join_text(names: tuple[str, ...], count: int = -1) -> str:
    """"Ana se ha unido al chat"; *count* (when not -1) is how many joined,
    of whom *names* holds at least the first three."""
    count = len(names) if count < 0 else count
    verb = "se ha unido" if count == 1 else "se han unido"
    return f"{_name_list(names, count)} {verb} al chat"


def leave_text(names: tuple[str, ...]) -> str:
    verb = "ha abandonado" if len(names) == 1 else "han abandonado"
    return f"{_name_list(names, len(names))} {verb} el chat"


def presence_frames(change: PresenceChange, own_name: str, delta: bool = False) -> bytes:
    """What one member hears of a membership change.

    A session that has just entered the room gets the full ``users`` list: this
    completes its login (or ``join``) answer, and during a login storm one list
    encoded per window serves every newcomer. Other members get ``system``
    notices and the new list (seed 000), or a ``presence`` delta.
    """
    if own_name in entered(change):
        return _cached(change, "json-users", lambda: users_frame(change.room, change.members))
    if delta:
        return _cached(
            change,
            "json-delta",
            lambda: frame(
                {
                    "cmd": "presence",
                    "room": change.room,
                    "joined": list(change.joined),
                    "left": list(change.left),
                }
            ),
        )
    return _cached(change, "json-system", lambda: _system_frames(change))


def entered(change: PresenceChange) -> frozenset[str]:
    """The names in ``change.joined``, as a set: every member of the room asks
    whether it is one of them, and a window of a login storm holds thousands
    (a scan of the tuple made each window cost members x newcomers)."""
    entered = change.wire.get("entered")
    if entered is None:
        entered = change.wire["entered"] = frozenset(change.joined)
    return entered  # type: ignore[no-any-return]


def _system_frames(change: PresenceChange) -> bytes:
    parts = []
    for event, names, text in (
        ("join", change.joined, join_text),
        ("leave", change.left, leave_text),
    ):
        if names:
            parts.append(
                frame(
                    {
                        "cmd": "system",
                        "room": change.room,
                        "event": event,
                        "users": list(names),
                        "msg": text(names),
                    }
                )
            )
    parts.append(users_frame(change.room, change.members))
    return b"".join(parts)


def _cached(change: PresenceChange, key: str, make: Any) -> bytes:
    data = change.wire.get(key)
    if data is None:
        data = change.wire[key] = make()
    return data


def typing_frame(typing: Typing) -> bytes:
    data = typing.wire.get("json")
    if data is None:
        obj: dict[str, Any] = {"cmd": "typing", "user": typing.user}
        if typing.room is None:
            obj["private"] = True
        else:
            obj["room"] = typing.room
        data = typing.wire["json"] = frame(obj)
    return data


def correction_object(correction: Correction) -> dict[str, Any]:
    """The ``edited`` or ``deleted`` frame as an object (also an item of
    ``corrections`` in a ``history`` page forward)."""
    clock, iso = _stamps(correction.ts)
    obj: dict[str, Any] = {
        "cmd": "deleted" if correction.deleted else "edited",
        "id": correction.id,
        "pos": correction.pos,
        "time": clock,
        "ts": iso,
        "from": correction.sender,
    }
    if correction.room is not None:
        obj["room"] = correction.room
    else:
        obj["to"] = correction.recipient
    if correction.text is not None:
        obj["msg"] = correction.text
    return obj


def correction_frame(correction: Correction) -> bytes:
    """``edited`` or ``deleted``: the same bytes for every recipient."""
    data = correction.wire.get("json")
    if data is None:
        data = correction.wire["json"] = frame(correction_object(correction))
    return data


# -- plain-text dialect (seed 004) -----------------------------------------


_TERMINAL_CONTROLS = {c: "\ufffd" for c in range(32) if chr(c) not in "\t\n"}
# DEL and the C1 controls (NEL U+0085 and CSI U+009B among them: some
# terminals act on them), and the Unicode line and paragraph separators.
_TERMINAL_CONTROLS.update({c: "\ufffd" for c in range(0x7F, 0xA0)})
_TERMINAL_CONTROLS[0x2028] = _TERMINAL_CONTROLS[0x2029] = "\ufffd"
_TERMINAL_CONTROLS[ord("\r")] = "\n"


def plain_line(text: str) -> bytes:
    """One logical line for a plain-text client, which is usually a terminal.

    A line break inside a message would read as a new message from nobody,
    and a carriage return or an escape sequence could paint a line that seems
    to come from someone else; so breaks become indented continuation lines
    and other control characters become U+FFFD. JSON clients get the text
    exactly as it was sent.
    """
    text = text.replace("\r\n", "\n")
    if not text.isprintable():
        text = text.translate(_TERMINAL_CONTROLS)
    return text.replace("\n", "\n  ").encode("utf-8") + b"\n"


def plain_message(message: ChatMessage, own_name: str, ids: bool = False) -> bytes:
    """A message for a plain-text client; with *ids* (``/ids on``) each line
    starts with ``[#ID]`` so that the user can ``/re ID`` it."""
    if message.reply_to is not None or ids:
        return _plain_tagged(message, own_name, ids)
    if message.room is not None:
        data = message.wire.get("plain")
        if data is None:
            data = message.wire["plain"] = plain_line(f"{message.sender}: {message.text}")
        return data
    if message.sender == own_name and message.recipient != own_name:
        return plain_line(f"[privado a {message.recipient}] {message.sender}: {message.text}")
    return plain_line(f"[privado] {message.sender}: {message.text}")


def _plain_tagged(message: ChatMessage, own_name: str, ids: bool) -> bytes:
    key = "plain-ids" if ids else "plain-reply"
    if message.room is not None and key in message.wire:
        return message.wire[key]  # type: ignore[no-any-return]
    tag = f"[#{message.id}] " if ids else ""
    if message.room is not None:
        head = ""
    elif message.sender == own_name and message.recipient != own_name:
        head = f"[privado a {message.recipient}] "
    else:
        head = "[privado] "
    data = plain_line(f"{tag}{head}{message.sender}: {message.text}")
    quoted = message.reply_to
    if quoted:
        # Its own line: "> Luis: ¿Vamos al cine?". A name holds no space, so
        # no message line can start like this one.
        data = plain_line(f"> {quoted.get('from', '?')}: {quoted.get('msg', '')}") + data
    if message.room is not None:
        message.wire[key] = data
    return data


def plain_history(message: ChatMessage, ids: bool = False) -> bytes:
    tag = f"[#{message.id}] " if ids else ""
    if message.deleted is not None:
        return plain_line(f"[{clock_time(message.ts)}] {tag}{message.sender}: (borrado)")
    mark = " (editado)" if message.edited is not None else ""
    line = plain_line(f"[{clock_time(message.ts)}] {tag}{message.sender}{mark}: {message.text}")
    quoted = message.reply_to
    if quoted:
        line = plain_line(f"> {quoted.get('from', '?')}: {quoted.get('msg', '')}") + line
    return line


def plain_correction(correction: Correction, ids: bool = False) -> bytes:
    """``* Ana ha editado: texto`` / ``* Ana ha borrado un mensaje.`` (with the
    id when the client asked for ids)."""
    where = "" if correction.room is not None else " privado"
    if correction.text is None:
        what = f"el mensaje{where} #{correction.id}" if ids else f"un mensaje{where}"
        return plain_line(f"* {correction.sender} ha borrado {what}.")
    which = f" #{correction.id}" if ids else (" un mensaje privado" if where else "")
    return plain_line(f"* {correction.sender} ha editado{which}: {correction.text}")


def plain_window(messages: list[ChatMessage]) -> bytes:
    """The newest of *messages* as history lines, within :data:`MAX_PAGE_BYTES`."""
    lines: list[bytes] = []
    total = 0
    for message in reversed(messages):
        line = plain_history(message)
        if lines and total + len(line) > MAX_PAGE_BYTES:
            break
        lines.append(line)
        total += len(line)
    lines.reverse()
    return b"".join(lines)


def plain_presence(change: PresenceChange, own_name: str) -> bytes:
    if own_name not in entered(change):
        # The same lines for every member that was there before the window.
        return _cached(change, "plain", lambda: _plain_presence(change.joined, change.left))
    # A newcomer hears of the others who came in its window; the text names
    # three at most, so only the first four need looking at.
    others = tuple(name for name in change.joined[:4] if name != own_name)
    return _plain_presence(others, change.left, len(change.joined) - 1)


def _plain_presence(joined: tuple[str, ...], left: tuple[str, ...], joined_count: int = -1) -> bytes:
    lines = []
    if joined:
        lines.append(plain_line(join_text(joined, joined_count) + "."))
    if left:
        lines.append(plain_line(leave_text(left) + "."))
    return b"".join(lines)


def plain_error(code: str, msg: str) -> bytes:
    return plain_line(f"* error {code}: {msg}")
