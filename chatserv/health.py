"""``--health ENDPOINT``: ``GET /healthz`` for load balancers.

The answer is ``200 ok`` only while this node can serve: its database
answers a cheap query (through the store's reader thread, so the check sees
what a login or a history page would see, with a timeout so that a wedged
connection reads as a problem rather than as a hanging check) and its
cluster reports no problem (:meth:`chatserv.cluster.Cluster.health_problems`:
for Redis, connected, subscribed, heartbeat current). Anything else is
``503`` with one reason per line, which is what HAProxy's ``option
httpchk`` and a human with curl both want.

A check runs per request, and requests that arrive while one is running
share its answer, so a load balancer probing every second from several
places costs at most one query in flight.

With ``--workers`` the parent serves the endpoint and answers for the whole
pool: 503 while any worker is down or any worker's own check (served on a
private UNIX socket, see :mod:`chatserv.workers`) reports a problem.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from .logs import Logger

if TYPE_CHECKING:
    from .cluster import Cluster
    from .workers import WorkerPool

log = Logger()

#: Seconds the database has to answer the check query.
DB_TIMEOUT = 3.0

#: Problems, as lines for the 503 body; none means healthy.
Check = Callable[[], "Deferred[list[str]]"]


class NodeHealth:
    """The checks of one node: its database (*store*, may be None) and its *cluster*."""

    def __init__(self, reactor: Any, store: Any, cluster: Cluster, timeout: float = DB_TIMEOUT) -> None:
        self.reactor = reactor
        self.store = store
        self.cluster = cluster
        self.timeout = timeout
        self._db: Deferred[str | None] | None = None
        self._waiting: list[Deferred[str | None]] = []

    def problems(self) -> Deferred[list[str]]:
        return Deferred.fromCoroutine(self._problems())

    async def _problems(self) -> list[str]:
        found = [f"cluster: {p}" for p in self.cluster.health_problems()]
        if self.store is not None and hasattr(self.store, "ping"):
            db = await self._database()
            if db is not None:
                found.insert(0, f"database: {db}")
        return found

    def _database(self) -> Deferred[str | None]:
        """What is wrong with the database, or None; one query in flight at most."""
        mine: Deferred[str | None] = Deferred()
        if self._db is not None:
            self._waiting.append(mine)
            return mine
        self._waiting = waiting = [mine]
        d: Deferred[str | None] = self.store.ping().addCallbacks(lambda _: None, _reason)
        d.addTimeout(self.timeout, self.reactor, onTimeoutCancel=self._late)
        self._db = d

        def done(result: str | None) -> None:
            self._db = None
            for waiter in waiting:
                waiter.callback(result)

        d.addCallback(done)
        return mine

    def _late(self, result: Any, timeout: float) -> str:
        return f"no answer in {timeout:g} s"


def _reason(failure: Failure) -> str:
    text = str(failure.value).strip().splitlines()
    return text[0] if text else type(failure.value).__name__


class PoolHealth:
    """The ``--workers`` parent's checks: every worker up and healthy."""

    def __init__(self, reactor: Any, pool: WorkerPool, timeout: float = DB_TIMEOUT + 1) -> None:
        self.reactor = reactor
        self.pool = pool
        self.timeout = timeout

    def problems(self) -> Deferred[list[str]]:
        asks = [
            self._ask(worker.index, worker.health_socket) for worker in self.pool.workers if worker.running
        ]
        found = self.pool.problems()

        def collect(results: list[tuple[bool, list[str]]]) -> list[str]:
            for _, lines in results:
                found.extend(lines)
            return sorted(found)

        return DeferredList(asks).addCallback(collect)  # type: ignore[arg-type]

    def _ask(self, index: int, path: str) -> Deferred[list[str]]:
        from twisted.internet.endpoints import UNIXClientEndpoint
        from twisted.web.client import Agent, readBody

        class _Endpoints:
            def endpointForURI(self, uri: Any) -> Any:
                return UNIXClientEndpoint(reactor, path, timeout=2)

        reactor = self.reactor
        agent = Agent.usingEndpointFactory(reactor, _Endpoints())
        d = agent.request(b"GET", b"http://worker/healthz")

        def answered(response: Any) -> Deferred[list[str]]:
            def lines(body: bytes) -> list[str]:
                if response.code == 200:
                    return []
                text = body.decode("utf-8", "replace").splitlines()
                return [f"worker {index}: {line}" for line in text if line] or [
                    f"worker {index}: HTTP {response.code}"
                ]

            return readBody(response).addCallback(lines)  # type: ignore[no-any-return]

        def failed(failure: Failure) -> list[str]:
            return [f"worker {index}: health check failed: {_reason(failure)}"]

        def late(result: Any, timeout: float) -> list[str]:
            return [f"worker {index}: no health answer in {timeout:g} s"]

        d.addCallback(answered).addErrback(failed)
        d.addTimeout(self.timeout, reactor, onTimeoutCancel=late)
        return d  # type: ignore[no-any-return]


class HealthResource(Resource):
    """``/healthz``: 200 ``ok``, or 503 and the problems, one per line."""

    isLeaf = True

    def __init__(self, check: Check) -> None:
        super().__init__()
        self.check = check

    def render_GET(self, request: Request) -> Any:
        if request.postpath not in ([], [b""]):
            request.setResponseCode(404)
            return b"not found\n"
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        finished = request.notifyFinish()
        gone: list[Failure] = []
        finished.addErrback(gone.append)

        def answer(problems: list[str]) -> None:
            if gone:
                return  # the prober hung up
            if problems:
                request.setResponseCode(503)
                request.write("".join(f"{p}\n" for p in problems).encode("utf-8"))
            else:
                request.write(b"ok\n")
            request.finish()

        def broken(failure: Failure) -> None:
            log.failure("the health check itself failed", failure)
            answer([f"health check failed: {_reason(failure)}"])

        self.check().addCallbacks(answer, broken)
        return NOT_DONE_YET


class _QuietSite(Site):
    """No access log line per probe: a load balancer probes every second or two."""

    noisy = False

    def log(self, request: Any) -> None:
        pass


class HealthService(Service):
    """Serves ``/healthz`` on *description* (a strports string) while running.

    ``listening`` fires with the bound port, which is how tests learn it.
    """

    name = "health"  # type: ignore[assignment]

    def __init__(self, description: str, reactor: Any, check: Check) -> None:
        self.description = description
        self.reactor = reactor
        self.check = check
        self.port: IListeningPort | None = None
        self.listening: Deferred[IListeningPort] = Deferred()

    def startService(self) -> None:
        from .service import cannot_listen

        super().startService()
        root = Resource()
        root.putChild(b"healthz", HealthResource(self.check))
        failures: list[Any] = []
        d = serverFromString(self.reactor, self.description).listen(_QuietSite(root))
        d.addCallbacks(self._listening, failures.append)
        if failures:
            cannot_listen(self.description, failures[0].value, doing="serve health checks on")

    def _listening(self, port: IListeningPort) -> None:
        self.port = port
        log.info(
            "health checks at {where} ({address})/healthz", where=self.description, address=port.getHost()
        )
        self.listening.callback(port)

    def stopService(self) -> Deferred[Any] | None:
        super().stopService()
        port, self.port = self.port, None
        return port.stopListening() if port is not None else None  # type: ignore[return-value]
