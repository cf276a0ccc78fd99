"""The Bus contract, run unchanged against MemoryBus and RedisBus (over a real redis-server).

A ``Backend`` hands out handles on one shared bus: for memory every handle is the same object,
for Redis each is its own ``RedisBus`` (its own connections), the way two activators and an
autoscaler each hold one.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from tests.torpor.bus.helpers import (
    REV,
    endpoints,
    eventually,
    holds,
    next_event,
    service,
    stats,
)
from torpor.bus import (
    Bus,
    BusEvent,
    BusSnapshot,
    CrashLoop,
    Endpoint,
    EndpointsChanged,
    MemoryBus,
    Poked,
    RedisBus,
    RevisionEndpoints,
    ServicesChanged,
)


class Backend:
    def __init__(self, kind: str, url: str | None) -> None:
        self.kind = kind
        self._url = url
        self._prefix = f"t{uuid.uuid4().hex[:8]}"
        self._memory: MemoryBus | None = None
        self._opened: list[Bus] = []

    async def bus(self, **options: Any) -> Bus:
        """A handle on the shared bus; options apply to the handle (memory: to the one bus)."""
        if self.kind == "memory":
            if self._memory is None:
                self._memory = MemoryBus(**options)
                self._opened.append(self._memory)
            return self._memory
        assert self._url is not None
        bus = await RedisBus.connect(self._url, prefix=self._prefix, **options)
        self._opened.append(bus)
        return bus

    async def aclose(self) -> None:
        for bus in self._opened:
            await bus.aclose()


@pytest_asyncio.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    url = request.getfixturevalue("redis_server").url if request.param == "redis" else None
    backend = Backend(request.param, url)
    try:
        yield backend
    finally:
        await backend.aclose()


async def test_empty_bus_has_an_empty_snapshot(backend: Backend) -> None:
    bus = await backend.bus()
    assert await bus.snapshot() == BusSnapshot(services=(), endpoints={}, stats=())


async def test_published_services_are_in_every_handles_snapshot(backend: Backend) -> None:
    control, activator = await backend.bus(), await backend.bus()
    await control.publish_services([service("chat"), service("code")])
    assert (await activator.snapshot()).services == (service("chat"), service("code"))
    # A publish replaces the whole list.
    await control.publish_services([service("code", generation=2)])
    assert (await activator.snapshot()).services == (service("code", generation=2),)


async def test_endpoint_versions_increase_with_every_publish(backend: Backend) -> None:
    autoscaler, activator = await backend.bus(), await backend.bus()
    await autoscaler.publish_endpoints(endpoints(REV, 8001))
    first = (await activator.snapshot()).endpoints[REV]
    await autoscaler.publish_endpoints(endpoints(REV, 8001, 8002))
    second = (await activator.snapshot()).endpoints[REV]
    assert first.version >= 1
    assert second.version > first.version
    assert [e.url for e in second.endpoints] == ["http://127.0.0.1:8001", "http://127.0.0.1:8002"]


async def test_endpoints_keep_failure_and_draining(backend: Backend) -> None:
    autoscaler, activator = await backend.bus(), await backend.bus()
    failed = endpoints("default/broken-00001", failure="CUDA out of memory")
    await autoscaler.publish_endpoints(failed)
    draining = RevisionEndpoints(
        REV, (Endpoint("r8001", "http://127.0.0.1:8001"), Endpoint("r8002", "http://x", True))
    )
    await autoscaler.publish_endpoints(draining)
    snap = (await activator.snapshot()).endpoints
    assert snap["default/broken-00001"].failure == "CUDA out of memory"
    assert [e.replica_id for e in snap[REV].serving] == ["r8001"]


async def test_endpoints_keep_a_crash_loop(backend: Backend) -> None:
    autoscaler, activator = await backend.bus(), await backend.bus()
    crash = CrashLoop(2, 1765141445.25, "exited with code 0 (IndexError)", 10.0, True)
    events = activator.events()
    await autoscaler.publish_endpoints(RevisionEndpoints(REV, (), "exit 0", crash_loop=crash))
    event = await next_event(events)
    assert isinstance(event, EndpointsChanged) and event.endpoints.crash_loop == crash
    assert (await activator.snapshot()).endpoints[REV].crash_loop == crash


async def test_stats_from_two_activators_are_both_visible(backend: Backend) -> None:
    a1, a2, autoscaler = await backend.bus(), await backend.bus(), await backend.bus()
    await a1.publish_stats([stats("a1", queued=3, in_flight=1)])
    await a2.publish_stats([stats("a2", queued=2, in_flight=4)])
    # A later report from the same activator replaces its earlier one instead of adding to it.
    await a1.publish_stats([stats("a1", queued=5, in_flight=1)])
    seen = {(s.activator_id, s.revision): s for s in (await autoscaler.snapshot()).stats}
    assert set(seen) == {("a1", REV), ("a2", REV)}
    assert sum(s.queued for s in seen.values()) == 7
    assert sum(s.in_flight for s in seen.values()) == 5


async def test_stats_expire_when_an_activator_stops_reporting(backend: Backend) -> None:
    a1, a2 = await backend.bus(stats_ttl_s=0.3), await backend.bus(stats_ttl_s=0.3)
    await a1.publish_stats([stats("a1", queued=1)])
    await a2.publish_stats([stats("a2", queued=1)])
    assert len((await a1.snapshot()).stats) == 2

    async def only_a2_left() -> bool:
        await a2.publish_stats([stats("a2", queued=1)])  # a2 is alive, a1 went silent
        return [s.activator_id for s in (await a2.snapshot()).stats] == ["a2"]

    await eventually(only_a2_left, "a1's stats expired while a2's stayed")


async def test_revision_stats_reads_one_revision_from_every_activator(backend: Backend) -> None:
    a1, a2, autoscaler = await backend.bus(), await backend.bus(), await backend.bus()
    other = "default/code-00001"
    await a1.publish_stats([stats("a1", queued=3, in_flight=1), stats("a1", other, queued=9)])
    await a2.publish_stats([stats("a2", queued=2, in_flight=4)])
    # A later report from the same activator replaces its earlier one.
    await a1.publish_stats([stats("a1", queued=5, in_flight=1)])
    mine = {s.activator_id: s for s in await autoscaler.revision_stats(REV)}
    assert set(mine) == {"a1", "a2"}
    assert (mine["a1"].queued, mine["a1"].in_flight) == (5, 1)
    assert (mine["a2"].queued, mine["a2"].in_flight) == (2, 4)
    assert [(s.activator_id, s.queued) for s in await autoscaler.revision_stats(other)] == [
        ("a1", 9)
    ]
    # The narrow read agrees with the whole snapshot.
    snapshot = (await autoscaler.snapshot()).stats
    assert sorted(mine.values(), key=lambda s: s.activator_id) == sorted(
        (s for s in snapshot if s.revision == REV), key=lambda s: s.activator_id
    )


async def test_revision_stats_of_an_unreported_revision_is_empty(backend: Backend) -> None:
    bus = await backend.bus()
    assert await bus.revision_stats("default/nobody-00001") == ()
    await bus.publish_stats([stats("a1", queued=1)])
    assert await bus.revision_stats("default/nobody-00001") == ()


async def test_revision_stats_expire_when_an_activator_stops_reporting(backend: Backend) -> None:
    a1, a2 = await backend.bus(stats_ttl_s=0.3), await backend.bus(stats_ttl_s=0.3)
    await a1.publish_stats([stats("a1", queued=1)])
    await a2.publish_stats([stats("a2", queued=1)])
    assert len(await a1.revision_stats(REV)) == 2

    async def only_a2_left() -> bool:
        await a2.publish_stats([stats("a2", queued=1)])  # a2 is alive, a1 went silent
        return [s.activator_id for s in await a2.revision_stats(REV)] == ["a2"]

    await eventually(only_a2_left, "a1's stats expired while a2's stayed")

    async def all_gone() -> bool:
        return await a2.revision_stats(REV) == ()

    await eventually(all_gone, "every report expired once nobody sent one")


async def test_a_poke_reaches_a_subscriber(backend: Backend) -> None:
    activator, autoscaler = await backend.bus(), await backend.bus()
    events = autoscaler.events()
    await activator.poke(REV)
    assert await next_event(events) == Poked(REV)


async def test_every_subscriber_gets_every_event_in_order(backend: Backend) -> None:
    publisher, s1, s2 = await backend.bus(), await backend.bus(), await backend.bus()
    streams = [s1.events(), s2.events(), s2.events()]
    await publisher.publish_services([service()])
    await publisher.publish_endpoints(endpoints(REV, 8001))
    await publisher.poke(REV)
    for stream in streams:
        first, second, third = [await next_event(stream) for _ in range(3)]
        assert first == ServicesChanged((service(),))
        assert isinstance(second, EndpointsChanged)
        assert second.endpoints.endpoints == endpoints(REV, 8001).endpoints
        assert third == Poked(REV)


async def test_events_carry_whole_sets_that_match_the_snapshot(backend: Backend) -> None:
    autoscaler, activator = await backend.bus(), await backend.bus()
    events = activator.events()
    await autoscaler.publish_endpoints(endpoints(REV, 8001, 8002))
    await autoscaler.publish_endpoints(endpoints(REV, 8002))
    first, last = await next_event(events), await next_event(events)
    assert isinstance(first, EndpointsChanged) and isinstance(last, EndpointsChanged)
    # The newest event alone is the whole state: nothing to merge, safe to apply twice.
    assert last.endpoints == (await activator.snapshot()).endpoints[REV]
    assert [e.replica_id for e in last.endpoints.endpoints] == ["r8002"]
    assert last.endpoints.version > first.endpoints.version


async def test_aclose_ends_every_iterator_and_leaves_no_tasks(backend: Backend) -> None:
    before = asyncio.all_tasks()
    bus = await backend.bus()
    received: list[object] = []

    async def consume(events: AsyncIterator[BusEvent]) -> None:
        async for event in events:
            received.append(event)

    consumers = [asyncio.create_task(consume(bus.events())) for _ in range(2)]
    await bus.poke(REV)
    await eventually(lambda: holds(len(received) == 2), "both consumers got the poke")
    await bus.aclose()
    await asyncio.wait_for(asyncio.gather(*consumers), 10)
    assert received == [Poked(REV), Poked(REV)]
    # Iterators opened after close end at once.
    assert [e async for e in bus.events()] == []
    await asyncio.sleep(0)
    assert asyncio.all_tasks() - before == set()


async def test_a_subscriber_that_falls_behind_converges_to_the_latest_state(
    backend: Backend,
) -> None:
    publisher, subscriber = (
        await backend.bus(subscriber_bound=4),
        await backend.bus(subscriber_bound=4),
    )
    events = subscriber.events()  # never read while the publisher runs
    revisions = [f"default/chat-{i:05d}" for i in range(3)]
    for round_ in range(20):
        await publisher.publish_services([service(generation=round_ + 1)])
        for port, revision in enumerate(revisions, start=8000 + 10 * round_):
            await publisher.publish_endpoints(endpoints(revision, port))
    await publisher.poke(REV)

    final = await publisher.snapshot()
    services: tuple[object, ...] = ()
    latest: dict[str, RevisionEndpoints] = {}
    while services != final.services or latest != final.endpoints:
        event = await next_event(events)
        if isinstance(event, ServicesChanged):
            services = event.services
        elif isinstance(event, EndpointsChanged):
            latest[event.endpoints.revision] = event.endpoints


async def test_a_requested_version_is_a_floor(backend: Backend) -> None:
    autoscaler = await backend.bus()
    e = endpoints(REV, 8001)
    await autoscaler.publish_endpoints(RevisionEndpoints(e.revision, e.endpoints, version=7))
    await autoscaler.publish_endpoints(e)
    assert (await autoscaler.snapshot()).endpoints[REV].version >= 8
