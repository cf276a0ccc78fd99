"""The activator: one pure ASGI app in front of every revision, built by ``build_activator``.

Per request (docs/architecture.md, "The path of one request"): route host or path to a revision,
read the body once (bounded), take a slot on a replica from the revision's queue (waiting,
bounded, while none has room and poking the autoscaler on the first waiter at zero), forward and
stream the answer, then give the slot back. A disconnect at any point after the body cancels the
work in progress: the wait, or the upstream call. The revision's ``timeoutSeconds`` bounds the
wait and the answer together (``activator.deadlines``): 504 before the answer starts, a
``timeout`` error event in a token stream that has.

The root URL routes OpenAI paths by the body's ``model`` and ``GET /v1/models`` is answered here
from the specs (``activator.routing``, ``activator.models``); a token stream held waiting for a
replica gets SSE comments every ``keepalive_s`` (``activator.keepalive``).

``Activator.running()`` owns everything that runs beside requests: the bus subscription that
keeps routes and endpoints current, the stats publisher, and the pooled HTTP client.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import random
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field, replace
from types import TracebackType

from starlette.types import ASGIApp, Receive, Scope, Send

from activator import engine_load
from activator.auth import KeyStore, Unauthorized, authorize, bearer, strip_credentials
from activator.deadlines import Deadlines
from activator.errors import (
    ActivatorError,
    BodyTooLarge,
    ClientGone,
    NotFound,
    UpstreamClosed,
    UpstreamUnavailable,
    error_response,
)
from activator.http.extensions import DISCONNECT_EXTENSION
from activator.http.upstream import UpstreamPool
from activator.keepalive import HeldStream, would_wait
from activator.limits import live_activators, shared_limits
from activator.metrics import CONTENT_TYPE, ActivatorMetrics, RevisionGauges
from activator.models import model_in, model_list, model_of, prefix_key
from activator.proxy import forward_retrying, upstream_headers
from activator.queue import QueueLimits, RevisionQueue
from activator.routing import (
    ByModel,
    Local,
    ModelList,
    Route,
    RouteTable,
    adapter_of,
    build_route_table,
    resolve,
    route_model,
)
from activator.traffic_report import TrafficReport
from torpor.bus.base import (
    ActivatorStats,
    Bus,
    BusEvent,
    EndpointsChanged,
    RevisionEndpoints,
    ServicesChanged,
)
from torpor.spec import RevisionRef, RevisionSpec, ServiceSpec

log = logging.getLogger("torpor.activator")

CLIENT_CLOSED = 499  # nginx's convention for "client went away before the answer"
_RESUBSCRIBE_DELAY_S = 0.5
WATCH_AFTER_S = 0.002  # when a request starts watching for its client's disconnect
SHARE_REFRESH_S = 10.0  # an idle revision's activator count is re-read this often (the stats TTL)


@dataclass(frozen=True)
class ActivatorConfig:
    activator_id: str
    domain: str = "example.com"
    stats_interval_s: float = 1.0
    max_body_bytes: int = 8 * 1024 * 1024  # bigger -> 413
    seed: int | None = None  # traffic-split and balancing randomness, for tests
    connect_timeout_s: float = 5.0  # to a replica; refused connections fail at once anyway
    retry_after_s: int = 1  # Retry-After on 503 queue full
    # SSE comment interval for a streaming request held waiting for a replica (activator
    # .keepalive); 0 sends none. 5 s: well inside the common 60 s idle timeouts of proxies,
    # at a cost of 25 bytes a comment.
    keepalive_s: float = 5.0
    # How often replicas' vLLM load is scraped for the balancer (activator.engine_load: only
    # revisions with a choice to make and traffic here); 0: none, power-of-two choices on
    # in-flight counts alone. Off by default: on the 2-core machine the engine-aware policy
    # showed no gain over power of two choices (benchmarks/results/routing.md).
    engine_load_s: float = 0.0
    # The routing table follows the bus's events; it is also re-read whole this often, so a
    # change whose event was lost (a pub/sub message dropped without the subscription failing)
    # is picked up within the interval. One snapshot per activator per interval: bounded, and
    # proportional to the revisions deployed, not to traffic or ticks (over Redis, decoding a
    # snapshot of 10,000 services holds the event loop, hence minutes, not seconds). 0: never.
    resync_s: float = 300.0
    # Where per-service API keys are read (``torpor.dev/api-keys-secret``); None: a service that
    # asks for keys is refused (fail closed), services without keys are unaffected.
    key_store: KeyStore | None = None
    # ``/metrics`` answers only ``Authorization: Bearer <metrics_token>`` when set (issue 23: it
    # lists every namespace and service); the embedded platform sets its control token. None:
    # open, for a cluster that keeps the activator's port off the clients' network.
    metrics_token: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not self.activator_id:
            raise ValueError("activator_id must not be empty")
        if self.stats_interval_s <= 0:
            raise ValueError("stats_interval_s must be positive")
        if self.max_body_bytes < 0:
            raise ValueError("max_body_bytes must not be negative")
        if self.keepalive_s < 0:
            raise ValueError("keepalive_s must not be negative")
        if self.engine_load_s < 0:
            raise ValueError("engine_load_s must not be negative")
        if self.resync_s < 0:
            raise ValueError("resync_s must not be negative")


@dataclass(frozen=True, slots=True)
class _Labels:
    namespace: str
    service: str
    revision: str


class _DisconnectWatch:
    """Cancels the current task the moment the client disconnects; re-raised as ``ClientGone``.

    With the server's disconnect callback (see ``DISCONNECT_EXTENSION``) that costs nothing per
    request. Otherwise one listener task waits on ``receive()``, and whichever of it and the
    request's own task finishes first ends the other: the task-group shape of Starlette's
    StreamingResponse at the cost of one extra task instead of two. That listener starts
    ``WATCH_AFTER_S`` into the request, not at once: most proxied requests finish sooner and
    never pay for a task, while a client that left earlier is seen the moment the listener
    starts, since the server remembers the disconnect.
    """

    __slots__ = ("_active", "_listener", "_receive", "_register", "_task", "_timer", "gone")

    def __init__(self, scope: Scope, receive: Receive) -> None:
        self.gone = False
        self._active = True
        self._receive = receive
        extensions = scope.get("extensions")
        self._register = extensions.get(DISCONNECT_EXTENSION) if extensions else None
        self._task: asyncio.Task[object] | None = None
        self._listener: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None

    async def __aenter__(self) -> _DisconnectWatch:
        self._task = asyncio.current_task()
        if self._register is not None:
            self._register(self._disconnected)
        else:
            self._timer = asyncio.get_running_loop().call_later(WATCH_AFTER_S, self._start)
        return self

    def _start(self) -> None:
        if not self._active:
            return
        self._listener = asyncio.get_running_loop().create_task(self._listen(self._receive))
        self._listener.add_done_callback(self._on_done)

    async def _listen(self, receive: Receive) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return

    def _on_done(self, listener: asyncio.Task[None]) -> None:
        if not listener.cancelled() and listener.exception() is None:
            self._disconnected()

    def _disconnected(self) -> None:
        if not self._active:
            return
        self.gone = True
        if self._task is not None:
            self._task.cancel()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        self._active = False
        if self._timer is not None:
            self._timer.cancel()
        if self._listener is not None and not self._listener.done():
            self._listener.cancel()
        if self.gone and self._task is not None and exc_type is asyncio.CancelledError:
            self._task.uncancel()
            raise ClientGone() from None
        return False


class Activator:
    """The ASGI app plus what keeps it current. Build with ``build_activator``."""

    def __init__(self, bus: Bus, config: ActivatorConfig) -> None:
        self._bus = bus
        self.config = config
        self._rng = random.Random(config.seed)
        self._table: RouteTable = build_route_table((), config.domain)
        self._services: tuple[ServiceSpec, ...] = ()  # as last applied
        self._queues: dict[str, RevisionQueue] = {}
        self._labels: dict[str, _Labels] = {}
        # Limits across activators (activator.limits): how many serve each revision, the spec
        # each share is taken of, and requests_total at the last look (what makes one busy).
        self._specs: dict[str, RevisionSpec] = {}
        self._sharers: dict[str, int] = {}
        self._seen_total: dict[str, int] = {}
        self._share_read: dict[str, float] = {}  # monotonic time of the last count read
        self._traffic_at: dict[str, float] = {}  # monotonic time traffic was last seen here
        self._default_sharers = 1
        self._pool: UpstreamPool | None = None
        self._deadlines = Deadlines()
        self.metrics = ActivatorMetrics(self._gauges)
        # The Activator itself is the ASGI callable; ``app`` names it for explicit wiring. (A bound
        # method would not do: servers sniff ``async def __call__`` to tell ASGI 3 from ASGI 2.)
        self.app: ASGIApp = self

    # ---- state from the bus -------------------------------------------------------------

    def apply(self, event: BusEvent) -> None:
        """Apply one bus event (idempotent: events carry whole sets)."""
        if isinstance(event, ServicesChanged):
            self.apply_services(event.services)
        elif isinstance(event, EndpointsChanged):
            self.apply_endpoints(event.endpoints)

    def apply_services(self, services: tuple[ServiceSpec, ...]) -> None:
        self._services = services
        self._table = build_route_table(services, self.config.domain)
        live: set[str] = set()
        for service in services:
            for revision in service.revisions:
                key = revision.ref.key
                live.add(key)
                self._labels[key] = _Labels(revision.ref.namespace, service.name, revision.ref.name)
                self._specs[key] = revision
                self._queue_for(revision).limits = self._limits_for(revision)
        for key in list(self._queues):
            if key not in live:
                self._queues.pop(key).close(NotFound(f"revision {key} was deleted"))
                self._labels.pop(key, None)
                self._specs.pop(key, None)
                self._sharers.pop(key, None)
                self._seen_total.pop(key, None)
                self._share_read.pop(key, None)
                self._traffic_at.pop(key, None)

    def apply_endpoints(self, endpoints: RevisionEndpoints) -> None:
        queue = self._queues.get(endpoints.revision)
        if queue is None:
            # Endpoints may arrive before the spec (separate bus messages); keep them.
            queue = RevisionQueue(endpoints.revision, QueueLimits(), self._bus.poke, self._rng)
            self._queues[endpoints.revision] = queue
        queue.set_endpoints(endpoints)

    def _queue_for(self, revision: RevisionSpec) -> RevisionQueue:
        key = revision.ref.key
        queue = self._queues.get(key)
        if queue is None:
            queue = RevisionQueue(key, self._limits_for(revision), self._bus.poke, self._rng)
            self._queues[key] = queue
        return queue

    def _limits_for(self, revision: RevisionSpec) -> QueueLimits:
        n = self._sharers.get(revision.ref.key, self._default_sharers)
        return shared_limits(revision, n)

    def limits(self, revision: str) -> QueueLimits | None:
        """The limits this activator enforces for ``revision`` now (its share of the spec's)."""
        queue = self._queues.get(revision)
        return queue.limits if queue is not None else None

    async def refresh_shares(self) -> None:
        """Re-read how many activators serve each revision this one has traffic on, and take
        its share of their limits (``activator.limits``). One ``revision_stats`` read per busy
        revision per stats interval, and one per ``SHARE_REFRESH_S`` for a revision that had
        traffic here before (so its next burst starts from a fresh count); revisions that never
        had any cost nothing."""
        measured = 0
        now = time.monotonic()
        for key, queue in list(self._queues.items()):
            spec = self._specs.get(key)
            total = queue.requests_total
            seen = self._seen_total.get(key)
            busy = queue.queued or queue.in_flight or total != seen
            self._seen_total[key] = total
            if queue.queued or queue.in_flight or (seen is not None and total != seen):
                self._traffic_at[key] = now
            # Activators report a revision only while they have traffic on it (TrafficReport),
            # so while this one does (within the stats TTL), another may start to: re-read.
            recent = now - self._traffic_at.get(key, -SHARE_REFRESH_S) < SHARE_REFRESH_S
            stale = total > 0 and now - self._share_read.get(key, 0.0) >= SHARE_REFRESH_S
            if spec is None or not (busy or recent or stale):
                continue
            self._share_read[key] = now
            n = live_activators(await self._bus.revision_stats(key), self.config.activator_id)
            measured = max(measured, n)
            if n != self._sharers.get(key):
                self._sharers[key] = n
                # A larger share reaches waiters at the next release (there is one coming:
                # a share only holds requests back while others are in flight).
                queue.limits = shared_limits(spec, n)
        if measured:
            # A revision that gets its first request here starts from the latest count seen.
            self._default_sharers = measured

    def _labels_for(self, key: str) -> _Labels:
        labels = self._labels.get(key)
        if labels is None:
            ref = RevisionRef.parse(key)
            labels = _Labels(ref.namespace, "", ref.name)
        return labels

    # ---- signals --------------------------------------------------------------------------

    def stats(self) -> list[ActivatorStats]:
        now = time.time()
        return [
            ActivatorStats(
                activator_id=self.config.activator_id,
                revision=key,
                queued=q.queued,
                in_flight=q.in_flight,
                at=now,
                requests_total=q.requests_total,
            )
            for key, q in self._queues.items()
        ]

    def _gauges(self) -> Iterator[RevisionGauges]:
        for key, q in list(self._queues.items()):
            labels = self._labels_for(key)
            yield RevisionGauges(
                labels.namespace, labels.service, labels.revision, q.queued, q.in_flight
            )

    # ---- lifecycle ------------------------------------------------------------------------

    def running(self) -> AbstractAsyncContextManager[None]:
        return self._running()

    @asynccontextmanager
    async def _running(self) -> AsyncIterator[None]:
        self._pool = UpstreamPool(self.config.connect_timeout_s)
        ready = asyncio.Event()
        follower = asyncio.create_task(self._follow_bus(ready), name="activator-bus")
        stats = asyncio.create_task(self._publish_stats(), name="activator-stats")
        tasks = [follower, stats]
        if self.config.engine_load_s > 0:
            tasks.append(
                asyncio.create_task(
                    engine_load.follow(
                        lambda: self._pool, self._queues.values, self.config.engine_load_s
                    ),
                    name="activator-engine-load",
                )
            )
        try:
            ready_wait = asyncio.create_task(ready.wait())
            done, _ = await asyncio.wait({ready_wait, follower}, return_when="FIRST_COMPLETED")
            if follower in done:
                ready_wait.cancel()
                await asyncio.gather(ready_wait, return_exceptions=True)
                follower.result()  # surface why the subscription failed
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            pool, self._pool = self._pool, None
            await pool.aclose()

    async def _follow_bus(self, ready: asyncio.Event) -> None:
        while True:
            try:
                await self._follow_once(ready)
                return  # the bus closed
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("bus subscription failed; resubscribing")
                await asyncio.sleep(_RESUBSCRIBE_DELAY_S)

    async def _follow_once(self, ready: asyncio.Event) -> None:
        events = self._bus.events()
        # Subscribe before reading the snapshot, so nothing published in between is missed.
        pending = asyncio.ensure_future(anext(events))
        try:
            await asyncio.sleep(0)
            await self.resync()
            ready.set()
            loop = asyncio.get_running_loop()
            # On a clock of its own: a bus busy with events must not put the resync off forever.
            next_resync = loop.time() + self.config.resync_s
            while True:
                timeout = max(0.0, next_resync - loop.time()) if self.config.resync_s else None
                done, _ = await asyncio.wait({pending}, timeout=timeout)
                if done:
                    try:
                        event = pending.result()
                    except StopAsyncIteration:
                        return
                    self.apply(event)
                    pending = asyncio.ensure_future(anext(events))
                # After the event in hand, so the snapshot is never older than what was applied.
                if self.config.resync_s and loop.time() >= next_resync:
                    await self.resync()
                    next_resync = loop.time() + self.config.resync_s
        finally:
            pending.cancel()
            await asyncio.gather(pending, return_exceptions=True)
            with contextlib.suppress(Exception):
                await events.aclose()  # type: ignore[attr-defined]

    async def resync(self) -> None:
        """Re-read the whole routing state from the bus (idempotent: whole sets, versions).

        Services that read as already applied are not applied again: rebuilding the routing
        table for 10,000 services holds the event loop for ~0.13 s, comparing them ~0.01 s."""
        snapshot = await self._bus.snapshot()
        if snapshot.services != self._services:
            self.apply_services(snapshot.services)
        for endpoints in snapshot.endpoints.values():
            self.apply_endpoints(endpoints)

    async def _publish_stats(self) -> None:
        report = TrafficReport(self.config.activator_id)  # revisions with traffic only
        while True:
            await asyncio.sleep(self.config.stats_interval_s)
            try:
                stats = report.select(self._queues, time.time())
                await self._bus.publish_stats([self._with_adapters(s) for s in stats])
            except Exception:
                log.warning("could not publish stats", exc_info=True)
            try:
                await self.refresh_shares()
            except Exception:
                log.warning("could not read the activators sharing limits", exc_info=True)

    def _with_adapters(self, stats: ActivatorStats) -> ActivatorStats:
        """Per-adapter traffic (issue 16) on a revision's stats, when it has adapter traffic."""
        queue = self._queues.get(stats.revision)
        adapters = queue.adapter_traffic if queue is not None else ()
        return replace(stats, adapters=adapters) if adapters else stats

    # ---- requests -------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            # Lifecycle is explicit (``running()``); acknowledge a server's lifespan protocol.
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        host = ""
        for name, value in scope["headers"]:
            if name == b"host":
                host = value.decode("latin-1")
                break
        raw = scope.get("raw_path")
        # Some servers put the query in raw_path; the query travels separately.
        raw_path = raw.split(b"?", 1)[0].decode("latin-1") if raw else scope["path"]
        try:
            route = resolve(self._table, host, raw_path, self._rng.random())
        except ActivatorError as error:
            self.metrics.count("", "", "", error.status)
            # A small refused body is read first: closing on unread bytes resets the connection,
            # and the client can lose the answer with it.
            await _drain(receive, _DRAIN_BYTES)
            await _send_error(send, error)
            return
        if isinstance(route, Local):
            if route.name == "metrics" and not self._metrics_allowed(scope["headers"]):
                self.metrics.count("", "", "", 401)
                await _send_error(send, Unauthorized(
                    "the activator's /metrics needs the control token: "
                    "'Authorization: Bearer <token>'"
                ))
                return
            await self._local(route, send)
            return
        if isinstance(route, ModelList):
            if route.guard is not None:
                try:
                    authorize(self.config.key_store, route.guard, scope["headers"])
                except ActivatorError as error:
                    self.metrics.count("", "", "", error.status)
                    await _send_error(send, error)
                    return
            self.metrics.count("", "", "", 200)
            await _send_json(
                send, model_list(route.models, int(time.time()), dict(route.parents))
            )
            return
        if isinstance(route, ByModel):
            await self._by_model(scope, receive, send, route)
            return
        await self._proxy(scope, receive, send, route)

    async def _by_model(self, scope: Scope, receive: Receive, send: Send, by: ByModel) -> None:
        """The root URL: the body (read once, bounded) names the model, and so the revision."""
        try:
            body = await _read_body(scope, receive, self.config.max_body_bytes)
            route = route_model(self._table, model_of(body), by.path, self._rng.random())
        except ActivatorError as error:
            self.metrics.count("", "", "", error.status)
            await _send_error(send, error)
            return
        except ClientGone:
            self.metrics.count("", "", "", CLIENT_CLOSED)
            return
        await self._proxy(scope, receive, send, route, body)

    async def _proxy(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        route: Route,
        body: bytes | None = None,
    ) -> None:
        revision = route.revision
        labels = self._labels_for(revision.ref.key)
        queue = self._queue_for(revision)
        code = CLIENT_CLOSED
        held: HeldStream | None = None
        counted: str | None = None  # the adapter whose traffic this request counts in
        try:
            # Before the body is read (unless the root URL needed it to route): an unauthorised
            # client costs nothing more. The key is dropped from what goes on to the replica.
            allowed = authorize(self.config.key_store, revision, scope["headers"])
            if body is None:
                body = await _read_body(scope, receive, self.config.max_body_bytes)
            # A LoRA adapter of the revision, named by the body's model (root or per-model URL).
            adapter = route.adapter
            if adapter is None and revision.lora is not None:
                adapter = adapter_of(revision, model_in(body))
            if adapter is not None:
                queue.adapter_started(adapter)
                counted = adapter
            headers = upstream_headers(allowed, scope.get("client"), scope["scheme"])
            query = strip_credentials(scope.get("query_string", b""))
            target = route.path + ("?" + query.decode("latin-1") if query else "")
            pool = self._pool
            if pool is None:
                raise UpstreamUnavailable("activator is not running")
            async with _DisconnectWatch(scope, receive):
                loop = asyncio.get_running_loop()
                started = loop.time()
                # ``timeoutSeconds`` bounds the whole request, as Knative's does: the wait for a
                # replica and the answer share one deadline.
                deadline = self._deadlines.at(started + queue.limits.timeout_s)
                # Prefix affinity (activator.balancer) only where there is a choice to make.
                affinity = (
                    prefix_key(body)
                    if self.config.engine_load_s > 0 and len(queue.backends) > 1
                    else None
                )
                if self.config.keepalive_s > 0 and would_wait(queue, adapter):
                    # A token stream held long enough gets SSE comments (activator.keepalive).
                    held = HeldStream(send, body, self.config.keepalive_s)
                    held.arm()
                    try:
                        backend = await queue.acquire(
                            deadline=deadline.when, affinity=affinity, adapter=adapter
                        )
                    finally:
                        await held.settle()
                    if held.committed:
                        send = held.relay
                else:
                    backend = await queue.acquire(
                        deadline=deadline.when, affinity=affinity, adapter=adapter
                    )
                self.metrics.observe_wait(revision.ref.key, labels, loop.time() - started)

                # Retried while no byte of an answer went out (activator.proxy).
                code = await forward_retrying(
                    queue,
                    backend,
                    pool,
                    scope["method"],
                    target,
                    headers,
                    body,
                    send,
                    deadline,
                    adapter,
                )
        except ActivatorError as error:
            code = error.status
            if held is not None and held.committed:
                # The 200 went out with the first keep-alive: the failure is an event now.
                with contextlib.suppress(Exception):
                    await held.fail(error)
            else:
                await _send_error(send, error)
        except ClientGone:
            code = CLIENT_CLOSED
        except (UpstreamClosed, OSError) as exc:
            # The response had started: all that is left is to end it abruptly.
            code = 502
            log.warning("replica failed mid-response for %s: %s", revision.ref.key, exc)
        finally:
            if counted is not None:
                queue.adapter_finished(counted)
            self.metrics.count(labels.namespace, labels.service, labels.revision, code)

    def _metrics_allowed(self, headers: list[tuple[bytes, bytes]]) -> bool:
        expected = self.config.metrics_token
        if expected is None:
            return True
        token = bearer(headers)
        return token is not None and hmac.compare_digest(token.encode(), expected.encode())

    async def _local(self, route: Local, send: Send) -> None:
        if route.name == "metrics":
            body = self.metrics.render()
            content_type = CONTENT_TYPE.encode()
        else:
            body = json.dumps({"status": "ok", "activator": self.config.activator_id}).encode()
            content_type = b"application/json"
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", content_type),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


_DRAIN_BYTES = 64 * 1024


async def _drain(receive: Receive, limit: int) -> None:
    """Read and drop up to ``limit`` bytes of a request body that will not be forwarded."""
    read = 0
    while read <= limit:
        message = await receive()
        if message["type"] != "http.request":
            return
        read += len(message.get("body", b""))
        if not message.get("more_body"):
            return


async def _read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """The whole request body, read once so one retry can replay it; at most ``limit`` bytes."""
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                declared = int(value)
            except ValueError:
                declared = 0
            if declared > limit:
                raise BodyTooLarge(f"request body of {declared} bytes exceeds {limit} bytes")
            break
    first = await receive()
    if first["type"] == "http.disconnect":
        raise ClientGone()
    body: bytes = first.get("body", b"")
    if not first.get("more_body", False):
        if len(body) > limit:
            raise BodyTooLarge(f"request body exceeds {limit} bytes")
        return body
    chunks = [body]
    size = len(body)
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"request body exceeds {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _send_json(send: Send, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _send_error(send: Send, error: ActivatorError) -> None:
    status, headers, body = error_response(error)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def build_activator(bus: Bus, config: ActivatorConfig) -> Activator:
    return Activator(bus, config)
