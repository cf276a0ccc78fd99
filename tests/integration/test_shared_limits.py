"""Limits across activator processes: two ``python -m activator`` over a real redis-server.

A revision with containerConcurrency 2 and queue-depth 2 on one replica: each activator enforces
half (activator.limits), so the replica never sees more than 2 requests in flight from both
together, and each activator holds 1 and refuses the next (without the share: 4 in flight and
2 held in each).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from harness.activators import activators
from harness.redis_server import RedisServer
from tests.activator.conftest import Upstream, endpoints, revision, serve, service
from torpor.bus.redis import RedisBus

KEY = "default/chat-00001"

pytestmark = pytest.mark.redis


@pytest.fixture
def two_activators(redis_server: RedisServer, tmp_path: Path) -> Iterator[list[str]]:
    with activators(redis_server.url, tmp_path) as bases:
        yield bases


async def _until(check: object, timeout_s: float = 15.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not check():  # type: ignore[operator]  # noqa: ASYNC110 - polled state
            await asyncio.sleep(0.05)


async def test_two_activator_processes_share_the_revision_s_limits(
    redis_server: RedisServer, two_activators: list[str]
) -> None:
    spec = service(revisions=(revision("chat-00001", container_concurrency=2, queue_depth=2),))
    bus = await RedisBus.connect(redis_server.url)
    upstream = Upstream()  # /stream holds each request after its first event until the gate
    first, second = two_activators

    def streams() -> int:
        return sum(s.path == "/v1/responses/stream" for s in upstream.seen)

    try:
        async with serve(upstream) as up, httpx.AsyncClient(timeout=30) as c:
            await bus.publish_services([spec])
            await bus.publish_endpoints(endpoints(KEY, up))
            # Requests through both for three stats intervals (1 s): each reports on the revision
            # over the bus and, busy, reads the other's report.
            until = time.monotonic() + 3.5
            while time.monotonic() < until:
                for base in two_activators:
                    r = await c.get(f"{base}/default/chat/v1/responses/x")
                    assert r.status_code in (200, 404)  # 404 until the services arrive
                await asyncio.sleep(0.2)
            held = [
                asyncio.create_task(c.get(f"{base}/default/chat/v1/responses/stream?n=2"))
                for base in (first, first, second, second)
            ]
            await _until(lambda: streams() == 2)
            await asyncio.sleep(0.5)
            refused = [(await c.get(f"{base}/default/chat/score")) for base in two_activators]
            assert streams() == 2  # in flight on the replica: cc, not 2 x cc
            upstream.gate.set()
            answers = await asyncio.gather(*held)
    finally:
        await bus.aclose()
    assert [r.status_code for r in refused] == [503, 503]
    assert {r.json()["error"]["code"] for r in refused} == {"queue_full"}
    assert [r.status_code for r in answers] == [200] * 4
