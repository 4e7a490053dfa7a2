"""A connection's output: gathered per reactor turn, bounded, written straight to the socket.

A room message to the JSON connections of a room, the hot path (see
:class:`RoomFanout`), costs no Python call per recipient::

    RoomWrite.deliver(message)         the hub's plan for the room: once per message
      wire.broadcast_frame(message)    encoded once, the same bytes for everyone
      OutputFlusher.hold_frame         waits for the end of the turn, with the
                                       room's other messages of this turn
    OutputFlusher.flush -> release     end of the turn (or before anything else
      RoomWrite.write(frames)          is sent to one of those connections)
        fanout.send_all(fds, frames, held)   one C call: a send() per socket
        conn.send(rest) for each socket that was held or did not take it all

Everything else (other dialects, private messages, presence, answers, and
what a socket did not take) reaches a client in three steps, none of which
encodes anything (the dialect hands over bytes the event encoded once):

1. :meth:`OutputQueue.send` appends them to the connection's list and, the
   first time in a turn, schedules the connection with the factory's
   :class:`OutputFlusher` (and marks it *held*: no direct send may overtake
   its queue);
2. at the end of the turn the flusher calls every scheduled connection's
   :meth:`OutputQueue.flush`, once, however many frames it gathered;
3. :meth:`OutputQueue._write_out` joins them and sends them straight to the
   socket when the transport has nothing queued (see :func:`socket_of`),
   otherwise through the transport, a :data:`HANDOVER` slice at a time.

Every queued byte counts against ``--max-output``: a client that stops
reading is cut off rather than growing server memory.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet.abstract import FileDescriptor
from twisted.internet.interfaces import IDelayedCall, IReactorTime

from .addresses import source
from .fanout import send_all
from .logs import Logger

if TYPE_CHECKING:
    from .events import ChatMessage
    from .hub import Session
    from .protocol import ChatFactory

log = Logger()

#: Most bytes handed to a transport in one write: a transport buffers all it
#: is given, so larger output is handed over in slices while it takes them.
HANDOVER = 64 * 1024


class OutputFlusher:
    """Writes every connection's gathered output once, at the end of the reactor turn.

    One delayed call serves all connections, so a broadcast to N clients costs
    N list appends during the turn and N ``write`` calls after it, however many
    messages each client received in that turn. Room messages bound for many
    connections wait here as frames (see :class:`RoomFanout`), and go out first.
    """

    def __init__(self, clock: IReactorTime) -> None:
        self.clock = clock
        self._pending: list[OutputQueue] = []
        self._call: IDelayedCall | None = None
        #: By file descriptor: non-zero while that connection's output may be
        #: held in user space (queued here or in its transport), or it is
        #: paused or closing, so that nothing may be sent to its socket
        #: directly (see OutputQueue._settle and RoomFanout).
        self.held = bytearray(1024)
        #: The room write whose frames wait for the end of the turn, and them.
        self.waiting: RoomWrite | None = None
        self._frames: list[bytes] = []

    def schedule(self, protocol: OutputQueue) -> None:
        self._pending.append(protocol)
        if self._call is None:
            self._call = self.clock.callLater(0, self.flush)

    def hold_frame(self, to: RoomWrite, data: bytes) -> None:
        """Let *data* wait for the end of the turn, to go to *to*'s
        connections with the frames that follow it for the same room write."""
        if self.waiting is not to:
            self.release()
            self.waiting = to
            if self._call is None:
                self._call = self.clock.callLater(0, self.flush)
        self._frames.append(data)

    def release(self) -> None:
        """Write the waiting frames now: at the end of the turn, or before
        anything else is sent to one of their connections (see OutputQueue.send)."""
        to = self.waiting
        if to is None:
            return
        frames = self._frames
        self.waiting = None
        self._frames = []
        to.write(frames[0] if len(frames) == 1 else b"".join(frames))

    def flush(self) -> None:
        self._call = None
        self.release()
        pending, self._pending = self._pending, []
        for protocol in pending:
            protocol.flush()


class OutputQueue:
    """The output half of a connection: its queue, its bound, and the
    ``IPushProducer`` methods the transport calls.

    A mixin rather than an object of its own: ``send`` is called once per
    recipient of every broadcast, and a delegating call there would cost
    every delivery one more Python call.
    """

    factory: ChatFactory
    transport: Any
    session: Session | None
    _peer: str

    def __init__(self) -> None:
        self._out: list[bytes] = []
        self._out_bytes = 0
        self._scheduled = False
        self._writable = True
        self._closing = False
        self._socket: Any = None
        #: The socket's descriptor when it may be written directly, else -1.
        self._fd = -1
        self._hold_flags = _NEVER

    def _open_output(self) -> None:
        """Find the socket to write to directly, if any (see socket_of); called
        when the connection is made, before anything is sent."""
        self._socket = sock = socket_of(self.transport)
        if sock is None:
            return
        fd = sock.fileno()
        held = self.factory.flusher.held
        if fd >= len(held):
            held.extend(bytes(fd + 1 - len(held) + 1024))
        held[fd] = 0
        self._fd = fd
        self._hold_flags = held

    def _settle(self) -> None:
        """Let direct sends go ahead (see RoomFanout) only while there is
        nothing they could overtake: no output queued here or in the
        transport, not paused, not closing. Re-checked at every flush, so a
        connection whose transport held output gets direct sends again once
        a flush finds that output gone."""
        fd = self._fd
        if fd >= 0:
            transport = self.transport
            self._hold_flags[fd] = bool(
                self._out
                or not self._writable
                or self._closing
                or transport.dataBuffer
                or transport._tempDataBuffer
            )

    def send(self, data: bytes) -> None:
        """Queue *data* for the end of this reactor turn.

        Every queued byte counts against ``--max-output``, the frame being
        queued included: past the bound, a connection whose transport is
        paused (the kernel and the transport hold all they will) is dropped,
        and one that is still writable hands its output over at once, so
        that only what the client really leaves unread is held (see flush).
        """
        if self._closing:
            return
        waiting = self.factory.flusher.waiting
        if waiting is not None and self in waiting.members:
            # Room frames this connection was handed earlier go first.
            self.factory.flusher.release()
        self._out.append(data)
        self._out_bytes += len(data)
        if self._out_bytes > self.factory.limits.max_output:
            if not self._writable:
                self._drop()
                return
            self._write_out()
            self._settle()
            return
        if not self._scheduled:
            self._scheduled = True
            if self._fd >= 0:
                # Queued: a direct send would overtake it.
                self._hold_flags[self._fd] = 1
            self.factory.flusher.schedule(self)

    def _drop(self) -> None:
        self.factory.stats.slow_dropped += 1
        self.factory.log_budget.line(
            "slow consumers dropped",
            source(self._peer),
            "dropping {who}: {n} bytes of unread output",
            emit=log.warn,
            who=self.session.name if self.session else self._peer,
            n=self._out_bytes,
        )
        self._closing = True
        self._out = []
        self._out_bytes = 0
        self._settle()
        self.transport.abortConnection()

    def flush(self) -> None:
        waiting = self.factory.flusher.waiting
        if waiting is not None and self in waiting.members:
            self.factory.flusher.release()
        self._scheduled = False
        self._write_out()
        self._settle()

    def _write_out(self) -> None:
        if not self._writable or not self._out:
            return
        out = self._out
        data = out[0] if len(out) == 1 else b"".join(out)
        self._out = []
        self._out_bytes = 0
        transport = self.transport
        sock = self._socket
        if sock is not None and not transport.dataBuffer and not transport._tempDataBuffer:
            # See socket_of. Whatever the kernel does not take, or any error,
            # goes through the transport, which then owns ordering,
            # back-pressure and error reporting as usual.
            try:
                sent = sock.send(data)
            except OSError:
                sent = 0
            if sent == len(data):
                return
            data = data[sent:]
        if len(data) <= HANDOVER:
            transport.write(data)
            return
        # A transport buffers whatever it is given, without bound: hand a
        # large output over a slice at a time, while the transport has not
        # paused us (it does so synchronously past its 64 KiB buffer). What
        # it did not take stays queued here and counts against the bound.
        view = memoryview(data)
        pos = 0
        while pos < len(data) and self._writable:
            transport.write(view[pos : pos + HANDOVER].tobytes())
            pos += HANDOVER
        if pos < len(data):
            self._out = [data[pos:]]
            self._out_bytes = len(data) - pos
            if self._out_bytes > self.factory.limits.max_output:
                self._drop()

    # IPushProducer, called by the transport. These replace LineReceiver's own
    # pause methods on purpose: a full output buffer must not stop us reading.
    def pauseProducing(self) -> None:
        self._writable = False
        self._settle()

    def resumeProducing(self) -> None:
        self._writable = True
        self.flush()

    def stopProducing(self) -> None:
        self._writable = False
        self._settle()


class RoomFanout:
    """Writes room messages to many connections at once: each frame is encoded
    once, frames wait for the end of the reactor turn, and then go to every
    socket in one :func:`chatserv.fanout.send_all` call.

    The hub's :class:`~chatserv.hub.Fanout` for the connections of one
    factory whose dialect renders a room message as the same bytes for
    everyone (``encode(message)``: the JSON dialect). :meth:`bind` makes a
    :class:`RoomWrite` per room membership, and a room message's last steps are::

        Hub.deliver_to_room -> RoomWrite.deliver(message)
          encode(message)                         once (cached on the event)
          OutputFlusher.hold_frame                a list append; other room
                                                  messages of the turn join it
        at the end of the turn (OutputFlusher.flush -> release -> RoomWrite.write):
          send_all(fds, frames, held)             one C call: one send() per socket
          conn.send(frames[n:]) per (i, n) missed held, would block, partial, error
          conn.send(frames) per connection without a socket of its own (TLS)

    Order. Frames wait only while nothing else is sent to their connections:
    sending anything to one of them (``OutputQueue.send``, ``flush``) first
    writes the waiting frames, and a room write of another room or
    membership does the same. A connection is *held*
    (``OutputFlusher.held[fd]``) while it has output queued, here or in its
    transport, or is paused or closing: it then gets the frames through its
    queue, behind what waits there, never a direct send that would overtake
    it. Whatever a socket does not take whole goes through the queue too,
    which then owns back-pressure and ``--max-output``, and the transport
    reports a failed socket the usual way.
    """

    def __init__(self, encode: Callable[[ChatMessage], bytes], flusher: OutputFlusher) -> None:
        self.encode = encode
        self.flusher = flusher

    def bind(self, participants: list[Any]) -> Callable[..., None]:
        """The delivery of a room message to *participants*, dialects whose
        ``connection`` is an :class:`OutputQueue` of this factory."""
        return RoomWrite(self, [participant.connection for participant in participants]).deliver


class RoomWrite:
    """One room membership's connections, for :class:`RoomFanout`."""

    __slots__ = ("encode", "flusher", "held", "fds", "direct", "queued", "members")

    def __init__(self, fanout: RoomFanout, connections: list[OutputQueue]) -> None:
        self.encode = fanout.encode
        self.flusher = fanout.flusher
        self.held = fanout.flusher.held
        self.fds: list[int] = []
        self.direct: list[OutputQueue] = []
        self.queued: list[OutputQueue] = []
        for connection in connections:
            if connection._fd >= 0:
                self.fds.append(connection._fd)
                self.direct.append(connection)
            else:
                self.queued.append(connection)
        self.members = frozenset(connections)

    def deliver(self, message: ChatMessage, leave_out: Any = None) -> None:
        if leave_out is not None:
            connection = getattr(leave_out, "connection", None)
            if connection is not None and connection in self.members:
                self._write_but(self.encode(message), connection)
                return
        self.flusher.hold_frame(self, self.encode(message))

    def _write_but(self, data: bytes, connection: OutputQueue) -> None:
        """Send *data* now to every connection but *connection*.

        Not held for the end of the turn: the frames held so far go out
        first (they precede it), then this one, with *connection* marked
        held for the one ``send_all`` call so that it is skipped, and left
        out of the queued path."""
        self.flusher.release()
        fd, held = connection._fd, self.held
        was = held[fd] if fd >= 0 else 0
        if fd >= 0:
            held[fd] = 1
        try:
            missed = send_all(self.fds, data, held) if self.fds else []
        finally:
            if fd >= 0:
                held[fd] = was
        direct = self.direct
        for i, sent in missed:
            if direct[i] is not connection:
                direct[i].send(data[sent:] if sent > 0 else data)
        for other in self.queued:
            if other is not connection:
                other.send(data)

    def write(self, data: bytes) -> None:
        if self.fds:
            direct = self.direct
            for i, sent in send_all(self.fds, data, self.held):
                direct[i].send(data[sent:] if sent > 0 else data)
        for connection in self.queued:
            connection.send(data)


#: The held table of a connection without a socket of its own: never read.
_NEVER = bytearray()


def socket_of(transport: Any) -> Any:
    """The socket *transport* writes to, if writing to it directly is safe.

    ``OutputQueue._write_out`` sends straight to this socket when the transport
    has nothing queued. ``transport.write`` only queues: the bytes go out on
    the next poll, after the transport has registered itself for writability
    and before it unregisters again, two extra epoll calls and a buffer copy
    per write. Fan-out is nearly all small writes the kernel takes whole, so
    sending at once halves the server's CPU per delivery (docs/PERFORMANCE.md).
    TLS and other wrapped transports get None and always take the plain path:
    they are not socket FileDescriptors, though a wrapper forwards ``socket``
    lookups to the TCP transport beneath it (sending there would bypass TLS).
    """
    if isinstance(transport, FileDescriptor) and hasattr(transport, "_tempDataBuffer"):
        return getattr(transport, "socket", None)
    return None

