"""Hostile HTTP against the activator's protocol, byte by byte on raw sockets (issue 13).

Slow or stalled clients are cut with a typed 408, connections are capped with room kept for real
requests, HTTP/1.0 clients never get chunked coding, trailers never become headers, a bad
request in a pipeline is answered in its turn, and Host follows RFC 9112.
"""

from __future__ import annotations

import asyncio
import json
from contextlib import AsyncExitStack

import pytest
from starlette.types import Receive, Scope, Send

from activator.http.http1 import HttpLimits, default_max_connections
from tests.activator.conftest import read_body, serve
from tests.activator.http.test_http1 import Conn, connect, echo, request

FAST = HttpLimits(head_timeout_s=0.3, body_idle_timeout_s=0.3, max_connections=100)


def error_code(body: bytes) -> str:
    code: str = json.loads(body)["error"]["code"]
    return code


async def headers_app(scope: Scope, receive: Receive, send: Send) -> None:
    """Answers with the request's headers as the app saw them (after the whole body)."""
    body = await read_body(receive)
    seen = [[n.decode(), v.decode()] for n, v in scope["headers"]]
    answer = json.dumps({"headers": seen, "body": body.decode()}).encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": answer})


# -- item 2: slow heads, stalled bodies, too many connections ------------------------------------


async def test_a_head_sent_a_byte_at_a_time_is_cut_with_a_408() -> None:
    async with serve(echo, as_activator=True, limits=FAST) as url, connect(url) as conn:
        trickle = asyncio.create_task(_trickle(conn, b"GET / HTTP/1.1\r\nHost: t\r\nX-Slow: " * 20))
        try:
            r = await conn.response()
        finally:
            trickle.cancel()
        assert r.status == 408
        assert error_code(r.body) == "request_timeout"
        assert r.headers[b"connection"] == b"close"
        assert await conn.closed()


async def _trickle(conn: Conn, data: bytes) -> None:
    # Each byte well inside the keep-alive timeout, so only a deadline on the head can end it.
    for i in range(len(data)):
        try:
            await conn.send(data[i : i + 1])
        except ConnectionError:
            return
        await asyncio.sleep(0.05)


async def test_a_stalled_body_is_cut_with_a_408() -> None:
    async with serve(echo, as_activator=True, limits=FAST) as url, connect(url) as conn:
        await conn.send(b"POST /up HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nabc")
        r = await conn.response()
        assert r.status == 408
        assert error_code(r.body) == "request_timeout"
        assert await conn.closed()


async def test_a_stalled_chunked_body_is_cut_too() -> None:
    async with serve(echo, as_activator=True, limits=FAST) as url, connect(url) as conn:
        await conn.send(
            b"POST /up HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nab"
        )
        r = await conn.response()
        assert r.status == 408
        assert await conn.closed()


async def test_a_slow_but_steady_request_within_the_deadlines_is_served() -> None:
    limits = HttpLimits(head_timeout_s=5.0, body_idle_timeout_s=0.5, max_connections=100)
    async with serve(echo, as_activator=True, limits=limits) as url, connect(url) as conn:
        await conn.send(b"POST /up HTTP/1.1\r\nHost: t\r\nContent-Length: 6\r\n\r\n")
        for part in (b"ab", b"cd", b"ef"):
            await asyncio.sleep(0.2)  # each gap inside the body deadline, all of them past it
            await conn.send(part)
        r = await conn.response()
        assert r.status == 200
        assert json.loads(r.body)["body"] == "abcdef"


async def test_idle_connections_give_way_so_a_real_request_finds_room() -> None:
    limits = HttpLimits(max_connections=4, reserve=1)
    async with serve(echo, as_activator=True, limits=limits) as url, AsyncExitStack() as stack:
        # Connections that send a partial head and nothing more, in every slot but the reserve.
        idle = []
        for _ in range(limits.max_connections - limits.reserve):
            conn = await stack.enter_async_context(connect(url))
            await conn.send(b"GET / HT")
            idle.append(conn)
        await asyncio.sleep(0.1)
        for i in range(3):
            async with connect(url) as conn:
                await conn.send(request(path=f"/real{i}"))
                r = await conn.response()
                assert r.status == 200, r.body
                assert json.loads(r.body)["path"] == f"/real{i}"
        # The oldest idle ones were told why they were closed.
        shed = idle[0]
        r = await shed.response()
        assert r.status == 503
        assert error_code(r.body) == "too_many_connections"


async def test_past_the_cap_with_every_connection_busy_a_new_one_gets_a_503() -> None:
    release = asyncio.Event()

    async def slow(scope: Scope, receive: Receive, send: Send) -> None:
        await release.wait()
        await echo(scope, receive, send)

    limits = HttpLimits(max_connections=2, reserve=1)
    async with serve(slow, as_activator=True, limits=limits) as url, AsyncExitStack() as stack:
        busy = []
        for _ in range(limits.max_connections):
            conn = await stack.enter_async_context(connect(url))
            await conn.send(request(path="/busy"))
            await asyncio.sleep(0.05)  # served before the next one arrives: not quiet
            busy.append(conn)
        async with connect(url) as extra:
            r = await extra.response()
            assert r.status == 503
            assert error_code(r.body) == "too_many_connections"
            assert r.headers[b"retry-after"] == b"1"
            assert await extra.closed()
        release.set()
        for conn in busy:
            assert (await conn.response()).status == 200


def test_the_default_cap_keeps_descriptors_for_the_replica_side() -> None:
    assert default_max_connections(1024) == (1024 - 64) // 2
    assert default_max_connections(10) == 16
    assert HttpLimits(max_connections=100).reserve == 10
    with pytest.raises(ValueError):
        HttpLimits(max_connections=4, reserve=4)
    with pytest.raises(ValueError):
        HttpLimits(head_timeout_s=0)


# -- item 4: HTTP/1.0 ----------------------------------------------------------------------------


@pytest.mark.parametrize("keep_alive", [b"", b"Connection: keep-alive\r\n"])
async def test_http_1_0_gets_a_stream_delimited_by_the_close(keep_alive: bytes) -> None:
    async with serve(echo, as_activator=True) as url, connect(url) as conn:
        await conn.send(b"GET /stream HTTP/1.0\r\n" + keep_alive + b"\r\n")
        async with asyncio.timeout(5):
            data = await conn.reader.read()  # to the close
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.lower().split(b"\r\n")
        assert lines[0].startswith(b"http/1.1 200")
        assert b"connection: close" in lines
        assert not any(line.startswith(b"transfer-encoding") for line in lines)
        assert body == b"one,two,three"


# -- item 5: trailers ----------------------------------------------------------------------------


async def test_chunked_trailers_never_join_the_headers() -> None:
    async with serve(headers_app, as_activator=True) as url, connect(url) as conn:
        await conn.send(
            b"POST /t HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n"
            b"Trailer: Authorization\r\n\r\n3\r\nabc\r\n0\r\n"
            b"Authorization: Bearer stolen\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n"
        )
        r = await conn.response()
        assert r.status == 200
        got = json.loads(r.body)
        assert got["body"] == "abc"
        names = [name for name, _ in got["headers"]]
        assert "authorization" not in names and "x-forwarded-for" not in names
        # The connection stays usable: the next request's headers are its own.
        await conn.send(request(path="/next"))
        assert [n for n, _ in json.loads((await conn.response()).body)["headers"]] == ["host"]


# -- item 6: a bad request in a pipeline ----------------------------------------------------------


async def test_a_malformed_pipelined_request_is_answered_after_the_ones_before_it() -> None:
    async with serve(echo, as_activator=True) as url, connect(url) as conn:
        await conn.send(
            request("POST", "/first", b"a")
            + request(path="/second")
            + b"GET / HTTP/1.1\r\nHost: t\r\nBad Header\r\n\r\n"
        )
        first, second, bad = [await conn.response() for _ in range(3)]
        assert (first.status, json.loads(first.body)["path"]) == (200, "/first")
        assert (second.status, json.loads(second.body)["path"]) == (200, "/second")
        assert bad.status == 400
        assert error_code(bad.body) == "bad_request"
        assert await conn.closed()


async def test_a_late_pipelined_head_times_out_after_the_answer_before_it() -> None:
    release = asyncio.Event()

    async def slow(scope: Scope, receive: Receive, send: Send) -> None:
        await release.wait()
        await echo(scope, receive, send)

    async with serve(slow, as_activator=True, limits=FAST) as url, connect(url) as conn:
        await conn.send(request(path="/first") + b"GET /late HTTP/1.1\r\nHo")
        await asyncio.sleep(0.5)  # past the head deadline while the first is still being served
        release.set()
        first = await conn.response()
        assert (first.status, json.loads(first.body)["path"]) == (200, "/first")
        late = await conn.response()
        assert late.status == 408
        assert await conn.closed()


# -- item 7: Host --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "head",
    [
        b"GET / HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        b"GET / HTTP/1.0\r\nHost: a\r\nHost: a\r\n\r\n",
        b"GET http://user@a/ HTTP/1.1\r\nHost: a\r\n\r\n",
    ],
)
async def test_missing_duplicate_or_userinfo_host_is_a_400(head: bytes) -> None:
    async with serve(headers_app, as_activator=True) as url, connect(url) as conn:
        await conn.send(head)
        r = await conn.response()
        assert r.status == 400
        assert error_code(r.body) == "bad_request"
        assert await conn.closed()


async def test_an_absolute_form_targets_authority_replaces_the_host() -> None:
    async with serve(headers_app, as_activator=True) as url, connect(url) as conn:
        await conn.send(b"GET http://chat.example:8080/v1?x=1 HTTP/1.1\r\nHost: other\r\n\r\n")
        r = await conn.response()
        assert r.status == 200
        hosts = [v for n, v in json.loads(r.body)["headers"] if n == "host"]
        assert hosts == ["chat.example:8080"]
