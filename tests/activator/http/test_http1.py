"""The activator's HTTP/1.1 protocol, spoken to over real sockets byte by byte.

Each test serves a tiny ASGI app the way the activator is served (``serve(..., as_activator=True)``
uses ``activator.http.server.uvicorn_config``, hence ``activator.http.http1.Http1Protocol``) and
checks what goes over the wire: framing, keep-alive, pipelining, errors, disconnects and the
shutdown deadline.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import httptools
import httpx
import uvicorn
from starlette.types import Receive, Scope, Send

from activator.http.extensions import DISCONNECT_EXTENSION
from activator.http.server import uvicorn_config
from tests.activator.conftest import read_body, serve

WAIT_S = 5.0  # for any one answer; a hang fails the test instead of stalling it


class Parsed:
    """One response as httptools parsed it."""

    def __init__(self, status: int = 0) -> None:
        self.status = status
        self.headers: dict[bytes, bytes] = {}
        self.body = b""


class Conn:
    """A raw client connection: write bytes, read parsed responses in order (pipelining too)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.raw = b""  # every byte received, for framing checks
        self._parser = httptools.HttpResponseParser(self)
        self._current = Parsed()
        self._done: list[Parsed] = []

    # httptools callbacks
    def on_message_begin(self) -> None:
        self._current = Parsed()

    def on_header(self, name: bytes, value: bytes) -> None:
        self._current.headers[name.lower()] = value

    def on_headers_complete(self) -> None:
        self._current.status = self._parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        self._current.body += body

    def on_message_complete(self) -> None:
        self._done.append(self._current)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def response(self) -> Parsed:
        async with asyncio.timeout(WAIT_S):
            while not self._done:
                data = await self.reader.read(65536)
                if not data:
                    raise ConnectionError(f"closed before a whole response; got {self.raw!r}")
                self.raw += data
                self._parser.feed_data(data)
        return self._done.pop(0)

    async def head_response(self) -> Parsed:
        """A HEAD answer: its length describes a body that never comes, so read the head only."""
        async with asyncio.timeout(WAIT_S):
            head = await self.reader.readuntil(b"\r\n\r\n")
        self.raw += head
        status_line, *lines = head.decode().strip().split("\r\n")
        parsed = Parsed(int(status_line.split()[1]))
        for line in lines:
            name, _, value = line.partition(":")
            parsed.headers[name.strip().lower().encode()] = value.strip().encode()
        return parsed

    async def closed(self) -> bool:
        async with asyncio.timeout(WAIT_S):
            rest = await self.reader.read()
        return rest == b""

    def close(self) -> None:
        self.writer.close()


@asynccontextmanager
async def connect(url: str) -> AsyncIterator[Conn]:
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    conn = Conn(reader, writer)
    try:
        yield conn
    finally:
        conn.close()


def request(method: str = "GET", path: str = "/", body: bytes = b"", **headers: str) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: test"]
    lines += [f"{k.replace('_', '-')}: {v}" for k, v in headers.items()]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def echo(scope: Scope, receive: Receive, send: Send) -> None:
    """Answers with the method, path, query and body it got; ``/stream`` in three parts."""
    body = await read_body(receive)
    if scope["path"] == "/stream":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for part in (b"one,", b"two,", b"three"):
            await send({"type": "http.response.body", "body": part, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        return
    if scope["path"] == "/empty":
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})
        return
    answer = json.dumps(
        {
            "method": scope["method"],
            "path": scope["path"],
            "raw_path": scope["raw_path"].decode(),
            "query": scope["query_string"].decode(),
            "body": body.decode(),
        }
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": answer})


async def test_a_whole_body_gets_a_length_and_leaves_in_one_write() -> None:
    async with serve(echo, as_activator=True) as url, connect(url) as conn:
        await conn.send(request("POST", "/a%20b?x=1", b"hello"))
        r = await conn.response()
        assert r.status == 200
        assert r.headers[b"content-length"] == str(len(r.body)).encode()
        assert b"transfer-encoding" not in r.headers
        got = json.loads(r.body)
        assert got == {
            "method": "POST",
            "path": "/a b",
            "raw_path": "/a%20b",
            "query": "x=1",
            "body": "hello",
        }


async def test_keep_alive_and_pipelined_requests_are_answered_in_order() -> None:
    async with serve(echo, as_activator=True) as url, connect(url) as conn:
        await conn.send(request(path="/first"))
        assert json.loads((await conn.response()).body)["path"] == "/first"
        # Three requests in one write: three answers, in order, on the same connection.
        await conn.send(
            request("POST", "/p1", b"a") + request(path="/p2") + request("POST", "/p3", b"c")
        )
        paths = [json.loads((await conn.response()).body)["path"] for _ in range(3)]
        assert paths == ["/p1", "/p2", "/p3"]


async def test_a_streamed_body_is_chunked_and_arrives_whole() -> None:
    async with serve(echo, as_activator=True) as url:
        async with connect(url) as conn:
            await conn.send(request(path="/stream"))
            r = await conn.response()
            assert r.headers[b"transfer-encoding"] == b"chunked"
            assert r.body == b"one,two,three"
            assert conn.raw.endswith(b"0\r\n\r\n")
        async with httpx.AsyncClient() as client:
            assert (await client.get(f"{url}/stream")).text == "one,two,three"


async def test_head_and_204_carry_no_body() -> None:
    async with serve(echo, as_activator=True) as url, connect(url) as conn:
        await conn.send(request("HEAD", "/x"))
        head = await conn.head_response()
        assert head.status == 200
        assert int(head.headers[b"content-length"]) > 0  # what the GET's body would be
        # No body bytes followed: the next answer on the connection parses cleanly.
        await conn.send(request(path="/after"))
        assert json.loads((await conn.response()).body)["path"] == "/after"
        await conn.send(request(path="/empty"))
        empty = await conn.response()
        assert empty.status == 204
        assert b"content-length" not in empty.headers and empty.body == b""


async def test_http_1_0_without_keep_alive_is_closed_after_the_answer() -> None:
    async with serve(echo, as_activator=True) as url, connect(url) as conn:
        await conn.send(b"GET /old HTTP/1.0\r\n\r\n")
        r = await conn.response()
        assert json.loads(r.body)["path"] == "/old"
        assert r.headers[b"connection"] == b"close"
        assert await conn.closed()


async def test_expect_100_continue_is_answered_before_the_body() -> None:
    async with serve(echo, as_activator=True) as url, connect(url) as conn:
        head = b"POST /up HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n"
        await conn.send(head)
        async with asyncio.timeout(5):
            interim = await conn.reader.readuntil(b"\r\n\r\n")
        assert interim.startswith(b"HTTP/1.1 100 Continue")
        await conn.send(b"data")
        assert json.loads((await conn.response()).body)["body"] == "data"


async def test_a_large_body_passes_with_flow_control() -> None:
    body = bytes(range(256)) * 4096  # 1 MiB, far above the read buffer's high-water mark
    async with serve(echo, as_activator=True) as url, httpx.AsyncClient() as client:
        r = await client.post(f"{url}/big", content=body.hex().encode())
        assert r.status_code == 200
        assert bytes.fromhex(r.json()["body"]) == body


async def test_malformed_and_oversized_requests_get_typed_errors_and_a_close() -> None:
    async with serve(echo, as_activator=True) as url:
        async with connect(url) as conn:
            await conn.send(b"GET / HTTP/1.1\r\nHost: t\r\nBad Header\r\n\r\n")
            r = await conn.response()
            assert r.status == 400
            assert json.loads(r.body)["error"]["code"] == "bad_request"
            assert await conn.closed()
        async with connect(url) as conn:
            await conn.send(request(path="/", X_Big="a" * 70_000))
            r = await conn.response()
            assert r.status == 431
            assert json.loads(r.body)["error"]["code"] == "headers_too_large"
            assert await conn.closed()


async def test_an_app_that_fails_or_sends_nothing_gets_a_500() -> None:
    async def broken(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["path"] == "/raise":
            raise RuntimeError("boom")

    for path in ("/raise", "/silent"):
        async with serve(broken, as_activator=True) as url, connect(url) as conn:
            await conn.send(request(path=path))
            r = await conn.response()
            assert r.status == 500
            assert json.loads(r.body)["error"]["code"] == "internal_error"
            assert await conn.closed()


async def test_the_disconnect_callback_fires_when_the_client_leaves() -> None:
    fired = asyncio.Event()
    saw_disconnect = asyncio.Event()

    async def waits(scope: Scope, receive: Receive, send: Send) -> None:
        scope["extensions"][DISCONNECT_EXTENSION](fired.set)
        await receive()  # the (empty) body
        if (await receive())["type"] == "http.disconnect":
            saw_disconnect.set()

    async with serve(waits, as_activator=True) as url:
        async with connect(url) as conn:
            await conn.send(request(path="/hold"))
            await asyncio.sleep(0.05)
            assert not fired.is_set()
        async with asyncio.timeout(5):
            await fired.wait()
            await saw_disconnect.wait()


async def test_an_idle_keep_alive_connection_is_closed() -> None:
    async with (
        serve(echo, as_activator=True, timeout_keep_alive=0.2) as url,
        connect(url) as conn,
    ):
        await conn.send(request(path="/once"))
        await conn.response()
        assert await conn.closed()


@asynccontextmanager
async def served_until_shutdown(
    app: Callable[[Scope, Receive, Send], Any], deadline_s: float
) -> AsyncIterator[tuple[str, uvicorn.Server]]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn_config(app, "127.0.0.1", port, timeout_graceful_shutdown=deadline_s)
    )
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.005)
        yield f"http://127.0.0.1:{port}", server
    finally:
        server.should_exit = True
        await task
        sock.close()


async def test_requests_cut_by_the_shutdown_deadline_get_a_typed_answer() -> None:
    async def hangs(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        if scope["path"] == "/sse":
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")],
                }
            )
            await send({"type": "http.response.body", "body": b"data: 1\n\n", "more_body": True})
        await asyncio.Event().wait()  # never finishes on its own

    async with (
        served_until_shutdown(hangs, deadline_s=0.3) as (url, server),
        connect(url) as held,
        connect(url) as streaming,
    ):
        await held.send(request(path="/held"))
        await streaming.send(request(path="/sse"))
        async with asyncio.timeout(5):
            await streaming.reader.readuntil(b"data: 1\n\n")
        server.should_exit = True
        r = await held.response()
        assert r.status == 503
        assert json.loads(r.body)["error"] == {
            "message": "The activator is shutting down.",
            "type": "server_error",
            "param": None,
            "code": "shutting_down",
        }
        async with asyncio.timeout(5):
            rest = await streaming.reader.read()
        assert b'"code": "shutting_down"' in rest
        assert rest.endswith(b"0\r\n\r\n")


async def test_an_upgrade_request_is_answered_as_plain_http_then_closed() -> None:
    async with serve(echo, as_activator=True) as url, connect(url) as conn:
        await conn.send(request(path="/ws", Connection="Upgrade", Upgrade="websocket"))
        r = await conn.response()
        assert json.loads(r.body)["path"] == "/ws"
        assert r.headers[b"connection"] == b"close"
        assert await conn.closed()
