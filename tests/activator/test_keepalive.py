"""Feedback while held (activator.keepalive) over real HTTP: SSE comments, then the answer."""

from __future__ import annotations

import asyncio
import json

import httpx
import openai
from starlette.types import Receive, Scope, Send

from activator.keepalive import COMMENT
from tests.activator.conftest import (
    ActivatorFactory,
    Upstream,
    endpoints,
    eventually,
    read_body,
    revision,
    serve,
    service,
)
from torpor.bus import AdapterFailure, Endpoint, RevisionEndpoints
from torpor.spec import AdapterSpec, LoraSpec

KEY = "default/chat-00001"
CHAT = service()
STREAM = {"model": "chat", "prompt": "hi", "stream": True}
SQL_STREAM = {"model": "sql", "prompt": "hi", "stream": True}


def queued(running: object) -> int:
    stats = running.activator.stats()  # type: ignore[attr-defined]
    return next((s.queued for s in stats if s.revision == KEY), 0)


async def _collect(response: httpx.Response, into: list[bytes]) -> None:
    async for chunk in response.aiter_raw():
        into.append(chunk)


async def test_a_held_stream_gets_comments_then_the_replica_s_events(
    running_activator: ActivatorFactory,
) -> None:
    upstream = Upstream()
    upstream.gate.set()
    async with (
        serve(upstream) as up,
        running_activator((CHAT,), keepalive_s=0.05) as running,
        httpx.AsyncClient(base_url=running.url, timeout=10) as c,
        c.stream("POST", "/default/chat/v1/responses/stream?n=2", json=STREAM) as r,
    ):
        # The head came with the first comment, while the revision is still at zero.
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        chunks: list[bytes] = []
        reader = asyncio.create_task(_collect(r, chunks))
        await eventually(lambda: b"".join(chunks).count(COMMENT) >= 3)
        assert upstream.seen == []
        await running.bus.publish_endpoints(endpoints(KEY, up))
        await reader
    body = b"".join(chunks)
    events = body.split(b"\n\n")
    assert events[0] + b"\n\n" == COMMENT
    assert body.index(b'data: {"token": 0}') > body.rindex(COMMENT)
    assert body.endswith(b"data: [DONE]\n\n")
    assert json.loads(upstream.seen[0].body) == STREAM  # forwarded unchanged


async def test_a_plain_request_waits_in_silence_and_gets_the_replica_s_answer(
    running_activator: ActivatorFactory,
) -> None:
    upstream = Upstream()
    async with (
        serve(upstream) as up,
        running_activator((CHAT,), keepalive_s=0.02) as running,
        httpx.AsyncClient(base_url=running.url, timeout=10) as c,
    ):
        held = asyncio.create_task(c.post("/default/chat/v1/responses/x", json={"model": "chat"}))
        await eventually(lambda: queued(running) == 1)
        await asyncio.sleep(0.1)  # five intervals: a stream would have had comments by now
        assert not held.done()
        await running.bus.publish_endpoints(endpoints(KEY, up))
        r = await held
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    assert r.json()["replica"] == "replica"


async def test_a_timeout_after_the_first_comment_is_an_error_event(
    running_activator: ActivatorFactory,
) -> None:
    spec = service(revisions=(revision("chat-00001", timeout_s=0.3),))
    async with (
        running_activator((spec,), keepalive_s=0.05) as running,
        httpx.AsyncClient(base_url=running.url, timeout=10) as c,
    ):
        r = await c.post("/default/chat/v1/completions", json=STREAM)
    assert r.status_code == 200  # committed with the first comment
    assert r.text.startswith(COMMENT.decode())
    last = r.text.rstrip("\n").rsplit("\n\n", 1)[-1]
    assert last.startswith("data: ")
    error = json.loads(last.removeprefix("data: "))["error"]
    assert (error["code"], error["type"]) == ("timeout", "server_error")


async def _refusing(scope: Scope, receive: Receive, send: Send) -> None:
    await read_body(receive)
    body = json.dumps(
        {"error": {"message": "max_tokens too large", "type": "BadRequestError", "code": 400}}
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 400,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def test_a_replica_s_error_status_after_the_first_comment_becomes_its_error_event(
    running_activator: ActivatorFactory,
) -> None:
    async with (
        serve(_refusing) as up,
        running_activator((CHAT,), keepalive_s=0.05) as running,
        httpx.AsyncClient(base_url=running.url, timeout=10) as c,
        c.stream("POST", "/default/chat/v1/completions", json=STREAM) as r,
    ):
        chunks: list[bytes] = []
        reader = asyncio.create_task(_collect(r, chunks))
        await eventually(lambda: COMMENT in b"".join(chunks))
        await running.bus.publish_endpoints(endpoints(KEY, up))
        await reader
    assert r.status_code == 200
    last = b"".join(chunks).rstrip(b"\n").rsplit(b"\n\n", 1)[-1]
    error = json.loads(last.removeprefix(b"data: "))["error"]
    assert error["message"] == "max_tokens too large"


async def _chat(scope: Scope, receive: Receive, send: Send) -> None:
    await read_body(receive)
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/event-stream")],
        }
    )
    for token in ("Hel", "lo"):
        chunk = {
            "id": "c1",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": "chat",
            "choices": [{"index": 0, "delta": {"content": token}, "finish_reason": None}],
        }
        event = b"data: " + json.dumps(chunk).encode() + b"\n\n"
        await send({"type": "http.response.body", "body": event, "more_body": True})
    await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})


async def test_the_official_client_reads_tokens_through_the_comments(
    running_activator: ActivatorFactory,
) -> None:
    async with (
        serve(_chat) as up,
        running_activator((CHAT,), keepalive_s=0.05) as running,
    ):
        client = openai.AsyncOpenAI(
            base_url=f"{running.url}/default/chat/v1", api_key="unused", max_retries=0
        )
        stream = await client.chat.completions.create(
            model="chat", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        # The client has its 200 (from the first comment) while the revision is at zero.
        assert queued(running) == 1
        await asyncio.sleep(0.15)
        await running.bus.publish_endpoints(endpoints(KEY, up))
        tokens = [c.choices[0].delta.content async for c in stream]
        await client.close()
    assert tokens == ["Hel", "lo"]


LORA_CHAT = service(
    revisions=(
        revision("chat-00001", lora=LoraSpec((AdapterSpec("sql", "/models/sql"),))),
    )
)


async def test_a_stream_held_only_for_its_adapter_gets_comments_then_the_answer(
    running_activator: ActivatorFactory,
) -> None:
    # The base has a replica with room; the adapter is on none yet: the request waits for it.
    upstream = Upstream()
    upstream.gate.set()
    async with (
        serve(upstream) as up,
        running_activator((LORA_CHAT,), keepalive_s=0.05) as running,
        httpx.AsyncClient(base_url=running.url, timeout=10) as c,
    ):
        await running.bus.publish_endpoints(endpoints(KEY, up))
        base = await c.post("/default/chat/v1/responses/x", json={"model": "chat"})
        assert base.status_code == 200  # the base is served at once
        async with c.stream("POST", "/default/chat/v1/responses/stream?n=2", json=SQL_STREAM) as r:
            assert r.status_code == 200
            chunks: list[bytes] = []
            reader = asyncio.create_task(_collect(r, chunks))
            await eventually(lambda: b"".join(chunks).count(COMMENT) >= 2)
            assert len(upstream.seen) == 1  # the base request only
            loaded = RevisionEndpoints(KEY, (Endpoint("r0", up, adapters=("sql",)),))
            await running.bus.publish_endpoints(loaded)
            await reader
    body = b"".join(chunks)
    assert body.startswith(COMMENT) and body.endswith(b"data: [DONE]\n\n")


async def test_a_failed_adapter_load_ends_held_requests_at_once_with_adapter_failed(
    running_activator: ActivatorFactory,
) -> None:
    upstream = Upstream()
    async with (
        serve(upstream) as up,
        running_activator((LORA_CHAT,), keepalive_s=0.05) as running,
        httpx.AsyncClient(base_url=running.url, timeout=10) as c,
        c.stream("POST", "/default/chat/v1/responses/stream", json=SQL_STREAM) as r,
    ):
        plain = asyncio.create_task(
            c.post("/default/chat/v1/completions", json={"model": "sql", "prompt": "hi"})
        )
        await running.bus.publish_endpoints(endpoints(KEY, up))
        chunks: list[bytes] = []
        reader = asyncio.create_task(_collect(r, chunks))
        await eventually(lambda: b"".join(chunks).count(COMMENT) >= 1 and queued(running) == 2)
        failed = RevisionEndpoints(
            KEY,
            (Endpoint("r0", up),),
            adapter_failures=(AdapterFailure("sql", "400 No adapter at /models/sql\ntrace"),),
        )
        await running.bus.publish_endpoints(failed)
        answer = await asyncio.wait_for(plain, 2)
        await asyncio.wait_for(reader, 2)
    assert answer.status_code == 503
    error = answer.json()["error"]
    assert error["code"] == "adapter_failed"
    assert error["message"].endswith("failed to load: 400 No adapter at /models/sql")
    event = b"".join(chunks).split(b"\n\n")[-2]
    assert json.loads(event.removeprefix(b"data: "))["error"]["code"] == "adapter_failed"
    assert upstream.seen == []
