from __future__ import annotations

import asyncio
from typing import Any

import pytest

from activator.errors import ConnectFailed, UpstreamUnavailable
from activator.http.upstream import UpstreamPool
from activator.proxy import forward, upstream_headers
from tests.activator.conftest import Upstream, free_port, serve


def test_hop_by_hop_and_connection_named_headers_are_dropped() -> None:
    raw = [
        (b"host", b"chat.default.example.com"),
        (b"connection", b"keep-alive, X-Private"),
        (b"x-private", b"1"),
        (b"keep-alive", b"timeout=5"),
        (b"transfer-encoding", b"chunked"),
        (b"content-length", b"5"),
        (b"te", b"trailers"),
        (b"expect", b"100-continue"),
        (b"authorization", b"Bearer k"),
        (b"x-forwarded-for", b"10.0.0.1"),
    ]
    headers = upstream_headers(raw, ("10.0.0.2", 5000), "https")
    assert headers == [
        (b"authorization", b"Bearer k"),
        (b"x-forwarded-for", b"10.0.0.1, 10.0.0.2"),
        (b"x-forwarded-host", b"chat.default.example.com"),
        (b"x-forwarded-proto", b"https"),
    ]


class Recorder:
    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []

    async def __call__(self, message: Any) -> None:
        self.messages.append(message)


async def test_forward_streams_the_response_through() -> None:
    upstream = Upstream()
    upstream.gate.set()
    send = Recorder()
    async with serve(upstream) as url:
        pool = UpstreamPool()
        try:
            status = await forward(pool, url, "GET", "/stream?n=2", [], b"", send)
        finally:
            await pool.aclose()
    assert status == 200
    start, *bodies = send.messages
    assert start["type"] == "http.response.start"
    assert (b"content-type", b"text/event-stream") in start["headers"]
    assert not any(name == b"transfer-encoding" for name, _ in start["headers"])
    assert b"".join(m["body"] for m in bodies).endswith(b"data: [DONE]\n\n")
    assert bodies[-1]["more_body"] is False


async def test_refused_connection_is_a_connect_failure() -> None:
    pool = UpstreamPool()
    try:
        with pytest.raises(ConnectFailed):
            await forward(pool, f"http://127.0.0.1:{free_port()}", "GET", "/", [], b"", Recorder())
    finally:
        await pool.aclose()


async def test_reset_before_an_answer_is_unavailable_not_a_connect_failure() -> None:
    async def slam(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(slam, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    pool = UpstreamPool()
    try:
        with pytest.raises(UpstreamUnavailable) as caught:
            await forward(pool, f"http://127.0.0.1:{port}", "POST", "/", [], b"x", Recorder())
        assert not isinstance(caught.value, ConnectFailed)
    finally:
        await pool.aclose()
        server.close()
        await server.wait_closed()


async def test_an_engine_dead_answer_raises_before_anything_is_sent() -> None:
    """vLLM's answer once its engine core is gone: nothing of it may reach the client."""
    from activator.errors import EngineDead

    async def dead(scope: Any, receive: Any, send: Any) -> None:
        body = b'{"error": {"message": "EngineCore encountered an issue. See stack trace"}}'
        await send({"type": "http.response.start", "status": 500, "headers": []})
        await send({"type": "http.response.body", "body": body})

    send = Recorder()
    async with serve(dead) as url:
        pool = UpstreamPool()
        try:
            with pytest.raises(EngineDead):
                await forward(pool, url, "POST", "/v1/completions", [], b"{}", send)
        finally:
            await pool.aclose()
    assert send.messages == []
