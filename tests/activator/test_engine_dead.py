"""A replica whose engine died (issue 13 item 9), credentials in query strings and the reason a
caller is given for a failed start (item 8), through a served activator with fake replicas.

vLLM with a dead engine core still answers over HTTP: a completion gets a 500 whose body is
``EngineDeadError``'s message, a stream gets a 200 whose first event is that error. The fakes
below answer exactly that way (the bodies are vLLM's, from
``vllm/entrypoints/serve/exception_handling``).
"""

from __future__ import annotations

import asyncio
import json

import httpx
from starlette.types import Receive, Scope, Send

from activator.balancer import Backend
from activator.proxy import MAX_ATTEMPTS
from tests.activator.conftest import (
    ActivatorFactory,
    Upstream,
    endpoints,
    eventually,
    read_body,
    serve,
    service,
)

KEY = "default/chat-00001"
HOST = {"Host": "chat.default.example.com"}
_DEAD = {
    "error": {
        "message": "EngineCore encountered an issue. See stack trace (above) for the root cause.",
        "type": "InternalServerError",
        "param": None,
        "code": 500,
    }
}


class DeadEngine:
    """A replica whose API server answers but whose engine core is gone."""

    def __init__(self) -> None:
        self.seen = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = await read_body(receive)
        self.seen += 1
        stream = b'"stream": true' in body
        if stream:
            start = {"status": 200, "headers": [(b"content-type", b"text/event-stream")]}
            payload = b"data: " + json.dumps(_DEAD).encode() + b"\n\ndata: [DONE]\n\n"
        else:
            start = {"status": 500, "headers": [(b"content-type", b"application/json")]}
            payload = json.dumps(_DEAD).encode()
        await send({"type": "http.response.start", **start})
        await send({"type": "http.response.body", "body": payload})


class Broken500:
    """A replica with a plain 500 that says nothing about its engine: passed through."""

    def __init__(self) -> None:
        self.seen = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await read_body(receive)
        self.seen += 1
        await send({"type": "http.response.start", "status": 500, "headers": []})
        await send({"type": "http.response.body", "body": b'{"error": "bad input"}'})


def _backends(running: object) -> tuple[Backend, ...]:
    return running.activator._queues[KEY].backends  # type: ignore[attr-defined, no-any-return]


async def test_a_dead_engine_is_taken_out_and_its_requests_answered_elsewhere(
    running_activator: ActivatorFactory,
) -> None:
    dead, good = DeadEngine(), Upstream("good")
    good.gate.set()
    async with (
        serve(dead) as dead_url,
        serve(good) as good_url,
        running_activator((service(),)) as running,
    ):
        await running.bus.publish_endpoints(endpoints(KEY, dead_url, good_url))
        async with httpx.AsyncClient(base_url=running.url, headers=HOST) as c:
            answers = [await c.post("/v1/completions", json={"n": i}) for i in range(12)]
            stream = await c.post("/v1/responses/stream?n=2", json={"stream": True})
    assert [a.status_code for a in answers] == [200] * 12
    assert {a.json()["replica"] for a in answers} == {"good"}
    # The first request that met the dead engine took the replica out: no other went there.
    assert dead.seen == 1
    assert [b.out for b in _backends(running)] == [True, False]
    assert stream.status_code == 200 and stream.text.endswith("data: [DONE]\n\n")
    assert "EngineCore" not in stream.text


async def test_a_stream_whose_first_event_is_the_dead_engine_is_retried(
    running_activator: ActivatorFactory,
) -> None:
    dead, good = DeadEngine(), Upstream("good")
    async with (
        serve(dead) as dead_url,
        serve(good) as good_url,
        running_activator((service(),), seed=1) as running,
    ):
        # The dead replica alone first, so the stream surely meets it.
        await running.bus.publish_endpoints(endpoints(KEY, dead_url))
        async with httpx.AsyncClient(base_url=running.url, headers=HOST) as c:
            pending = asyncio.create_task(c.post("/v1/responses/stream?n=2", json={"stream": True}))
            await eventually(lambda: dead.seen == 1)
            # Held for the next replica, which comes.
            await eventually(lambda: running.activator._queues[KEY].queued == 1)
            good.gate.set()
            await running.bus.publish_endpoints(endpoints(KEY, dead_url, good_url))
            stream = await pending
    assert stream.status_code == 200
    assert "EngineCore" not in stream.text
    assert stream.text.startswith('data: {"token": 0}') and stream.text.endswith("[DONE]\n\n")
    assert dead.seen == 1


async def test_with_only_a_dead_engine_the_request_is_held_until_timeout(
    running_activator: ActivatorFactory,
) -> None:
    from dataclasses import replace

    from tests.activator.conftest import revision

    spec = service(revisions=(replace(revision("chat-00001"), timeout_s=1.0),))
    dead = DeadEngine()
    async with serve(dead) as dead_url, running_activator((spec,)) as running:
        await running.bus.publish_endpoints(endpoints(KEY, dead_url))
        async with httpx.AsyncClient(base_url=running.url, headers=HOST) as c:
            answer = await c.post("/v1/completions", json={})
    # Never vLLM's raw 500: a typed timeout, since no replacement came in time.
    assert answer.status_code == 504
    assert answer.json()["error"]["code"] == "timeout"
    assert dead.seen == 1


async def test_a_plain_500_is_the_replicas_answer_and_not_retried(
    running_activator: ActivatorFactory,
) -> None:
    broken, good = Broken500(), Upstream("good")
    async with (
        serve(broken) as broken_url,
        serve(good) as good_url,
        running_activator((service(),)) as running,
    ):
        await running.bus.publish_endpoints(endpoints(KEY, broken_url, good_url))
        async with httpx.AsyncClient(base_url=running.url, headers=HOST) as c:
            answers = [await c.post("/v1/completions", json={}) for _ in range(8)]
    statuses = [a.status_code for a in answers]
    assert broken.seen == statuses.count(500) > 0
    assert len(good.seen) == statuses.count(200) > 0
    assert not any(b.out for b in _backends(running))


async def test_a_connection_closed_before_the_answer_is_retried_on_the_same_replica(
    running_activator: ActivatorFactory,
) -> None:
    """A single healthy replica that closed a connection (as after a pooled connection's idle
    limit) answers the retry: it is not shunned, or the request would wait for another."""
    answered = 0

    async def flaky(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal answered
        await reader.readuntil(b"\r\n\r\n")
        if answered == 0:
            answered = -1  # the first connection is slammed shut
        else:
            answered += 1
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(flaky, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with running_activator((service(),)) as running:
            await running.bus.publish_endpoints(endpoints(KEY, f"http://127.0.0.1:{port}"))
            async with httpx.AsyncClient(base_url=running.url, headers=HOST, timeout=5) as c:
                answer = await c.get("/v1/responses/x")
    finally:
        server.close()
        await server.wait_closed()
    assert answer.status_code == 200 and answer.text == "ok"
    assert answered == 0  # slammed once (-1), then answered once


async def test_attempts_are_bounded(running_activator: ActivatorFactory) -> None:
    """A replica that closes every connection before answering gets MAX_ATTEMPTS tries, then
    the caller a typed 502 (never a hang, never a raw error)."""
    tries = 0

    async def slam(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal tries
        await reader.readuntil(b"\r\n\r\n")
        tries += 1
        writer.close()

    server = await asyncio.start_server(slam, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with running_activator((service(),)) as running:
            await running.bus.publish_endpoints(endpoints(KEY, f"http://127.0.0.1:{port}"))
            async with httpx.AsyncClient(base_url=running.url, headers=HOST, timeout=5) as c:
                answer = await c.get("/v1/responses/x")
    finally:
        server.close()
        await server.wait_closed()
    assert answer.status_code == 502
    assert answer.json()["error"]["code"] == "upstream_unavailable"
    assert tries == MAX_ATTEMPTS


async def test_credentials_in_the_query_string_never_reach_the_replica(
    running_activator: ActivatorFactory,
) -> None:
    upstream = Upstream()
    async with serve(upstream) as url, running_activator((service(),)) as running:
        await running.bus.publish_endpoints(endpoints(KEY, url))
        async with httpx.AsyncClient(base_url=running.url, headers=HOST) as c:
            query = "api_key=sk-1&model=m&Key=k2&access%5Ftoken=t3&x=1&TOKEN&authorization=B"
            answer = await c.get(f"/v1/responses/x?{query}")
    assert answer.status_code == 200
    assert upstream.seen[0].query == "model=m&x=1"


async def test_a_failed_start_tells_the_caller_a_short_reason_and_not_the_log_tail(
    running_activator: ActivatorFactory,
) -> None:
    from torpor.bus.base import RevisionEndpoints

    tail = 'Traceback (most recent call last):\n  File "/opt/secret/app.py"\nHF_TOKEN=hf_abc'
    async with running_activator((service(),)) as running:
        await running.bus.publish_endpoints(
            RevisionEndpoints(KEY, failure=f"exited with code 2\n{tail}")
        )
        async with httpx.AsyncClient(base_url=running.url, headers=HOST) as c:
            answer = await c.post("/v1/completions", json={})
    assert answer.status_code == 503
    error = answer.json()["error"]
    assert error["code"] == "revision_failed"
    assert error["message"] == f"revision {KEY} failed to start: exited with code 2"
    assert "secret" not in answer.text and "hf_abc" not in answer.text
