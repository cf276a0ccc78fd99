"""The Knative demand poller over real HTTP against a harness imitating Knative's activator.

A request reaches the harness and is held there, as Knative's activator holds one for a revision
at zero; the poller, scraping the harness's ``/metrics`` with its real HTTP fetcher, calls back
for torpor's revision within one interval plus one scrape, never for another class's revision,
and reports the end once the request is let go.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Collection, Sequence
from typing import Literal

import httpx
import pytest

from harness.knative_activator import ActivatorSlices, FakeKnativeActivator
from knative.demand import (
    DemandConfig,
    DemandPoller,
    HeldDemand,
    HttpMetricsFetcher,
    knative_demand,
)
from tests.autoscaler.fakes import eventually, revision, service
from torpor.bus import MemoryBus, Poked

OURS = "default/chat-00001"
OTHER = "default/hello-00001"  # a KPA-class revision: Knative's own autoscaler wakes it
INTERVAL_S = 0.25
SCRAPE_TIMEOUT_S = 0.5
# Scheduling on 2 shared cores, generous: the bound under test is interval + scrape.
SLACK_S = 0.75


class StaticDirectory:
    def __init__(self, urls: Sequence[str]) -> None:
        self.urls = list(urls)

    async def metrics_urls(self) -> Sequence[str]:
        return self.urls


class Calls:
    def __init__(self) -> None:
        self.calls: list[tuple[str, HeldDemand, float]] = []

    async def __call__(self, key: str, demand: HeldDemand) -> None:
        self.calls.append((key, demand, time.monotonic()))

    def first(self, key: str) -> tuple[HeldDemand, float] | None:
        return next(((d, t) for k, d, t in self.calls if k == key and d.total > 0), None)


async def _ours() -> Collection[str]:
    return {OURS}


@pytest.fixture(params=["1.22", "1.19"])
async def activator(request: pytest.FixtureRequest) -> AsyncIterator[FakeKnativeActivator]:
    shape: Literal["1.22", "1.19"] = request.param
    harness = FakeKnativeActivator(shape).start()
    try:
        yield harness
    finally:
        await asyncio.to_thread(harness.stop)


async def _call(client: httpx.AsyncClient, url: str, key: str) -> int:
    namespace, name = key.split("/")
    headers = {"Knative-Serving-Namespace": namespace, "Knative-Serving-Revision": name}
    response = await client.post(f"{url}/v1/chat/completions", json={}, headers=headers)
    return response.status_code


async def test_a_request_held_by_knatives_activator_wakes_torpors_revision(
    activator: FakeKnativeActivator,
) -> None:
    calls = Calls()
    fetcher = HttpMetricsFetcher(timeout_s=SCRAPE_TIMEOUT_S)
    poller = DemandPoller(
        StaticDirectory([activator.metrics_url]),
        fetcher,
        _ours,
        calls,
        interval_s=INTERVAL_S,
    )
    polling = asyncio.create_task(poller.run())
    async with httpx.AsyncClient(timeout=30.0) as client:
        try:
            await asyncio.sleep(2 * INTERVAL_S)  # idle rounds first: nothing held, no calls
            assert calls.calls == []
            requests = [
                asyncio.create_task(_call(client, activator.url, OURS)),
                asyncio.create_task(_call(client, activator.url, OTHER)),
            ]
            await eventually(lambda: calls.first(OURS) is not None)
            first = calls.first(OURS)
            assert first is not None
            demand, called_at = first
            arrived_at = min(t for k, t in activator.arrivals if k == OURS)
            assert demand.queued == 1
            assert called_at - arrived_at <= INTERVAL_S + SCRAPE_TIMEOUT_S + SLACK_S
            assert all(k == OURS for k, _, _ in calls.calls)  # the other class is not ours

            activator.release.set()
            assert await asyncio.gather(*requests) == [200, 200]
            await eventually(lambda: calls.calls[-1][:2] == (OURS, HeldDemand()))
            assert all(k == OURS for k, _, _ in calls.calls)
        finally:
            polling.cancel()
            await asyncio.gather(polling, return_exceptions=True)
            await fetcher.aclose()



async def test_the_wiring_pokes_torpors_revision_and_publishes_its_load_on_the_bus(
    activator: FakeKnativeActivator,
) -> None:
    bus = MemoryBus()
    await bus.publish_services([service(revision("chat-00001"))])
    events = bus.events().__aiter__()
    config = DemandConfig(interval_s=INTERVAL_S, scrape_timeout_s=SCRAPE_TIMEOUT_S)
    async with (
        httpx.AsyncClient(timeout=30.0) as client,
        knative_demand(bus, config, ActivatorSlices(activator.port)),
    ):
        held = asyncio.create_task(_call(client, activator.url, OURS))
        assert await asyncio.wait_for(anext(events), 10.0) == Poked(OURS)
        (stats,) = await bus.revision_stats(OURS)
        assert (stats.queued, stats.in_flight) == (1, 0)
        activator.release.set()
        assert await held == 200
        await eventually(lambda: _nothing_queued(bus))


async def _nothing_queued(bus: MemoryBus) -> bool:
    return all(s.queued == 0 for s in await bus.revision_stats(OURS))
