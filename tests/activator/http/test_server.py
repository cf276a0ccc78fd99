from __future__ import annotations

import httpx

from tests.activator.conftest import Upstream, serve


async def test_served_as_the_activator_keep_alive_and_streams_work() -> None:
    upstream = Upstream()
    upstream.gate.set()
    async with serve(upstream, as_activator=True) as url, httpx.AsyncClient(base_url=url) as c:
        for i in range(5):
            r = await c.post("/echo", content=f"{i}")
            assert r.json()["body"] == f"{i}"
        r = await c.get("/stream?n=3")
        assert r.text.count("data:") == 4
