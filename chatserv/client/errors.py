"""What the server's frames and error codes mean to the user of the client."""

from __future__ import annotations

from chatserv.client.i18n import _
from chatserv.client.network import Frame


def _str(frame: Frame, name: str) -> str | None:
    value = frame.get(name)
    return value if isinstance(value, str) else None


def readable_error(code: str, msg: str, **names: str) -> str:
    """A sentence for the user in the interface language; the server's own
    text (in Spanish) where we have nothing better."""
    texts = {
        "bad_json": _("The server could not read what this client sent."),
        "unknown_cmd": _("The server does not support this action."),
        "not_logged_in": _("You are not logged in yet."),
        "name_taken": _("That name is already in use."),
        "bad_name": _(
            "That name is not valid: 1 to 32 characters, no spaces or control characters."
        ),
        "no_such_user": _("{user} is not online.").format(user=names.get("user", "?")),
        "not_in_room": _("You are not in that room."),
        "rate_limited": _("You are sending too fast; slow down a little."),
        "line_too_long": _("That message is too long for the server."),
        "server_full": _("The server is full; trying again later."),
        "auth_failed": _("Wrong name or password."),
        "no_such_message": _("That message is not available any more."),
        "not_your_message": _("Only its author can change a message."),
        "message_deleted": _("That message has been deleted."),
        "edit_too_late": _("That message is too old to change."),
    }
    return texts.get(code) or msg or code


def with_detail(text: str, server_text: str) -> str:
    """Our sentence plus the server's own words when they add something: a
    ``bad_request`` or ``auth_failed`` at login can mean several things (a
    wrong password, or a server without accounts)."""
    if server_text and server_text != text:
        return _("{text} (server: {detail})").format(text=text, detail=server_text)
    return text
