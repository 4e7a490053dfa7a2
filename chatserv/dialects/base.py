"""What both dialects share: the participant interface and replies and corrections."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred

from .. import conversation
from ..addresses import source
from ..errors import ChatError
from ..events import ChatMessage, Correction, PresenceChange, Typing
from ..wire import error_text

if TYPE_CHECKING:
    from ..accounts import Identity
    from ..hub import Session
    from ..protocol import ChatFactory, ChatProtocol


class Dialect:
    """One connection's language: its lines in, the hub's events out.

    The hub's participant for the connection's session. The connection
    chooses the dialect by its first line and hands it every line after that;
    everything that depends on the language (parsing, rendering, errors,
    the idle ping) lives in the dialect, so nothing else asks which one it is.
    """

    # One per connection: slots keep it to a few words (RSS per connection).
    __slots__ = ("connection", "factory", "send", "history_since")

    #: What the connection sends a logged-in client that has gone quiet.
    ping: bytes

    def __init__(self, connection: ChatProtocol) -> None:
        self.connection = connection
        self.factory: ChatFactory = connection.factory
        # Bound once: an event then costs the hub one call into the dialect
        # and one into the connection's queue per recipient, as when the
        # connection was the participant itself.
        self.send = connection.send
        #: Private history is readable from this time on (see accounts.Identity).
        self.history_since = 0.0

    def _claim_then(self, identity: Identity | Deferred[Identity], then: Callable[[Identity], None]) -> None:
        """Call ``then(identity)`` once *identity* (or what the Deferred
        gives: an account check) may log in, its name held for this node
        across the cluster: at once on a lone node, else holding the
        connection's input meanwhile (see ChatProtocol._hold)."""
        if isinstance(identity, Deferred):
            self.connection._hold(identity.addCallback(self._claimed), then, "login")
            return
        claimed = self.factory.hub.claim(identity.name)
        if claimed is None:
            then(identity)
        else:
            self.connection._hold(claimed.addCallback(lambda _: identity), then, "login")

    def _claimed(self, identity: Identity) -> Identity | Deferred[Identity]:
        claimed = self.factory.hub.claim(identity.name)
        return identity if claimed is None else claimed.addCallback(lambda _: identity)

    def _enter_hub(self, identity: Identity, how: str = "") -> Session:
        """Bring *identity* online for this connection: what a login is in
        either dialect before it answers in its own (*how*: shown in the log)."""
        connection = self.connection
        session = connection.session = self.factory.hub.login(
            self, identity.name, account=identity.account
        )
        connection.MAX_LENGTH = self.factory.limits.max_line
        self.history_since = identity.since
        self.factory.log_budget.line(
            "logins",
            source(connection._peer),
            "{name} logged in{how} from {peer}",
            name=session.name,
            how=how,
            peer=connection._peer,
        )
        return session

    def line(self, line: bytes) -> None:
        """Handle one line (without its delimiter) from the client."""
        raise NotImplementedError

    def render_error(self, code: str, msg: str, ref: str | None = None) -> bytes:
        """The encoded error for this client; the connection counts and sends it."""
        raise NotImplementedError

    # -- hub events (Participant) -------------------------------------------

    def receive_message(self, message: ChatMessage) -> None:
        raise NotImplementedError

    def receive_own(self, message: ChatMessage) -> None:
        # Only JSON clients send a cid; any other reads it as any message.
        self.receive_message(message)

    def receive_presence(self, change: PresenceChange) -> None:
        raise NotImplementedError

    def receive_typing(self, typing: Typing) -> None:
        raise NotImplementedError

    def receive_correction(self, correction: Correction) -> None:
        raise NotImplementedError

    def evicted(self, error: ChatError) -> None:
        """The hub takes this session offline (:meth:`chatserv.hub.Hub.evict`):
        say why, then hang up."""
        self.connection.error(error.code, error_text(error))
        self.connection._close()

    # -- replies, edits, deletes (see chatserv.conversation) -----------------

    def _reply(
        self,
        frame: dict[str, Any],
        text: str,
        ref: str,
        room: str | None = None,
        to: str | None = None,
        cid: str | None = None,
    ) -> None:
        """Post *text* as a reply to ``frame["reply_to"]``: find the original
        (perhaps in storage), let the hub check the session may quote it in
        this conversation, then post. Nothing is posted if it may not."""
        session, hub = self.connection.session, self.factory.hub
        assert session is not None
        wanted = conversation.message_id(frame, "reply_to")
        assert wanted is not None
        if to is None:
            rooms = [hub.member_room(session, room).name]  # not_in_room before any look-up
        else:
            rooms = []

        def post(original: ChatMessage | None) -> None:
            quote = hub.reply_quote(session, original, room_name=room, to=to, since=self.history_since)
            if to is None:
                hub.broadcast(session, text, room, reply_to=quote, cid=cid)
            else:
                hub.private(session, to, text, reply_to=quote, cid=cid)

        self.connection._hold(conversation.find(hub, self.factory.history, wanted, rooms), post, ref)

    def _correct(self, wanted: int, text: str | None, ref: str) -> None:
        session, hub = self.connection.session, self.factory.hub
        assert session is not None
        found = conversation.find(hub, self.factory.history, wanted, sorted(session.rooms))

        def correct(original: ChatMessage | None) -> None:
            hub.correct(session, original, text, self.history_since)

        self.connection._hold(found, correct, ref)
