"""Knative's front door at zero, through to torpor's scale-up decision.

A request for a torpor-class revision at zero reaches Knative's activator (here the harness that
imitates it, ``harness/knative_activator.py``) and is held there. Real from then on: the Knative
demand poller (``knative_demand``, its HTTP fetch of the activator's ``/metrics``), the bus
(``MemoryBus``) and the autoscaler's loop (``Autoscaler``: ``decide``/``plan``), at their default
timings (1 s poll, 2 s tick). The loop must decide 0 -> 1 and call its actuator's ``start`` for that
revision; a KPA-class revision's request held at the same time must start nothing (Knative's own
autoscaler wakes it; the controller never puts it on torpor's bus). The actuator is a recording
fake at its seam: what it would start (a Deployment's scale, a local runtime) is not under test.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import httpx
import pytest

from autoscaler.loop import Autoscaler, LoopConfig
from harness.knative_activator import ActivatorSlices, FakeKnativeActivator
from knative.demand import DemandConfig, knative_demand
from tests.autoscaler.fakes import FakeActuator, eventually, revision, service
from torpor.bus import BusEvent, MemoryBus, Poked
from torpor.spec import RevisionSpec

OURS = "default/chat-00001"
KPA = "default/hello-00001"  # a KPA-class revision: not on torpor's bus
CONFIG = DemandConfig()  # the defaults: 1 s poll, 0.5 s scrape timeout
LOOP = LoopConfig()  # the default 2 s tick
# A hang guard, not a measurement (benchmarks/knative_wake.py measures): one poll interval, one
# scrape, one tick of the loop, and slack for scheduling on 2 shared cores.
BOUND_S = CONFIG.interval_s + CONFIG.scrape_timeout_s + LOOP.tick_s + 2.0


class RecordingActuator(FakeActuator):
    """``FakeActuator`` that also notes when each ``start`` was called (monotonic seconds)."""

    def __init__(self) -> None:
        super().__init__()
        self.starts: list[tuple[str, int, float]] = []  # (revision, count, when)

    async def start(self, revision: RevisionSpec, count: int) -> None:
        self.starts.append((revision.ref.key, count, time.monotonic()))
        await super().start(revision, count)



@pytest.fixture
async def knative_activator() -> AsyncIterator[FakeKnativeActivator]:
    harness = FakeKnativeActivator("1.22").start()
    try:
        yield harness
    finally:
        await asyncio.to_thread(harness.stop)


async def _hold(client: httpx.AsyncClient, url: str, key: str) -> int:
    namespace, name = key.split("/")
    headers = {"Knative-Serving-Namespace": namespace, "Knative-Serving-Revision": name}
    response = await client.post(f"{url}/v1/chat/completions", json={}, headers=headers)
    return response.status_code


async def _record(events: AsyncIterator[BusEvent], into: list[tuple[BusEvent, float]]) -> None:
    async for event in events:
        into.append((event, time.monotonic()))


async def test_a_request_held_at_zero_by_knatives_activator_makes_the_loop_start_a_replica(
    knative_activator: FakeKnativeActivator,
) -> None:
    bus = MemoryBus()
    await bus.publish_services([service(revision("chat-00001"))])  # torpor's class only
    actuator = RecordingActuator()
    scaler = Autoscaler(bus, actuator, config=LOOP)
    seen: list[tuple[BusEvent, float]] = []
    recording = asyncio.create_task(_record(bus.events(), seen))
    held: list[asyncio.Task[int]] = []
    async with (
        httpx.AsyncClient(timeout=30.0) as client,
        scaler.running(),
        knative_demand(bus, CONFIG, ActivatorSlices(knative_activator.port)),
    ):
        try:
            # At zero and decided so: the loop has ticked once and rests until woken.
            await eventually(lambda: scaler.statuses()[0].decision != "not yet decided")
            (status,) = scaler.statuses()
            assert (status.revision, status.desired_replicas) == (OURS, 0)
            assert actuator.starts == []

            held += [
                asyncio.create_task(_hold(client, knative_activator.url, OURS)),
                asyncio.create_task(_hold(client, knative_activator.url, KPA)),
            ]
            await eventually(lambda: {k for k, _ in knative_activator.arrivals} == {OURS, KPA})
            await eventually(lambda: actuator.starts != [], bound_s=BOUND_S + 5.0)

            # 0 -> 1 for torpor's revision, within a poll, a scrape and a tick of its arrival.
            ((key, count, started_at),) = actuator.starts
            assert (key, count) == (OURS, 1)
            arrived_at = min(t for k, t in knative_activator.arrivals if k == OURS)
            assert started_at - arrived_at <= BOUND_S
            (status,) = scaler.statuses()
            assert (status.desired_replicas, status.starting_replicas) == (1, 1)
            assert status.queued_requests == 1
            (stats,) = await bus.revision_stats(OURS)
            assert (stats.queued, stats.in_flight) == (1, 0)

            # Two more polls with both requests held: the KPA revision is never poked, counted
            # or started, and torpor's is not started twice.
            pokes_after = sum(1 for e, t in seen if e == Poked(OURS) and t > started_at)
            await eventually(
                lambda: (
                    sum(1 for e, t in seen if e == Poked(OURS) and t > started_at)
                    >= pokes_after + 2
                ),
                bound_s=3 * CONFIG.interval_s + 5.0,
            )
            assert [k for k, _, _ in actuator.starts] == [OURS]
            assert all(e != Poked(KPA) for e, _ in seen)
            assert await bus.revision_stats(KPA) == ()
            assert [s.revision for s in scaler.statuses()] == [OURS]

            knative_activator.release.set()
            assert await asyncio.gather(*held) == [200, 200]
        finally:
            knative_activator.release.set()
            await asyncio.gather(*held, return_exceptions=True)
            recording.cancel()
            await asyncio.gather(recording, return_exceptions=True)
