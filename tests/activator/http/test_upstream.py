"""The replica client: keep-alive reuse, framing, flow control and failures, over real sockets."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from starlette.types import Receive, Scope, Send

from activator.errors import ConnectError, UpstreamClosed
from activator.http.upstream import Response, UpstreamPool
from tests.activator.conftest import free_port, read_body, serve

BIG = bytes(range(256)) * 4096  # 1 MiB, more than the pause threshold


class App:
    """Answers by path; records the client port of each request to count connections."""

    def __init__(self) -> None:
        self.ports: list[int] = []
        self.bodies: list[bytes] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.ports.append(scope["client"][1])
        body = await read_body(receive)
        self.bodies.append(body)
        path = scope["path"]
        headers = [(b"x-path", path.encode())]
        if path == "/close":
            headers.append((b"connection", b"close"))
        if path in ("/chunked", "/big"):
            payload = BIG if path == "/big" else b"abc"
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            for i in range(0, len(payload), 65536):
                part = payload[i : i + 65536]
                await send({"type": "http.response.body", "body": part, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
            return
        answer = b"hello " + body
        headers.append((b"content-length", str(len(answer)).encode()))
        await send({"type": "http.response.start", "status": 201, "headers": headers})
        await send({"type": "http.response.body", "body": answer})


@asynccontextmanager
async def pool_and_app() -> AsyncIterator[tuple[UpstreamPool, App, str]]:
    app = App()
    pool = UpstreamPool()
    try:
        async with serve(app) as url:
            yield pool, app, url
    finally:
        await pool.aclose()


async def read_all(response: Response) -> bytes:
    out = b""
    while (chunk := await response.next_chunk()) is not None:
        out += chunk
    return out


async def test_sequential_requests_reuse_one_connection() -> None:
    async with pool_and_app() as (pool, app, url):
        for i in range(3):
            r = await pool.request(url, "POST", "/echo", [], f"{i}".encode())
            assert (r.status, await read_all(r)) == (201, f"hello {i}".encode())
            assert (b"x-path", b"/echo") in r.headers
    assert app.bodies == [b"0", b"1", b"2"]
    assert len(set(app.ports)) == 1


async def test_chunked_and_large_bodies_arrive_whole() -> None:
    async with pool_and_app() as (pool, _, url):
        r = await pool.request(url, "GET", "/chunked", [], b"")
        assert await read_all(r) == b"abc"
        r = await pool.request(url, "GET", "/big", [], b"")
        await asyncio.sleep(0.05)  # let the replica fill the buffer so reading pauses
        assert await read_all(r) == BIG
        r = await pool.request(url, "GET", "/after-big", [], b"")
        assert r.status == 201


async def test_connection_close_from_the_replica_is_not_reused() -> None:
    async with pool_and_app() as (pool, app, url):
        for _ in range(2):
            r = await pool.request(url, "GET", "/close", [], b"")
            await read_all(r)
    assert len(set(app.ports)) == 2


async def test_head_answers_and_the_next_request_still_works() -> None:
    async with pool_and_app() as (pool, _, url):
        r = await pool.request(url, "HEAD", "/x", [], b"")
        assert r.status == 201
        assert await read_all(r) == b""
        r = await pool.request(url, "GET", "/y", [], b"")
        assert await read_all(r) == b"hello "


async def test_idle_connections_past_the_timeout_are_not_reused() -> None:
    async with pool_and_app() as (pool, app, url):
        await read_all(await pool.request(url, "GET", "/a", [], b""))
        for idle in pool._idle.values():
            for conn in idle:
                conn.last_used -= 60
        await read_all(await pool.request(url, "GET", "/b", [], b""))
    assert len(set(app.ports)) == 2


async def test_refused_connection_is_a_connect_error() -> None:
    pool = UpstreamPool()
    with pytest.raises(ConnectError):
        await pool.request(f"http://127.0.0.1:{free_port()}", "GET", "/", [], b"")


async def test_replica_dying_mid_body_fails_the_read() -> None:
    async def half(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npartial")
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(half, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    pool = UpstreamPool()
    try:
        r = await pool.request(f"http://127.0.0.1:{port}", "GET", "/", [], b"")
        assert r.status == 200
        with pytest.raises(UpstreamClosed):
            await read_all(r)
    finally:
        await pool.aclose()
        server.close()
        await server.wait_closed()


def test_only_plain_http_replica_urls() -> None:
    with pytest.raises(ValueError, match="http://"):
        UpstreamPool()._origin("https://replica:8443")
