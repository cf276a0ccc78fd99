"""Fanout: the emitter never waits, a lagging subscriber is handed the latest state."""

from __future__ import annotations

from tests.torpor.bus.helpers import REV, endpoints, next_event, service
from torpor.bus import BusEvent, EndpointsChanged, Poked, RevisionEndpoints, ServicesChanged
from torpor.bus.fanout import Fanout


def changed(revision: str, port: int, version: int) -> EndpointsChanged:
    e = endpoints(revision, port)
    return EndpointsChanged(RevisionEndpoints(e.revision, e.endpoints, e.failure, version))


async def test_events_arrive_in_order_when_the_subscriber_keeps_up() -> None:
    fanout = Fanout(bound=10)
    stream = fanout.subscribe()
    sent: list[BusEvent] = [ServicesChanged((service(),)), changed(REV, 1, 1), Poked(REV)]
    for event in sent:
        fanout.emit(event)
    assert [await next_event(stream) for _ in sent] == sent


async def test_a_lagging_subscriber_gets_the_latest_state_then_the_pokes_it_missed() -> None:
    fanout = Fanout(bound=3)
    slow, fast = fanout.subscribe(), fanout.subscribe()
    fast_seen = []
    for version in range(1, 11):  # far past the bound; emit never blocks
        fanout.emit(changed(REV, version, version))
        fanout.emit(changed("default/b-00001", version, version))
        fast_seen.append(await next_event(fast))
        fast_seen.append(await next_event(fast))
    fanout.emit(ServicesChanged((service(),)))
    fanout.emit(Poked(REV))

    # The fast subscriber saw everything; the slow one sees only the newest whole sets.
    assert len(fast_seen) == 20
    caught_up = [await next_event(slow) for _ in range(4)]
    assert caught_up == [
        ServicesChanged((service(),)),
        changed(REV, 10, 10),
        changed("default/b-00001", 10, 10),
        Poked(REV),
    ]


async def test_close_lets_subscribers_drain_then_ends_them() -> None:
    fanout = Fanout()
    stream = fanout.subscribe()
    fanout.emit(Poked(REV))
    fanout.close()
    assert [e async for e in stream] == [Poked(REV)]
    assert [e async for e in fanout.subscribe()] == []


async def test_a_closed_subscription_is_forgotten() -> None:
    fanout = Fanout()
    stream = fanout.subscribe()
    assert fanout.subscriber_count == 1
    await stream.aclose()
    assert fanout.subscriber_count == 0
    assert [e async for e in stream] == []
