"""A replica that dies mid-answer: a token stream ends with an error event, never silently."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest

from tests.activator.conftest import ActivatorFactory, endpoints, service

KEY = "default/chat-00001"


@asynccontextmanager
async def dying_replica(content_type: bytes, first: bytes) -> AsyncIterator[str]:
    """Answers 200 with a chunked body, sends ``first``, then drops the connection."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: " + content_type + b"\r\n"
            b"transfer-encoding: chunked\r\n\r\n" + b"%x\r\n" % len(first) + first + b"\r\n"
        )
        await writer.drain()
        writer.transport.abort()  # as a SIGKILLed process's socket: no end of body

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize("first", [b'data: {"token": 0}\n\n', b'data: {"tok'])
async def test_a_cut_event_stream_ends_with_an_error_event(
    running_activator: ActivatorFactory, first: bytes
) -> None:
    async with (
        dying_replica(b"text/event-stream", first) as up,
        running_activator((service(),)) as running,
        httpx.AsyncClient(base_url=running.url, timeout=10) as c,
    ):
        await running.bus.publish_endpoints(endpoints(KEY, up))
        r = await c.post("/default/chat/v1/chat/completions", json={"stream": True})
    assert r.status_code == 200
    events = [line[6:] for line in r.text.split("\n") if line.startswith("data: ")]
    error = json.loads(events[-1])["error"]
    assert error["code"] == "upstream_closed"
    assert "failed in the middle of the response" in error["message"]
    if first.endswith(b"\n\n"):
        assert json.loads(events[0]) == {"token": 0}


async def test_a_cut_plain_answer_breaks_the_connection(
    running_activator: ActivatorFactory,
) -> None:
    # Not an event stream: there is no in-band way to say so, but it must not look complete.
    async with (
        dying_replica(b"application/json", b'{"choices": [') as up,
        running_activator((service(),)) as running,
        httpx.AsyncClient(base_url=running.url, timeout=10) as c,
    ):
        await running.bus.publish_endpoints(endpoints(KEY, up))
        with pytest.raises(httpx.RemoteProtocolError):
            await c.post("/default/chat/v1/completions", json={})
