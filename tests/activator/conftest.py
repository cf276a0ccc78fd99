"""Real HTTP for activator tests: tiny upstream ASGI apps served by uvicorn on free ports.

``serve(app)`` runs any ASGI app under uvicorn (httptools, as in production) in the test's own
loop on a port the kernel picks, and stops it on exit. ``Upstream`` is a replica stand-in that
records what it received and can stream, hold, and notice disconnects. ``running_activator``
wires an Activator to a MemoryBus and serves it the same way.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send

from activator.app import Activator, ActivatorConfig, build_activator
from activator.http.server import uvicorn_config
from harness.ports import free_port as free_port  # one for every test (re-exported)
from torpor.bus.base import Endpoint, RevisionEndpoints
from torpor.bus.memory import MemoryBus
from torpor.spec import (
    RevisionRef,
    RevisionSpec,
    RuntimeSpec,
    ServiceSpec,
    TrafficTarget,
)


async def read_body(receive: Receive) -> bytes:
    """An ASGI request's whole body, for the test apps."""
    body = b""
    while True:
        message = await receive()
        chunk: bytes = message.get("body", b"")
        body += chunk
        if not message.get("more_body"):
            return body


@asynccontextmanager
async def serve(
    app: ASGIApp, *, as_activator: bool = False, **overrides: Any
) -> AsyncIterator[str]:
    """Serve ``app`` on 127.0.0.1 at a free port; yields its base URL.

    ``as_activator`` serves it the way the activator is served in production
    (``activator.http.server.uvicorn_config``, ``overrides`` passed on); otherwise plain uvicorn
    with httptools, like a replica.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    if as_activator:
        settings: dict[str, Any] = {"timeout_graceful_shutdown": 2, **overrides}
        config = uvicorn_config(app, "127.0.0.1", port, **settings)
    else:
        config = uvicorn.Config(
            app,
            lifespan="off",
            log_level="warning",
            ws="none",
            http="httptools",
            access_log=False,
            timeout_graceful_shutdown=2,
        )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.005)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
        sock.close()


@dataclass
class Seen:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Upstream:
    """A replica stand-in. JSON echo by default; ``/stream`` sends SSE events one by one.

    ``/stream?n=N`` sends ``N`` events; after the first it waits for ``gate`` so a test can prove
    the first event reached the client before the rest existed (no buffering in between).
    ``disconnected`` is set when a client goes away mid-stream.
    """

    name: str = "replica"
    seen: list[Seen] = field(default_factory=list)
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    disconnected: asyncio.Event = field(default_factory=asyncio.Event)
    stream_started: asyncio.Event = field(default_factory=asyncio.Event)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "http"
        body = await read_body(receive)
        seen = Seen(
            scope["method"],
            scope["path"],
            scope["query_string"].decode(),
            {k.decode(): v.decode() for k, v in scope["headers"]},
            body,
        )
        self.seen.append(seen)
        if scope["path"] in ("/stream", "/v1/responses/stream"):
            await self._stream(scope, receive, send)
            return
        payload = json.dumps(
            {
                "replica": self.name,
                "method": seen.method,
                "path": seen.path,
                "query": seen.query,
                "body": body.decode(),
            }
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"x-replica", self.name.encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": payload})

    async def _stream(self, scope: Scope, receive: Receive, send: Send) -> None:
        n = int(
            dict(p.split("=") for p in scope["query_string"].decode().split("&") if p).get("n", "3")
        )

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            self.disconnected.set()

        watcher = asyncio.create_task(watch())
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")],
                }
            )
            self.stream_started.set()
            for i in range(n):
                event = f"data: {json.dumps({'token': i})}\n\n".encode()
                await send({"type": "http.response.body", "body": event, "more_body": True})
                if i == 0:
                    gate = asyncio.create_task(self.gate.wait())
                    await asyncio.wait({gate, watcher}, return_when=asyncio.FIRST_COMPLETED)
                    gate.cancel()
                    if watcher.done():
                        return
            await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)


def revision(
    name: str,
    service: str = "chat",
    namespace: str = "default",
    **fields: Any,
) -> RevisionSpec:
    spec = RevisionSpec(
        ref=RevisionRef(namespace, name),
        service=service,
        generation=int(name.rsplit("-", 1)[-1]) if name[-1].isdigit() else 1,
        runtime=RuntimeSpec(image="torpor/runtime", model="/models/tiny"),
    )
    return replace(spec, **fields)


def service(
    name: str = "chat",
    namespace: str = "default",
    revisions: tuple[RevisionSpec, ...] | None = None,
    traffic: tuple[TrafficTarget, ...] | None = None,
) -> ServiceSpec:
    revisions = revisions or (revision(f"{name}-00001", name, namespace),)
    traffic = traffic or (TrafficTarget(revisions[-1].ref.name, 100, latest_revision=True),)
    return ServiceSpec(namespace, name, 1, revisions, traffic)


def endpoints(revision_key: str, *urls: str, draining: tuple[str, ...] = ()) -> RevisionEndpoints:
    return RevisionEndpoints(
        revision_key,
        tuple(Endpoint(f"r{i}", url, draining=url in draining) for i, url in enumerate(urls)),
    )


@dataclass
class Running:
    bus: MemoryBus
    activator: Activator
    url: str


ActivatorFactory = Callable[..., Any]


@pytest.fixture
def running_activator() -> ActivatorFactory:
    """``async with running_activator(services, **config) as running:`` — served over HTTP."""

    @asynccontextmanager
    async def start(
        services: tuple[ServiceSpec, ...] = (), **config: Any
    ) -> AsyncIterator[Running]:
        bus = MemoryBus()
        await bus.publish_services(services)
        config.setdefault("seed", 7)
        activator = build_activator(bus, ActivatorConfig(activator_id="a1", **config))
        try:
            async with activator.running(), serve(activator.app, as_activator=True) as url:
                yield Running(bus, activator, url)
        finally:
            await bus.aclose()

    return start


async def eventually(check: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Wait until ``check()`` holds (the bound only turns a hang into a failure).

    Polls: the state checked (queue lengths, counters) has no event to wait on.
    """
    async with asyncio.timeout(timeout_s):
        while not check():  # noqa: ASYNC110
            await asyncio.sleep(0.005)
