from __future__ import annotations

import asyncio

import httpx

from activator.server import _CorkedTransport
from tests.activator.conftest import Upstream, serve


class FakeTransport:
    """The transport seam's fake: records each write as the socket would see it."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str) -> str:
        return f"info:{name}"


async def test_writes_in_one_turn_leave_as_one() -> None:
    fake = FakeTransport()
    corked = _CorkedTransport(fake, asyncio.get_running_loop())  # type: ignore[arg-type]
    corked.write(b"HTTP/1.1 200 OK\r\n\r\n")
    corked.write(b"body")
    assert fake.writes == []
    await asyncio.sleep(0)
    assert fake.writes == [b"HTTP/1.1 200 OK\r\n\r\nbody"]
    corked.write(b"more")
    await asyncio.sleep(0)
    assert fake.writes[-1] == b"more"


async def test_close_flushes_first_and_other_calls_pass_through() -> None:
    fake = FakeTransport()
    corked = _CorkedTransport(fake, asyncio.get_running_loop())  # type: ignore[arg-type]
    corked.write(b"last words")
    corked.close()
    assert fake.writes == [b"last words"]
    assert fake.closed
    assert corked.get_extra_info("peername") == "info:peername"
    await asyncio.sleep(0)
    assert fake.writes == [b"last words"]


async def test_served_as_the_activator_keep_alive_and_streams_work() -> None:
    upstream = Upstream()
    upstream.gate.set()
    async with serve(upstream, as_activator=True) as url, httpx.AsyncClient(base_url=url) as c:
        for i in range(5):
            r = await c.post("/echo", content=f"{i}")
            assert r.json()["body"] == f"{i}"
        r = await c.get("/stream?n=3")
        assert r.text.count("data:") == 4
