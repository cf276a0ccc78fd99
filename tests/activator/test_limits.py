"""Limits across activators (activator.limits): the share table, and two activators on one bus."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest

from activator.app import Activator, ActivatorConfig, build_activator
from activator.limits import live_activators, share, shared_limits
from tests.activator.conftest import Upstream, endpoints, eventually, revision, serve, service
from torpor.bus.base import ActivatorStats
from torpor.bus.memory import MemoryBus

KEY = "default/chat-00001"


@pytest.mark.parametrize(
    ("limit", "activators", "each"),
    [
        (0, 3, 0),  # containerConcurrency 0: no limit, for any number of activators
        (4, 1, 4),
        (4, 2, 2),
        (5, 2, 2),  # a floor: 4 of 5 used rather than 6 allowed
        (3, 4, 1),  # fewer than activators: one each, the documented max(limit, n)
        (256, 3, 85),
        (8, 0, 8),  # no count yet reads as alone
    ],
)
def test_each_activator_enforces_its_share(limit: int, activators: int, each: int) -> None:
    assert share(limit, activators) == each
    assert activators * each <= max(limit, activators) or limit == 0


def test_shared_limits_keep_the_timeout_and_split_the_counts() -> None:
    spec = revision("chat-00001", container_concurrency=4, queue_depth=10, timeout_s=30.0)
    limits = shared_limits(spec, 2)
    assert (limits.depth, limits.container_concurrency, limits.timeout_s) == (5, 2, 30.0)


def test_live_activators_count_distinct_ids_and_always_this_one() -> None:
    def stat(a: str) -> ActivatorStats:
        return ActivatorStats(a, KEY, 0, 0, 0.0)

    assert live_activators([], "a") == 1
    assert live_activators([stat("a"), stat("b"), stat("b")], "a") == 2
    assert live_activators([stat("b")], "a") == 2


@asynccontextmanager
async def _activator(bus: MemoryBus, name: str) -> AsyncIterator[tuple[Activator, str]]:
    activator = build_activator(
        bus, ActivatorConfig(activator_id=name, stats_interval_s=0.02, seed=1, keepalive_s=0)
    )
    async with activator.running(), serve(activator.app, as_activator=True) as url:
        yield activator, url


def _queued(activator: Activator) -> int:
    return next((s.queued for s in activator.stats() if s.revision == KEY), 0)


async def test_two_activators_hold_container_concurrency_and_queue_depth_together() -> None:
    # cc 2 and depth 2 for the revision: without sharing, each activator would allow 2 in flight
    # on the one replica (4 in all) and hold 2 more each.
    spec = service(revisions=(revision("chat-00001", container_concurrency=2, queue_depth=2),))
    bus = MemoryBus()
    await bus.publish_services((spec,))
    upstream = Upstream()  # /v1/responses/stream holds each request after its first event
    async with (
        serve(upstream) as up,
        _activator(bus, "a") as (a, url_a),
        _activator(bus, "b") as (b, url_b),
        httpx.AsyncClient(timeout=10) as c,
    ):
        await bus.publish_endpoints(endpoints(KEY, up))
        # One request through each: both now report on the revision, and read each other.
        assert (await c.get(f"{url_a}/default/chat/v1/responses/x")).status_code == 200
        assert (await c.get(f"{url_b}/default/chat/v1/responses/x")).status_code == 200

        def halved(x: Activator) -> bool:
            limits = x.limits(KEY)
            return limits is not None and (limits.container_concurrency, limits.depth) == (1, 1)

        await eventually(lambda: halved(a) and halved(b))

        streams = [
            asyncio.create_task(c.get(f"{url}/default/chat/v1/responses/stream?n=2"))
            for url in (url_a, url_a, url_b, url_b)
        ]
        await eventually(lambda: _queued(a) == 1 and _queued(b) == 1)
        await eventually(lambda: sum(s.path == "/v1/responses/stream" for s in upstream.seen) == 2)
        # Each activator's queue holds its share (1): a third request to either is refused.
        full = await c.get(f"{url_a}/default/chat/v1/responses/x")
        assert full.status_code == 503 and full.json()["error"]["code"] == "queue_full"
        await asyncio.sleep(0.1)  # five stats intervals: nothing more reaches the replica
        assert sum(s.path == "/v1/responses/stream" for s in upstream.seen) == 2
        upstream.gate.set()
        answers = await asyncio.gather(*streams)
    await bus.aclose()
    assert [r.status_code for r in answers] == [200] * 4
    assert sum(s.path == "/v1/responses/stream" for s in upstream.seen) == 4
