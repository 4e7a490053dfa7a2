"""The bridge on the hub side: its own session, one per Telegram user, and
what the hub hands them."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..errors import ChatError, NameTaken
from ..events import ChatMessage, Correction, PresenceChange, Typing
from ..hub import GENERAL, Hub, Session
from ..logs import Logger
from ..names import name_key
from .core import BridgeCore, _Group, _TgUser

if TYPE_CHECKING:
    from .service import TelegramBridge

log = Logger()


BRIDGE_USER = "Telegram"


BRIDGE_PRIVATE = (
    "Soy el puente con Telegram: lo que se escribe en la sala {room} llega al grupo; "
    "los mensajes privados, no."
)


NO_PRIVATE = "Estoy en Telegram: los mensajes privados del chat no me llegan."


class _Listener:
    """The bridge's own session: it hears the bridged room for Telegram."""

    def __init__(self, bridge: TelegramBridge) -> None:
        self.bridge = bridge

    def receive_message(self, message: ChatMessage) -> None:
        self.bridge._chat_message(message)

    def receive_own(self, message: ChatMessage) -> None:
        pass  # the bridge's own session sends no cid (Telegram users' sessions do)

    def receive_presence(self, change: PresenceChange) -> None:
        self.bridge._chat_presence(change)

    def receive_typing(self, typing: Typing) -> None:
        pass

    def receive_correction(self, correction: Correction) -> None:
        self.bridge._chat_correction(correction)


class _Mute:
    """A Telegram user's session. That person reads the chat in Telegram,
    through the bridge's own session, so what the hub hands it is dropped.
    A private message to it is answered, once per message, saying it cannot
    be delivered (see docs/TELEGRAM.md)."""

    def __init__(self, hub: Hub, own_echo: Callable[[ChatMessage], None]) -> None:
        self.hub = hub
        self.session: Session | None = None
        #: Told of this session's own room messages (the bridge relays each
        #: Telegram message with a cid): committed, or, for a cid the chat
        #: held already, the message stored then.
        self.own_echo = own_echo

    def receive_message(self, message: ChatMessage) -> None:
        me = self.session
        if me is None or message.room is not None or message.sender == me.name:
            return
        sender = self.hub.find(message.sender)
        if sender is None or isinstance(sender.participant, _Mute):
            return
        try:
            self.hub.private(me, message.sender, NO_PRIVATE)
        except ChatError:
            pass

    def receive_own(self, message: ChatMessage) -> None:
        if message.room is not None:
            self.own_echo(message)

    def receive_presence(self, change: PresenceChange) -> None:
        pass

    def receive_typing(self, typing: Typing) -> None:
        pass

    def receive_correction(self, correction: Correction) -> None:
        pass


class HubSide(BridgeCore):
    """The bridge's sessions in the hub: logging in and out, one per Telegram user."""

    def _login(self, participant: Any, base: str, rooms: list[str]) -> Session:
        for n in range(1, 1000):
            name = f"{base}{'' if n == 1 else f' {n}'}{self.config.marker}"
            try:
                session = self.hub.login(participant, name, trusted=True)
            except NameTaken:
                continue
            self.bridged.add(session.key)
            for room in rooms:
                if name_key(room) != name_key(GENERAL):
                    self.hub.join(session, room)
            return session
        raise NameTaken(f"no free name for {base}")

    def _logout(self, session: Session) -> None:
        self.bridged.discard(session.key)
        self.hub.logout(session)

    def _logout_all(self) -> None:
        for user in self.tg_users.values():
            if user.idle.active():
                user.idle.cancel()
            self._logout(user.session)
        self.tg_users.clear()
        if self.session is not None:
            self._logout(self.session)
            self.session = None

    def _tg_session(self, key: int, base: str, group: _Group) -> Session:
        """The hub session speaking for Telegram user (or channel) *key* in
        *group*'s room (one session per person, in the rooms of the groups
        they wrote in)."""
        user = self.tg_users.get(key)
        if user is not None and user.base == base and self.hub.find(user.session.name) is user.session:
            user.idle.reset(self.config.idle_timeout)
            if group.room_key != name_key(GENERAL):
                self.hub.join(user.session, group.room)
            return user.session
        if user is not None:
            # Renamed in Telegram: show the new name.
            if user.idle.active():
                user.idle.cancel()
            self._logout(user.session)
        mute = _Mute(self.hub, self._own_echo)
        session = mute.session = self._login(mute, base, [group.room])
        idle = self.reactor.callLater(self.config.idle_timeout, self._expire, key)
        self.tg_users[key] = _TgUser(base, session, idle)
        return session

    def _expire(self, key: int) -> None:
        user = self.tg_users.pop(key, None)
        if user is not None:
            self._logout(user.session)

    def _chat_private(self, message: ChatMessage) -> None:
        me = self.session
        if me is None or name_key(message.sender) in self.bridged:
            return
        try:
            rooms = ", ".join(g.room for g in self.groups.values())
            self.hub.private(me, message.sender, BRIDGE_PRIVATE.format(room=rooms))
        except ChatError:
            pass

    def online(self, room: str | None = None) -> list[str]:
        """Who is in a bridged room (the first group's by default), Telegram
        users and the bridge left out."""
        room = room if room is not None else next(iter(self.groups.values())).room
        return [n for n in self.hub.users(room) if name_key(n) not in self.bridged]
