"""A body trickle is cut (issue 23, finding 4): one body byte every so often kept a request (and
its connection) alive forever past the idle timeout; the whole-body deadline ends it with 408."""

from __future__ import annotations

import asyncio
import json
import time

from activator.http.http1 import HttpLimits
from tests.activator.conftest import serve
from tests.activator.http.test_http1 import connect, echo

# Idle deadline 0.5 s, whole body 1.5 s: a byte every 0.2 s never trips the first.
LIMITS = HttpLimits(head_timeout_s=5.0, body_idle_timeout_s=0.5, max_connections=100,
                    body_timeout_s=1.5)


async def test_a_body_trickled_inside_the_idle_timeout_is_cut_at_the_body_deadline() -> None:
    async with serve(echo, as_activator=True, limits=LIMITS) as url, connect(url) as conn:
        started = time.monotonic()
        await conn.send(b"POST /up HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\n")

        async def trickle() -> None:
            for _ in range(1000):
                try:
                    await conn.send(b"x")
                except ConnectionError:
                    return
                await asyncio.sleep(0.2)

        task = asyncio.create_task(trickle())
        try:
            r = await conn.response()
        finally:
            task.cancel()
        took = time.monotonic() - started
        assert r.status == 408
        assert json.loads(r.body)["error"]["code"] == "request_timeout"
        assert "whole request body" in json.loads(r.body)["error"]["message"]
        assert 1.4 <= took < 3.0, took
        assert await conn.closed()


async def test_a_steady_body_inside_the_deadline_is_served() -> None:
    async with serve(echo, as_activator=True, limits=LIMITS) as url, connect(url) as conn:
        await conn.send(b"POST /up HTTP/1.1\r\nHost: t\r\nContent-Length: 6\r\n\r\n")
        for part in (b"ab", b"cd", b"ef"):
            await asyncio.sleep(0.2)
            await conn.send(part)
        r = await conn.response()
        assert r.status == 200
        assert json.loads(r.body)["body"] == "abcdef"


async def test_the_next_request_on_a_connection_gets_its_own_body_deadline() -> None:
    async with serve(echo, as_activator=True, limits=LIMITS) as url, connect(url) as conn:
        for _ in range(2):
            await conn.send(b"POST /up HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\n")
            for byte in (b"a", b"b", b"c"):  # 1.2 s each, 2.4 s together: past one deadline
                await asyncio.sleep(0.4)
                await conn.send(byte)
            r = await conn.response()
            assert r.status == 200, r.body
