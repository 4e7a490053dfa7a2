"""The least a server can do: a minimal IRC-style relay on uvloop, for the
harness's *floor* peer.

It registers (001), joins (366) and relays PRIVMSG to every other member of
the one channel, or to one nick, with TCP_NODELAY and nothing else: no
parsing beyond the verb, no limits, no storage. Measured with the same
generator as the real servers, it shows what the instrument and the kernel's
loopback path cost by themselves (e.g. how long 10,000 send() calls take on
this machine), so a server's figure can be read against it.

Run: ``python -m benchmarks.floor_server PORT`` (the harness does it for
``--peer floor``).
"""

from __future__ import annotations

import asyncio
import socket
import sys


class Relay(asyncio.Protocol):
    members: dict[bytes, Relay] = {}
    channel: list[Relay] = []

    def __init__(self) -> None:
        self.buf = b""
        self.nick = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        data = self.buf + data
        cut = data.rfind(b"\n") + 1
        self.buf = data[cut:]
        assert self.transport is not None
        for line in data[:cut].split(b"\n"):
            line = line.rstrip(b"\r")
            if line.startswith(b"PRIVMSG "):
                target = line[8:line.index(b" ", 8)]
                out = b":" + self.nick + b" " + line + b"\r\n"
                if target.startswith(b"#"):
                    for m in self.channel:
                        if m is not self and m.transport is not None:
                            m.transport.write(out)
                else:
                    peer = self.members.get(target)
                    if peer is not None and peer.transport is not None:
                        peer.transport.write(out)
            elif line.startswith(b"NICK "):
                self.nick = line[5:]
                self.members[self.nick] = self
            elif line.startswith(b"USER "):
                self.transport.write(b":floor 001 " + self.nick + b" :welcome\r\n")
            elif line.startswith(b"JOIN "):
                self.channel.append(self)
                self.transport.write(b":floor 366 " + self.nick + b" #bench :End of NAMES\r\n")
            elif line.startswith(b"PING"):
                self.transport.write(b"PONG" + line[4:] + b"\r\n")

    def connection_lost(self, exc: Exception | None) -> None:
        if self.members.get(self.nick) is self:
            del self.members[self.nick]
        if self in self.channel:
            self.channel.remove(self)


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Relay, "127.0.0.1", port, backlog=4096)
    async with server:
        await server.serve_forever()


def main() -> None:
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(int(sys.argv[1])))
    else:
        uvloop.run(serve(int(sys.argv[1])))


if __name__ == "__main__":
    main()
