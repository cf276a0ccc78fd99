"""MemoryBus specifics beyond the shared contract."""

from __future__ import annotations

from tests.torpor.bus.helpers import REV, endpoints, next_event, service, stats
from torpor.bus import EndpointsChanged, MemoryBus, Poked, ServicesChanged


async def test_a_subscriber_that_never_reads_does_not_block_publishers() -> None:
    bus = MemoryBus(subscriber_bound=8)
    stuck = bus.events()  # noqa: F841  (subscribed, never read)
    reader = bus.events()
    for port in range(1000):
        await bus.publish_endpoints(endpoints(REV, port))
        event = await next_event(reader)
        assert isinstance(event, EndpointsChanged)
    await bus.poke(REV)
    assert await next_event(reader) == Poked(REV)
    await bus.aclose()


async def test_events_are_registered_when_events_is_called() -> None:
    bus = MemoryBus()
    stream = bus.events()  # not iterated yet
    await bus.publish_services([service()])
    assert await next_event(stream) == ServicesChanged((service(),))
    await bus.aclose()


async def test_stats_expire_on_the_injected_clock() -> None:
    now = [100.0]
    bus = MemoryBus(stats_ttl_s=10.0, clock=lambda: now[0])
    await bus.publish_stats([stats("a1", queued=1), stats("a2", queued=2)])
    now[0] = 105.0
    await bus.publish_stats([stats("a2", queued=3)])
    now[0] = 110.5
    assert [(s.activator_id, s.queued) for s in (await bus.snapshot()).stats] == [("a2", 3)]
    now[0] = 116.0
    assert (await bus.snapshot()).stats == ()
    await bus.aclose()
