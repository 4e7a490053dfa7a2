"""The requests chatserv refuses, as codes with structured arguments.

An error names its protocol ``code`` (docs/PROTOCOL.md, "Errors"), a
``reason`` that says which refusal it is, and the ``params`` that refusal
needs. It carries no sentence: :func:`chatserv.wire.error_text` turns
``reason`` and ``params`` into the text a client reads, so the hub, the
accounts and the hashing queue stay free of any language, and another node
(or another dialect) can render the same error its own way.

Code that still raises with a finished sentence (``ChatError("…")``) passes
it as the reason; ``error_text`` shows a reason it has no template for as it
is.
"""

from __future__ import annotations

from typing import Any


class ChatError(Exception):
    """A request refused; ``code`` is the protocol's error code."""

    code = "bad_request"

    def __init__(self, reason: str, /, **params: Any) -> None:
        super().__init__(reason)
        self.reason = reason
        self.params = params


class NameTaken(ChatError):
    code = "name_taken"


class NoSuchUser(ChatError):
    code = "no_such_user"


class NotInRoom(ChatError):
    code = "not_in_room"


class InvalidName(ChatError):
    code = "bad_name"


class NoSuchMessage(ChatError):
    """The id names no message the session can see: unknown, in a room it is
    not in or not the one it writes to, or someone else's private
    conversation. One code for all, so that nothing is learnt by probing."""

    code = "no_such_message"


class NotYourMessage(ChatError):
    code = "not_your_message"


class MessageDeleted(ChatError):
    code = "message_deleted"


class EditTooLate(ChatError):
    code = "edit_too_late"


class TooFast(ChatError):
    code = "rate_limited"


class Congested(ChatError):
    """The store is behind: accepting more would hold unbounded memory."""

    code = "server_busy"


class ServerBusy(ChatError):
    """The password-hashing queue is full (chatserv.hashing)."""

    code = "server_busy"


class AuthFailed(ChatError):
    code = "auth_failed"


class RateLimited(ChatError):
    code = "rate_limited"
