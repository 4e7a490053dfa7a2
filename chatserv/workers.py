"""``--workers N``: one command, one port, N node processes on one machine.

Twisted has no SO_REUSEPORT. Its documented way for several processes to
serve one port is a parent that creates the listening sockets and children
that adopt them (``IReactorSocket.adoptStreamPort``); the kernel then hands
each new connection to whichever child accepts it first. That is what this
module does:

* the parent (:class:`WorkerPool`, the whole application of a ``twistd
  chatserv --workers N``) binds every ``--listen`` endpoint in
  ``privilegedStartService`` (so a port below 1024 can be bound before
  twistd drops privileges), stops reading from them, and spawns N children
  ``twistd -n chatserv ... --adopt-fds 3,4`` that inherit the sockets as
  file descriptors 3, 4, ...; it serves no chat itself, restarts a child
  that dies (with back-off), relays the children's log lines into its own
  log, forwards a stop (SIGTERM/SIGINT stop twistd, which stops the pool,
  which sends SIGTERM to every child and waits for them), and serves the
  aggregated ``--health`` (:mod:`chatserv.health`);
* a child (:func:`adopt`) wraps each inherited socket in a listening port of
  its own reactor; for ``ssl:`` it builds the TLS context from the same
  description and wraps the chat factory in ``TLSMemoryBIOFactory``, exactly
  what ``listenSSL`` does, so TLS works unchanged (each child does its own
  handshakes; there is no session-ticket key shared between children, so a
  resumed TLS session only resumes on the child that made it);
* a child watches its standard input, a pipe from the parent
  (:class:`ParentLifeline`): when the parent is gone, even by SIGKILL, the
  pipe closes and the child stops cleanly instead of serving on as an
  orphan nobody restarts.

Only stream listeners a file descriptor can carry are shared: ``tcp``,
``tcp6``, ``ssl`` and ``unix``. The other way to share one port between
processes, systemd socket activation (``--listen systemd:...``), is
documented in docs/CLUSTER.md; with ``--workers`` it is refused at start.
"""

from __future__ import annotations

import getopt
import os
import re
import shutil
import socket
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from twisted.application.service import Service
from twisted.internet import error as ierror
from twisted.internet import tcp, unix
from twisted.internet.abstract import FileDescriptor
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred, succeed
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IDelayedCall, IListeningPort
from twisted.internet.main import CONNECTION_DONE
from twisted.internet.protocol import Factory, ProcessProtocol, Protocol
from twisted.python.failure import Failure

from .logs import Logger

log = Logger()

#: The strports kinds whose listening socket a child process can adopt.
SHAREABLE = ("tcp", "tcp6", "ssl", "unix")
#: The first file descriptor a child finds its listeners on (after stdio).
FIRST_FD = 3
#: Restart back-off: the first restart waits this long, each quick death
#: in a row doubles it up to RESTART_MAX; a child that ran RESTART_RESET
#: seconds counts as healthy again.
RESTART_FIRST = 0.5
RESTART_MAX = 30.0
RESTART_RESET = 30.0
#: Seconds a child has to stop after SIGTERM before it gets SIGKILL.
STOP_TIMEOUT = 20.0
#: Options the parent keeps to itself or hands each child its own value of.
PARENT_ONLY = ("workers", "health", "metrics", "adopt-fds")

_TWISTD = "import sys; sys.argv[0] = 'twistd'; from twisted.scripts.twistd import run; run()"
#: twistd's own log prefix ("2026-11-30T01:02:03+0000 "), left out of relayed lines.
_STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4} ")
#: The level in twistd's "[namespace#level]" prefix.
_LEVEL = re.compile(r"^\[[^\]#]*#(debug|info|warn|error|critical)\]")


def shareable(description: str) -> str | None:
    """What is wrong with sharing the listener *description* between workers, or None."""
    kind = description.split(":", 1)[0].lower()
    if kind in SHAREABLE:
        return None
    return (
        f"{description}: --workers shares only {', '.join(SHAREABLE)} listeners "
        "(for systemd socket activation run one chatserv per socket unit; docs/CLUSTER.md)"
    )


def port_plus(description: str, offset: int) -> str:
    """*description* with its TCP port moved up by *offset*: each worker's own
    ``--metrics`` port (``tcp:9100`` gives workers 9100, 9101, ...). Port 0
    stays 0; a ``unix:`` path gets a ``.N`` suffix."""
    kind, _, rest = description.partition(":")
    if kind in ("tcp", "tcp6", "ssl"):
        port, sep, tail = rest.partition(":")
        if port.isdigit() and int(port) != 0:
            return f"{kind}:{int(port) + offset}{sep}{tail}"
        return description
    if kind == "unix":
        path, sep, tail = rest.partition(":")
        return f"unix:{path}.{offset}{sep}{tail}"
    return description


def child_arguments(
    argv: Sequence[str], short: str, long: Sequence[str], drop: Sequence[str] = PARENT_ONLY
) -> list[str]:
    """The ``twistd chatserv`` arguments *argv* without the options in *drop*.

    *argv* is parsed with ``getopt`` and the same *short* and *long* option
    tables ``usage.Options`` uses, so an abbreviation (``--work 4``) or the
    ``--name=value`` form is recognised as twistd would, and every option
    comes out in its full ``--name=value`` spelling.
    """
    pairs, rest = getopt.getopt(list(argv), short, list(long))
    takes_value = {name.rstrip("=") for name in long if name.endswith("=")}
    out: list[str] = []
    for option, value in pairs:
        if option.startswith("--"):
            name = option[2:]
            if name in drop:
                continue
            out.append(f"--{name}={value}" if name in takes_value else f"--{name}")
        else:
            letter = option[1:]
            out.append(f"-{letter}{value}" if f"{letter}:" in short else f"-{letter}")
    return out + rest


# -- the child's side ---------------------------------------------------------------


def adopt(reactor: Any, description: str, fd: int, factory: Any) -> IListeningPort:
    """Serve *factory* on the listening socket inherited as *fd*, which the
    parent bound for the ``--listen`` *description*.

    For ``ssl:`` the TLS context comes from *description* (its key and
    certificate files), and the factory is wrapped in TLS here: the parent
    shared a plain TCP socket.
    """
    with socket.socket(fileno=os.dup(fd)) as probe:
        family = probe.family
    if description.split(":", 1)[0].lower() == "ssl":
        from twisted.protocols.tls import TLSMemoryBIOFactory

        endpoint = serverFromString(reactor, description)
        factory = TLSMemoryBIOFactory(endpoint._sslContextFactory, False, factory)
    port: IListeningPort
    if family == socket.AF_UNIX:
        # Twisted's adopted UNIX port would shut the shared socket down and
        # unlink its path when it closes (its adopted TCP port does neither),
        # leaving the other workers with a dead listener under a removed
        # name; the socket and the path are the parent's to close.
        port = _SharedUNIXPort._fromListeningDescriptor(reactor, fd, factory)
        port.startListening()
    else:
        port = reactor.adoptStreamPort(fd, family, factory)
    os.close(fd)  # both duplicated it
    return port


class _SharedUNIXPort(unix.Port):
    """An adopted UNIX listening port that closes only its own descriptor."""

    #: close() without shutdown(), which would end the listener for every process.
    _shouldShutdown = False

    def connectionLost(self, reason: Failure) -> None:
        if self.lockFile is not None:
            self.lockFile.unlock()
        tcp.Port.connectionLost(self, reason)


class _Pipe(FileDescriptor):
    """Reads a pipe until its other end closes."""

    def __init__(self, fd: int, reactor: Any, gone: Any) -> None:
        super().__init__(reactor)
        self.fd = fd
        self._gone = gone

    def fileno(self) -> int:
        return self.fd

    def doRead(self) -> Any:
        try:
            data = os.read(self.fd, 4096)
        except OSError:
            return CONNECTION_DONE
        return None if data else CONNECTION_DONE

    def connectionLost(self, reason: Failure) -> None:
        super().connectionLost(reason)
        self._gone()


class ParentLifeline(Service):
    """In a worker: stops the process when the parent's pipe on *fd* closes."""

    def __init__(self, reactor: Any, fd: int = 0) -> None:
        self.reactor = reactor
        self.fd = fd
        self._pipe: _Pipe | None = None

    def startService(self) -> None:
        super().startService()
        self._pipe = _Pipe(self.fd, self.reactor, self._parent_gone)
        self._pipe.startReading()

    def _parent_gone(self) -> None:
        if self.running:
            log.warn("the --workers parent is gone; stopping")
            self.reactor.stop()

    def stopService(self) -> None:
        super().stopService()
        if self._pipe is not None:
            self._pipe.stopReading()
            self._pipe = None


# -- the parent's side --------------------------------------------------------------


@dataclass
class WorkerSpec:
    """What the parent needs to start its workers."""

    count: int
    listen: list[str]
    #: The chatserv options each worker gets (``child_arguments``).
    arguments: list[str]
    #: The parent's ``--health`` endpoint, or None.
    health: str | None = None
    #: The ``--metrics`` endpoint; worker i serves it on port + i.
    metrics: str | None = None


class _NoConnections(Factory):
    """The parent's factory on the shared sockets: it never accepts."""

    noisy = False

    def buildProtocol(self, addr: Any) -> Protocol | None:
        return None


class Worker(ProcessProtocol):
    """One child process slot: spawned, watched, restarted."""

    def __init__(self, pool: WorkerPool, index: int) -> None:
        self.pool = pool
        self.index = index
        self.pid: int | None = None
        self.started_at = 0.0
        self.failures = 0
        self.restart: IDelayedCall | None = None
        self._ended: list[Deferred[None]] = []
        self._partial = {1: b"", 2: b""}

    @property
    def running(self) -> bool:
        return self.pid is not None

    @property
    def health_socket(self) -> str:
        return os.path.join(self.pool.rundir, f"worker-{self.index}.health")

    def spawn(self) -> None:
        self.restart = None
        pool = self.pool
        fds: dict[int, Any] = {0: "w", 1: "r", 2: "r"}
        for i, port in enumerate(pool.ports):
            fds[FIRST_FD + i] = port.fileno()  # type: ignore[attr-defined]
        args = [sys.executable, "-c", _TWISTD, "-n", "--pidfile=", "chatserv", *pool.spec.arguments]
        args.append("--adopt-fds=" + ",".join(str(FIRST_FD + i) for i in range(len(pool.ports))))
        if pool.spec.health is not None:
            if os.path.exists(self.health_socket):
                os.unlink(self.health_socket)  # left by this slot's previous child
            args.append(f"--health=unix:{self.health_socket}")
        if pool.spec.metrics is not None:
            args.append("--metrics=" + port_plus(pool.spec.metrics, self.index))
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        process = pool.reactor.spawnProcess(self, sys.executable, args, env=env, childFDs=fds)
        self.pid = process.pid
        self.started_at = pool.reactor.seconds()
        log.info("worker {n} started (pid {pid})", n=self.index, pid=self.pid)

    def childDataReceived(self, childFD: int, data: bytes) -> None:  # noqa: N803
        lines = (self._partial.get(childFD, b"") + data).split(b"\n")
        self._partial[childFD] = lines.pop()
        for raw in lines:
            self._relay(raw)

    def _relay(self, raw: bytes) -> None:
        line = _STAMP.sub("", raw.decode("utf-8", "replace").rstrip())
        if line:
            # At the level the worker logged it at, so --log-level and
            # observers filtering on level treat it as the worker's own.
            level = _LEVEL.search(line)
            emit = getattr(log, level.group(1)) if level else log.info
            emit("worker {n}: {line}", n=self.index, line=line)

    def processEnded(self, reason: Failure) -> None:
        for fd, rest in self._partial.items():
            if rest:
                self._relay(rest)
            self._partial[fd] = b""
        pid, self.pid = self.pid, None
        ended, self._ended = self._ended, []
        for d in ended:
            d.callback(None)
        if self.pool.stopping:
            return
        lived = self.pool.reactor.seconds() - self.started_at
        self.failures = 1 if lived >= RESTART_RESET else self.failures + 1
        delay = min(RESTART_MAX, RESTART_FIRST * 2 ** (self.failures - 1))
        log.error(
            "worker {n} (pid {pid}) {how} after {lived:.1f} s; restarting it in {delay:.1f} s",
            n=self.index,
            pid=pid,
            how=_how(reason.value),
            lived=lived,
            delay=delay,
        )
        self.restart = self.pool.reactor.callLater(delay, self.spawn)

    def stop(self) -> Deferred[None]:
        """SIGTERM, and SIGKILL if the child is still there after STOP_TIMEOUT."""
        if self.restart is not None and self.restart.active():
            self.restart.cancel()
        self.restart = None
        if self.pid is None or self.transport is None:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._ended.append(d)
        try:
            self.transport.signalProcess("TERM")
        except ierror.ProcessExitedAlready:
            pass
        kill = self.pool.reactor.callLater(STOP_TIMEOUT, self._kill)

        def ended(result: None) -> None:
            if kill.active():
                kill.cancel()

        return d.addCallback(ended)

    def _kill(self) -> None:
        log.error(
            "worker {n} (pid {pid}) did not stop in {s:.0f} s: SIGKILL",
            n=self.index,
            pid=self.pid,
            s=STOP_TIMEOUT,
        )
        try:
            if self.transport is not None:
                self.transport.signalProcess("KILL")
        except ierror.ProcessExitedAlready:
            pass


def _how(error: BaseException) -> str:
    signal_number = getattr(error, "signal", None)
    if signal_number:
        return f"was killed by signal {signal_number}"
    return f"exited with status {getattr(error, 'exitCode', '?')}"


class WorkerPool(Service):
    """The ``--workers`` parent: the listening sockets and N workers on them."""

    name = "workers"  # type: ignore[assignment]

    def __init__(self, spec: WorkerSpec, reactor: Any) -> None:
        self.spec = spec
        self.reactor = reactor
        self.ports: list[IListeningPort] = []
        self.workers = [Worker(self, i) for i in range(spec.count)]
        self.stopping = False
        self.rundir = ""

    def privilegedStartService(self) -> None:
        from .service import cannot_listen, with_backlog

        super().privilegedStartService()
        for description in self.spec.listen:
            # The parent listens as the server would (same parsing, backlog,
            # interface, ssl files checked), then never reads: the children
            # accept.
            # For ssl: the socket is TLS-wrapped here too, which does not
            # matter: the parent never accepts, the children wrap their own.
            failures: list[Failure] = []
            d = serverFromString(self.reactor, with_backlog(description)).listen(_NoConnections())
            d.addCallbacks(self.ports.append, failures.append)
            if failures:
                cannot_listen(description, failures[0].value)
            port = self.ports[-1]
            port.stopReading()  # type: ignore[attr-defined]
            log.info(
                "listening on {where} ({address}) for {n} workers",
                where=description,
                address=port.getHost(),
                n=self.spec.count,
            )

    def startService(self) -> None:
        if not self.ports:
            self.privilegedStartService()  # started without twistd (tests)
        super().startService()
        self.rundir = tempfile.mkdtemp(prefix="chatserv-workers-")
        for worker in self.workers:
            worker.spawn()

    def stopService(self) -> Deferred[Any]:
        super().stopService()
        self.stopping = True
        log.info("stopping {n} workers", n=len(self.workers))
        stops = [worker.stop() for worker in self.workers]

        def close(_: Any) -> Deferred[Any]:
            ports, self.ports = self.ports, []
            if self.rundir:
                shutil.rmtree(self.rundir, ignore_errors=True)
            return DeferredList([maybeDeferred(p.stopListening) for p in ports])

        return DeferredList(stops).addCallback(close)

    def problems(self) -> list[str]:
        """Workers not running now (being restarted)."""
        return [f"worker {w.index}: not running (restarting)" for w in self.workers if not w.running]


# -- options ------------------------------------------------------------------------


def check_options(options: Any) -> None:
    """What ``--workers`` and ``--adopt-fds`` need of the other options; raises
    ``usage.UsageError`` (one line at start-up) with the first problem."""
    from twisted.python import usage

    count = options["workers"]
    if count > 1 and options["adopt-fds"] is None:
        if not options.get("cluster"):
            raise usage.UsageError(
                f"--workers: {count} workers need --cluster: they are nodes of one chat (docs/CLUSTER.md)"
            )
        for description in options["listen"]:
            problem = shareable(description)
            if problem:
                raise usage.UsageError(f"--workers: {problem}")
    if options["adopt-fds"] is not None:
        fds = adopted_fds(options)
        if fds is None or len(fds) != len(options["listen"]):
            raise usage.UsageError("--adopt-fds: one inherited descriptor per --listen (set by --workers)")


def adopted_fds(options: Any) -> list[int] | None:
    """``--adopt-fds 3,4`` as [3, 4]; None when not given or not numbers."""
    text = options["adopt-fds"]
    if text is None:
        return None
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        return None


def workers_service(options: Any, reactor: Any = None) -> Any:
    """The ``--workers N`` parent's application: the pool, and ``--health`` for it."""
    from twisted.application.service import MultiService

    from .health import HealthService, PoolHealth

    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    spec = WorkerSpec(
        count=options["workers"],
        listen=list(options["listen"]),
        arguments=child_arguments(options.argv, options.shortOpt, options.longOpt),
        health=options["health"],
        metrics=options["metrics"],
    )
    application = MultiService()
    pool = WorkerPool(spec, reactor)
    pool.setServiceParent(application)
    if spec.health is not None:
        HealthService(spec.health, reactor, PoolHealth(reactor, pool).problems).setServiceParent(application)
    return application
