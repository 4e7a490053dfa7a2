"""A fake Telegram Bot API on loopback, for the real python-telegram-bot to talk to.

It implements what the bridge uses (``getMe``, ``deleteWebhook``,
``getUpdates`` with long polling and offsets (and 409 Conflict for a
second poller), ``sendMessage`` with
``reply_parameters``, ``editMessageText``, ``deleteMessage``) as the Bot API
documents them, checks what a real server would refuse (bad HTML, over-long
texts, a wrong token, too many messages into one group), and can be told to
misbehave: answer 429 with ``retry_after``, answer 5xx, drop the connection,
or go away altogether for a while.
"""

from __future__ import annotations

import itertools
import json
import math
from collections import deque
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any

from twisted.internet import defer
from twisted.web import server
from twisted.web.resource import Resource

TOKEN = "123456:FAKE-test-token-ABCdefGHIjkl"
BOT = {
    "id": 777000,
    "is_bot": True,
    "first_name": "Chatserv Bridge",
    "username": "chatserv_bridge_bot",
    "can_join_groups": True,
    "can_read_all_group_messages": True,
    "supports_inline_queries": False,
}
GROUP = -1001234567890
ALLOWED_TAGS = {"b", "strong", "i", "em", "u", "ins", "s", "strike", "del", "code", "pre", "a", "tg-spoiler"}


class EntityError(ValueError):
    pass


class _Entities(HTMLParser):
    """Telegram's HTML mode, strictly: known tags, properly nested, and every
    ``<``, ``>`` and ``&`` in text escaped."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=False)
        self.text: list[str] = []
        self.open: list[str] = []

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        if tag not in ALLOWED_TAGS:
            raise EntityError(f'unsupported start tag "{tag}"')
        self.open.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.open or self.open.pop() != tag:
            raise EntityError(f'unmatched end tag "{tag}"')

    def handle_data(self, data: str) -> None:
        if "<" in data or ">" in data or "&" in data:
            raise EntityError("unescaped <, > or &")
        self.text.append(data)

    def handle_entityref(self, name: str) -> None:
        entities = {"lt": "<", "gt": ">", "amp": "&", "quot": '"'}
        if name not in entities:
            raise EntityError(f"unknown entity &{name};")
        self.text.append(entities[name])

    def handle_charref(self, name: str) -> None:
        self.text.append(chr(int(name[1:], 16) if name[:1] in "xX" else int(name)))


def parse_html(text: str) -> str:
    """The plain text Telegram would show for *text*, or EntityError."""
    parser = _Entities()
    parser.feed(text)
    parser.close()
    if parser.open:
        raise EntityError(f'unclosed tag "{parser.open[-1]}"')
    if parser.rawdata:
        raise EntityError("unterminated tag or entity")
    return "".join(parser.text)


def utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


@dataclass
class Sent:
    chat_id: int
    text: str
    plain: str
    parse_mode: str | None
    message: dict[str, Any]
    at: float


@dataclass
class Fault:
    kind: str  # "429", "500", "502", "drop"
    retry_after: int = 1


@dataclass
class _Poll:
    request: Any
    limit: int
    timer: Any = None
    done: bool = False


@dataclass
class FakeBotAPI:
    reactor: Any
    token: str = TOKEN
    #: (count, period) of sendMessage into one group before 429, like Telegram.
    group_rate: tuple[int, float] | None = None
    updates: list[dict[str, Any]] = field(default_factory=list)
    sent: list[Sent] = field(default_factory=list)
    calls: list[tuple[str, float, str]] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)
    violations: int = 0
    #: long polls ended by another poller's getUpdates (409 Conflict)
    conflicts: int = 0
    #: (time, client TCP port) of every getUpdates: tells pollers apart
    #: (a process that polls again reuses its connection or opens another)
    pollers: list[tuple[float, int]] = field(default_factory=list)
    #: (chat id, message id, new plain text) of every editMessageText
    edits: list[tuple[int, int, str]] = field(default_factory=list)
    #: (chat id, message id) of every deleteMessage
    deletions: list[tuple[int, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._update_ids = itertools.count(5000)
        self._message_ids: dict[int, itertools.count[int]] = {}
        self._faults: dict[str, deque[Fault]] = {}
        self._polls: list[_Poll] = []
        self._group_sends: dict[int, deque[float]] = {}
        self._sent_waiters: list[tuple[int, defer.Deferred[None]]] = []
        self._history: list[dict[str, Any]] = []
        #: what the bot has sent and not deleted, by (chat, message id)
        self._bot_messages: dict[tuple[int, int], dict[str, Any]] = {}
        #: what people have posted, for the bot's replies to them
        self._people_messages: dict[tuple[int, int], dict[str, Any]] = {}
        self._edit_waiters: list[tuple[int, defer.Deferred[None]]] = []
        self.port: Any = None
        self.port_number = 0
        #: every connection that made a request, so down() can cut them
        self.transports: set[Any] = set()
        self.site = _Site(self)

    # -- life cycle -----------------------------------------------------------

    def start(self, port: int = 0) -> None:
        self.port = self.reactor.listenTCP(port, self.site, interface="127.0.0.1")
        self.port_number = self.port.getHost().port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port_number}/bot"

    async def down(self) -> None:
        """Stop answering: close the port and cut every open connection."""
        for poll in self._polls:
            poll.done = True
            if poll.timer is not None and poll.timer.active():
                poll.timer.cancel()
        self._polls.clear()
        for transport in list(self.transports):
            if transport.connected:
                transport.abortConnection()
        self.transports.clear()
        port, self.port = self.port, None
        if port is not None:
            await port.stopListening()

    def up(self) -> None:
        self.start(self.port_number)

    async def stop(self) -> None:
        await self.down()

    # -- fault injection ------------------------------------------------------

    def fail(self, method: str, kind: str, times: int = 1, retry_after: int = 1) -> None:
        self._faults.setdefault(method, deque()).extend(Fault(kind, retry_after) for _ in range(times))

    def fail_clear(self) -> None:
        """Forget the faults not yet served."""
        self._faults.clear()

    # -- the Telegram side's people and messages --------------------------------

    @staticmethod
    def user(uid: int, first: str, last: str | None = None, username: str | None = None) -> dict[str, Any]:
        u: dict[str, Any] = {"id": uid, "is_bot": False, "first_name": first}
        if last:
            u["last_name"] = last
        if username:
            u["username"] = username
        return u

    @staticmethod
    def chat(chat_id: int = GROUP, title: str = "Grupo de prueba") -> dict[str, Any]:
        if chat_id > 0:
            return {"id": chat_id, "type": "private", "first_name": "someone"}
        return {"id": chat_id, "type": "supergroup", "title": title}

    def _message_id(self, chat_id: int) -> int:
        counter = self._message_ids.setdefault(chat_id, itertools.count(100))
        return next(counter)

    def message(
        self,
        user: dict[str, Any],
        text: str | None = None,
        chat: dict[str, Any] | None = None,
        reply_to: dict[str, Any] | None = None,
        **fields: Any,
    ) -> dict[str, Any]:
        chat = chat or self.chat()
        msg: dict[str, Any] = {
            "message_id": self._message_id(chat["id"]),
            "date": int(self.reactor.seconds()),
            "chat": chat,
            "from": user,
        }
        if text is not None:
            msg["text"] = text
        if reply_to is not None:
            msg["reply_to_message"] = reply_to
        msg.update(fields)
        self._people_messages[(chat["id"], msg["message_id"])] = msg
        return msg

    def push(self, kind: str, message: dict[str, Any]) -> int:
        update_id = next(self._update_ids)
        self.updates.append({"update_id": update_id, kind: message})
        self._history.append(self.updates[-1])
        self._answer_polls()
        return update_id

    def say(self, user: dict[str, Any], text: str | None = None, **kw: Any) -> dict[str, Any]:
        """*user* posts a message (in the group unless ``chat=`` says otherwise)."""
        msg = self.message(user, text, **kw)
        self.push("message", msg)
        return msg

    def edit(self, message: dict[str, Any], text: str) -> dict[str, Any]:
        edited = dict(message, text=text, edit_date=int(self.reactor.seconds()))
        self.push("edited_message", edited)
        return edited

    @property
    def last_update_id(self) -> int:
        return int(self._history[-1]["update_id"])

    def unconfirm_all(self) -> None:
        """Forget every confirmation, as if Telegram never got our offsets."""
        self.updates = list(self._history)

    # -- waiting for the bridge ---------------------------------------------------

    def wait_sent(self, count: int, timeout: float = 10.0) -> defer.Deferred[None]:
        """Fires once at least *count* messages have been sent."""
        d: defer.Deferred[None] = defer.Deferred()
        if len(self.sent) >= count:
            d.callback(None)
        else:
            self._sent_waiters.append((count, d))
        d.addTimeout(timeout, self.reactor)
        return d

    def group_plain(self, chat_id: int = GROUP) -> list[str]:
        return [s.plain for s in self.sent if s.chat_id == chat_id]

    def group_lines(self, chat_id: int = GROUP) -> list[str]:
        return [line for text in self.group_plain(chat_id) for line in text.split("\n")]

    def count(self, method: str, outcome: str | None = None) -> int:
        return sum(1 for m, _, o in self.calls if m == method and (outcome is None or o == outcome))

    # -- the HTTP side --------------------------------------------------------------

    def handle(self, request: server.Request) -> Any:
        self.transports.add(request.channel.transport)
        path = request.path.decode()
        if not path.startswith("/bot") or path.count("/") != 2:
            return self._error(request, 404, "Not Found")
        token, method = path[4:].split("/", 1)
        if token != self.token:
            return self._error(request, 401, "Unauthorized")
        params = self._params(request)
        faults = self._faults.get(method)
        if faults:
            fault = faults.popleft()
            self.calls.append((method, self.reactor.seconds(), fault.kind))
            if fault.kind == "drop":
                request.channel.transport.abortConnection()
                return server.NOT_DONE_YET
            if fault.kind == "429":
                return self._too_many(request, fault.retry_after)
            return self._error(request, int(fault.kind), "Internal Server Error")
        handler = getattr(self, f"api_{method}", None)
        if handler is None:
            self.calls.append((method, self.reactor.seconds(), "404"))
            return self._error(request, 404, "Not Found: method not found")
        return handler(request, params)

    @staticmethod
    def _params(request: server.Request) -> dict[str, Any]:
        args: dict[str, Any] = {}
        content_type = (request.getHeader("content-type") or "").split(";")[0]
        if content_type == "application/json":
            request.content.seek(0)
            body = request.content.read()
            return json.loads(body) if body else {}
        for key, values in (request.args or {}).items():
            args[key.decode()] = values[-1].decode()
        return args

    def _reply(self, request: server.Request, code: int, body: dict[str, Any]) -> bytes:
        request.setResponseCode(code)
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(body).encode()

    def _ok(self, request: server.Request, result: Any) -> bytes:
        return self._reply(request, 200, {"ok": True, "result": result})

    def _error(self, request: server.Request, code: int, description: str) -> bytes:
        return self._reply(request, code, {"ok": False, "error_code": code, "description": description})

    def _too_many(self, request: server.Request, retry_after: int) -> bytes:
        return self._reply(
            request,
            429,
            {
                "ok": False,
                "error_code": 429,
                "description": f"Too Many Requests: retry after {retry_after}",
                "parameters": {"retry_after": retry_after},
            },
        )

    def api_getMe(self, request: server.Request, params: dict[str, Any]) -> bytes:
        self.calls.append(("getMe", self.reactor.seconds(), "ok"))
        return self._ok(request, BOT)

    def api_deleteWebhook(self, request: server.Request, params: dict[str, Any]) -> bytes:
        self.calls.append(("deleteWebhook", self.reactor.seconds(), "ok"))
        return self._ok(request, True)

    def api_getUpdates(self, request: server.Request, params: dict[str, Any]) -> Any:
        offset = int(params.get("offset", 0) or 0)
        limit = int(params.get("limit", 100) or 100)
        timeout = float(params.get("timeout", 0) or 0)
        self.offsets.append(offset)
        self.calls.append(("getUpdates", self.reactor.seconds(), "ok"))
        self.pollers.append((self.reactor.seconds(), request.getClientAddress().port))
        # Telegram allows one poller per bot: a new getUpdates ends one still
        # waiting with 409 Conflict.
        for poll in list(self._polls):
            self._conflict(poll)
        if offset:
            # Telegram: an offset confirms every update before it, for good.
            self.updates = [u for u in self.updates if u["update_id"] >= offset]
        if self.updates or timeout <= 0:
            return self._ok(request, self.updates[:limit])
        poll = _Poll(request, limit)
        poll.timer = self.reactor.callLater(timeout, self._finish_poll, poll)
        self._polls.append(poll)
        request.notifyFinish().addErrback(lambda _: self._abandon(poll))
        return server.NOT_DONE_YET

    def _conflict(self, poll: _Poll) -> None:
        self._abandon(poll)
        self.conflicts += 1
        self.calls.append(("getUpdates", self.reactor.seconds(), "409"))
        description = (
            "Conflict: terminated by other getUpdates request;"
            " make sure that only one bot instance is running"
        )
        body = {"ok": False, "error_code": 409, "description": description}
        poll.request.write(self._reply(poll.request, 409, body))
        poll.request.finish()

    def _abandon(self, poll: _Poll) -> None:
        poll.done = True
        if poll.timer is not None and poll.timer.active():
            poll.timer.cancel()
        if poll in self._polls:
            self._polls.remove(poll)

    def _finish_poll(self, poll: _Poll) -> None:
        if poll.done:
            return
        poll.done = True
        if poll.timer is not None and poll.timer.active():
            poll.timer.cancel()
        if poll in self._polls:
            self._polls.remove(poll)
        poll.request.write(self._ok(poll.request, self.updates[: poll.limit]))
        poll.request.finish()

    def _answer_polls(self) -> None:
        for poll in list(self._polls):
            self._finish_poll(poll)

    def api_sendMessage(self, request: server.Request, params: dict[str, Any]) -> bytes:
        now = self.reactor.seconds()
        chat_id = int(params["chat_id"])
        text = params.get("text", "")
        parse_mode = params.get("parse_mode")
        if self.group_rate is not None and chat_id < 0:
            count, period = self.group_rate
            window = self._group_sends.setdefault(chat_id, deque())
            while window and window[0] <= now - period:
                window.popleft()
            if len(window) >= count:
                self.violations += 1
                self.calls.append(("sendMessage", now, "429"))
                return self._too_many(request, max(1, math.ceil(window[0] + period - now)))
            window.append(now)
        try:
            plain = parse_html(text) if parse_mode == "HTML" else text
        except EntityError as e:
            self.calls.append(("sendMessage", now, "400"))
            return self._error(request, 400, f"Bad Request: can't parse entities: {e}")
        if not plain.strip():
            self.calls.append(("sendMessage", now, "400"))
            return self._error(request, 400, "Bad Request: message text is empty")
        if utf16_len(plain) > 4096:
            self.calls.append(("sendMessage", now, "400"))
            return self._error(request, 400, "Bad Request: message is too long")
        message = {
            "message_id": self._message_id(chat_id),
            "date": int(now),
            "chat": self.chat(chat_id),
            "from": {k: BOT[k] for k in ("id", "is_bot", "first_name", "username")},
            "text": plain,
        }
        reply = params.get("reply_parameters")
        if isinstance(reply, str):
            reply = json.loads(reply)
        if reply:
            key = (chat_id, int(reply["message_id"]))
            original = self._bot_messages.get(key) or self._people_messages.get(key)
            if original is None and not reply.get("allow_sending_without_reply"):
                self.calls.append(("sendMessage", now, "400"))
                return self._error(request, 400, "Bad Request: message to be replied not found")
            if original is not None:
                message["reply_to_message"] = original
        self._bot_messages[(chat_id, message["message_id"])] = message
        self.sent.append(Sent(chat_id, text, plain, parse_mode, message, now))
        self.calls.append(("sendMessage", now, "ok"))
        for waiter in list(self._sent_waiters):
            if len(self.sent) >= waiter[0]:
                self._sent_waiters.remove(waiter)
                waiter[1].callback(None)
        return self._ok(request, message)


    def api_editMessageText(self, request: server.Request, params: dict[str, Any]) -> bytes:
        """Only the bot's own messages, as for a real bot (no inline ones)."""
        now = self.reactor.seconds()
        chat_id, message_id = int(params["chat_id"]), int(params["message_id"])
        message = self._bot_messages.get((chat_id, message_id))
        if message is None:
            self.calls.append(("editMessageText", now, "400"))
            return self._error(request, 400, "Bad Request: message to edit not found")
        text = params.get("text", "")
        try:
            plain = parse_html(text) if params.get("parse_mode") == "HTML" else text
        except EntityError as e:
            self.calls.append(("editMessageText", now, "400"))
            return self._error(request, 400, f"Bad Request: can't parse entities: {e}")
        if plain == message["text"]:
            self.calls.append(("editMessageText", now, "400"))
            return self._error(request, 400, "Bad Request: message is not modified")
        message["text"] = plain
        message["edit_date"] = int(now)
        self.edits.append((chat_id, message_id, plain))
        self.calls.append(("editMessageText", now, "ok"))
        self._wake(self._edit_waiters, len(self.edits) + len(self.deletions))
        return self._ok(request, message)

    def api_deleteMessage(self, request: server.Request, params: dict[str, Any]) -> bytes:
        now = self.reactor.seconds()
        chat_id, message_id = int(params["chat_id"]), int(params["message_id"])
        if self._bot_messages.pop((chat_id, message_id), None) is None:
            self.calls.append(("deleteMessage", now, "400"))
            return self._error(request, 400, "Bad Request: message to delete not found")
        self.deletions.append((chat_id, message_id))
        self.calls.append(("deleteMessage", now, "ok"))
        self._wake(self._edit_waiters, len(self.edits) + len(self.deletions))
        return self._ok(request, True)

    def wait_changed(self, count: int, timeout: float = 10.0) -> defer.Deferred[None]:
        """Fires once at least *count* edits and deletions have been made."""
        d: defer.Deferred[None] = defer.Deferred()
        if len(self.edits) + len(self.deletions) >= count:
            d.callback(None)
        else:
            self._edit_waiters.append((count, d))
        d.addTimeout(timeout, self.reactor)
        return d

    @staticmethod
    def _wake(waiters: list[tuple[int, defer.Deferred[None]]], have: int) -> None:
        for waiter in list(waiters):
            if have >= waiter[0]:
                waiters.remove(waiter)
                waiter[1].callback(None)


class _API(Resource):
    isLeaf = True

    def __init__(self, fake: FakeBotAPI) -> None:
        super().__init__()
        self.fake = fake

    def render(self, request: server.Request) -> Any:
        return self.fake.handle(request)


class _Site(server.Site):
    noisy = False

    def __init__(self, fake: FakeBotAPI) -> None:
        super().__init__(_API(fake))

    def log(self, request: Any) -> None:
        # The access log would print request paths, which hold the token:
        # the token-leak test watches the whole log.
        pass
