"""``timeoutSeconds`` bounds the whole request (queue and answer), against a replica that stalls.

Issue 13 item 3: with a replica frozen for 40 s and ``timeoutSeconds: 10`` a request got its 200
after 40.4 s, because only the wait in the queue was bounded.
"""

from __future__ import annotations

import asyncio
import json

import httpx
from starlette.types import Receive, Scope, Send

from tests.activator.conftest import (
    ActivatorFactory,
    Upstream,
    endpoints,
    read_body,
    revision,
    serve,
    service,
)

KEY = "default/chat-00001"
TIMEOUT_S = 0.5
CHAT = service(revisions=(revision("chat-00001", timeout_s=TIMEOUT_S),))


class Frozen:
    """A replica that reads the request and never answers; ``gone`` is set when its client
    (the activator) gives up on it, as vLLM learns to abort a generation."""

    def __init__(self) -> None:
        self.gone = asyncio.Event()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await read_body(receive)
        while (await receive())["type"] != "http.disconnect":
            pass
        self.gone.set()


async def test_a_replica_that_never_answers_gets_a_504_at_the_timeout(
    running_activator: ActivatorFactory,
) -> None:
    frozen = Frozen()
    async with serve(frozen) as up, running_activator((CHAT,)) as running:
        await running.bus.publish_endpoints(endpoints(KEY, up))
        async with httpx.AsyncClient(base_url=running.url, timeout=10) as c:
            r = await c.post("/default/chat/v1/completions", json={"prompt": "hi"})
        assert r.status_code == 504
        error = r.json()["error"]
        assert (error["type"], error["code"]) == ("server_error", "timeout")
        async with asyncio.timeout(5):
            await frozen.gone.wait()  # the replica was told: its generation can stop
        # The slot went back: the revision has nothing in flight.
        assert all(s.in_flight == 0 for s in running.activator.stats() if s.revision == KEY)


async def test_a_stream_past_the_timeout_ends_with_a_timeout_error_event(
    running_activator: ActivatorFactory,
) -> None:
    upstream = Upstream()  # ``.../stream`` sends one event, then waits for a gate never opened
    async with serve(upstream) as up, running_activator((CHAT,)) as running:
        await running.bus.publish_endpoints(endpoints(KEY, up))
        async with (
            httpx.AsyncClient(base_url=running.url, timeout=10) as c,
            c.stream("GET", "/default/chat/v1/responses/stream?n=3") as r,
        ):
            assert r.status_code == 200
            body = b"".join([chunk async for chunk in r.aiter_raw()])  # ends cleanly
        async with asyncio.timeout(5):
            await upstream.disconnected.wait()
    lines = body.decode().split("\n")
    events = [json.loads(line[len("data: ") :]) for line in lines if line.startswith("data: ")]
    assert events[0] == {"token": 0}
    assert events[-1]["error"]["code"] == "timeout"
    assert len(events) == 2


async def test_an_answer_inside_the_timeout_is_untouched(
    running_activator: ActivatorFactory,
) -> None:
    upstream = Upstream()
    upstream.gate.set()
    async with serve(upstream) as up, running_activator((CHAT,)) as running:
        await running.bus.publish_endpoints(endpoints(KEY, up))
        async with httpx.AsyncClient(base_url=running.url, timeout=10) as c:
            plain = await c.post("/default/chat/v1/completions", json={"prompt": "hi"})
            stream = await c.get("/default/chat/v1/responses/stream?n=3")
    assert plain.status_code == 200 and plain.json()["replica"] == "replica"
    assert stream.text.count("data:") == 4 and "error" not in stream.text
