"""What only the Redis bus has to do: share state between processes and survive the server."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import pytest_asyncio
import redis.asyncio as aioredis

from harness.redis_server import RedisServer
from tests.torpor.bus.helpers import (
    REV,
    WAIT_S,
    endpoints,
    eventually,
    holds,
    next_event,
    next_matching,
    service,
    stats,
)
from torpor.bus import (
    ActivatorStats,
    BusEvent,
    BusUnavailable,
    EndpointsChanged,
    Poked,
    RedisBus,
    RevisionEndpoints,
    ServicesChanged,
)
from torpor.spec import ServiceSpec

pytestmark = pytest.mark.redis

Open = Callable[..., Awaitable[RedisBus]]


@pytest_asyncio.fixture
async def open_bus(redis_server: RedisServer) -> AsyncIterator[Open]:
    """Opens RedisBus instances on one prefix (one per process in production) and closes them."""
    prefix = f"t{uuid.uuid4().hex[:8]}"
    opened: list[RedisBus] = []

    async def open_(**options: Any) -> RedisBus:
        options.setdefault("reconnect_max_s", 0.2)
        bus = await RedisBus.connect(redis_server.url, prefix=prefix, **options)
        opened.append(bus)
        return bus

    try:
        yield open_
    finally:
        for bus in opened:
            await bus.aclose()


async def test_two_activators_and_an_autoscaler_share_one_bus(open_bus: Open) -> None:
    control, autoscaler = await open_bus(), await open_bus()
    activator1, activator2 = await open_bus(), await open_bus()
    autoscaler_events = autoscaler.events()
    a1_events, a2_events = activator1.events(), activator2.events()

    await control.publish_services([service()])
    await autoscaler.publish_endpoints(endpoints(REV, 8001))
    for events in (a1_events, a2_events):
        assert await next_event(events) == ServicesChanged((service(),))
        changed = await next_event(events)
        assert isinstance(changed, EndpointsChanged)
        assert changed.endpoints.endpoints == endpoints(REV, 8001).endpoints

    # A poke from either activator wakes the autoscaler.
    await activator2.poke(REV)
    await activator1.poke("default/other-00001")
    assert await next_matching(autoscaler_events, lambda e: isinstance(e, Poked)) == Poked(REV)
    assert await next_matching(autoscaler_events, lambda e: isinstance(e, Poked)) == Poked(
        "default/other-00001"
    )

    # Load adds up across activators.
    await activator1.publish_stats([stats("a1", queued=4, in_flight=2)])
    await activator2.publish_stats([stats("a2", queued=1, in_flight=3)])
    seen = (await autoscaler.snapshot()).stats
    assert sorted(s.activator_id for s in seen) == ["a1", "a2"]
    assert sum(s.queued + s.in_flight for s in seen) == 10


@pytest.mark.parametrize("crash", [False, True], ids=["restart", "crash"])
async def test_everyone_reconnects_and_converges_after_the_server_restarts(
    open_bus: Open, redis_server: RedisServer, crash: bool
) -> None:
    control, autoscaler, activator = await open_bus(), await open_bus(), await open_bus()
    await control.publish_services([service()])
    await autoscaler.publish_endpoints(endpoints(REV, 8001))
    before = (await activator.snapshot()).endpoints[REV].version
    events = activator.events()
    autoscaler_events = autoscaler.events()

    redis_server.restart(kill=crash)  # every key is gone

    # The subscriber is handed the whole state again, put back by the buses that published it
    # (in whichever order they reconnect).
    state = await _converge(events, services=(service(),), endpoints_=[endpoints(REV, 8001)])
    restored = state.endpoints[REV]
    assert restored.version > before

    # Publishers carry on, and versions keep increasing past anything seen before the restart.
    await autoscaler.publish_endpoints(endpoints(REV, 8001, 8002))
    newest = await next_matching(
        events,
        lambda e: isinstance(e, EndpointsChanged) and len(e.endpoints.endpoints) == 2,
    )
    assert isinstance(newest, EndpointsChanged)
    assert newest.endpoints.version > restored.version

    # Pokes and stats flow again.
    await _poke_until_heard(activator, autoscaler_events)
    await activator.publish_stats([stats("a1", queued=2)])
    assert [s.queued for s in (await autoscaler.snapshot()).stats] == [2]
    snap = await activator.snapshot()
    assert snap.services == (service(),)
    assert snap.endpoints[REV].endpoints == endpoints(REV, 8001, 8002).endpoints


async def test_publishing_while_the_server_is_down_fails_fast_and_typed(
    open_bus: Open, redis_server: RedisServer
) -> None:
    bus = await open_bus(retry_for_s=0.2)
    redis_server.stop()
    with pytest.raises(BusUnavailable):
        await bus.publish_endpoints(endpoints(REV, 8001))
    with pytest.raises(BusUnavailable):
        await bus.poke(REV)
    with pytest.raises(BusUnavailable):
        await bus.publish_stats([stats("a1")])
    with pytest.raises(BusUnavailable):
        await bus.snapshot()
    redis_server.start()
    await bus.publish_services([service()])
    assert (await bus.snapshot()).services == (service(),)


async def test_a_publish_that_starts_during_an_outage_succeeds_once_the_server_is_back(
    open_bus: Open, redis_server: RedisServer
) -> None:
    bus = await open_bus(retry_for_s=30.0)
    redis_server.stop()
    publishing = asyncio.create_task(bus.publish_services([service()]))
    await asyncio.sleep(0.1)  # let it fail at least once; the result does not depend on this
    redis_server.start()
    await asyncio.wait_for(publishing, 10)
    assert (await bus.snapshot()).services == (service(),)


async def test_connecting_to_a_server_that_is_not_there_raises_and_leaves_nothing_running(
    redis_server: RedisServer,
) -> None:
    redis_server.stop()
    before = asyncio.all_tasks()
    with pytest.raises(BusUnavailable):
        await RedisBus.connect(redis_server.url, retry_for_s=0.2)
    assert asyncio.all_tasks() - before == set()


async def test_a_dead_activators_stats_expire(open_bus: Open) -> None:
    live, dead = await open_bus(stats_ttl_s=0.3), await open_bus(stats_ttl_s=0.3)
    autoscaler = await open_bus()
    await dead.publish_stats([stats("dead", queued=9)])
    await dead.aclose()

    async def only_live_left() -> bool:
        await live.publish_stats([stats("live", queued=1)])
        return [s.activator_id for s in (await autoscaler.snapshot()).stats] == ["live"]

    await eventually(only_live_left, "the dead activator's stats expired")


async def test_a_malformed_message_is_skipped(open_bus: Open, redis_server: RedisServer) -> None:
    bus = await open_bus()
    events = bus.events()
    raw = aioredis.Redis.from_url(redis_server.url)
    try:
        await raw.publish(f"{bus._prefix}:events", b"not json")
        await raw.publish(f"{bus._prefix}:events", b'{"t":"nonsense"}')
    finally:
        await raw.aclose()
    await bus.poke(REV)
    assert await next_event(events) == Poked(REV)


async def test_restoring_never_overwrites_a_newer_write(
    open_bus: Open, redis_server: RedisServer
) -> None:
    old_autoscaler = await open_bus()
    await old_autoscaler.publish_endpoints(endpoints(REV, 8001))
    # The old autoscaler loses the server; a new one publishes before the old one is back.
    await old_autoscaler.aclose()
    redis_server.restart()
    new_autoscaler, activator = await open_bus(), await open_bus()
    await new_autoscaler.publish_endpoints(endpoints(REV, 9001))
    stale = await open_bus()
    # A bus that published the old set and reconnects only puts it back where it is missing.
    stale._own_endpoints[REV] = endpoints(REV, 8001)
    await stale._restore_own_state()
    assert (await activator.snapshot()).endpoints[REV].endpoints == endpoints(REV, 9001).endpoints


@dataclass
class _State:
    services: tuple[ServiceSpec, ...] = ()
    endpoints: dict[str, RevisionEndpoints] = field(default_factory=dict)


async def _converge(
    events: AsyncIterator[BusEvent],
    *,
    services: tuple[ServiceSpec, ...],
    endpoints_: list[RevisionEndpoints],
) -> _State:
    """Apply events, as a subscriber does, until its view matches the expected one."""
    state = _State()
    wanted = {e.revision: e.endpoints for e in endpoints_}

    def done() -> bool:
        seen = {r: e.endpoints for r, e in state.endpoints.items()}
        return state.services == services and seen == wanted

    async def apply() -> None:
        async for event in events:
            if isinstance(event, ServicesChanged):
                state.services = event.services
            elif isinstance(event, EndpointsChanged):
                state.endpoints[event.endpoints.revision] = event.endpoints
            if done():
                return

    await asyncio.wait_for(apply(), WAIT_S)
    return state


async def _poke_until_heard(poker: RedisBus, events: AsyncIterator[BusEvent]) -> None:
    """Pokes are fire-and-forget: one sent before the listener has resubscribed is lost, so
    poke again until one is heard (the activator does the same on its next stats tick)."""

    async def heard() -> bool:
        await poker.poke(REV)
        try:
            await asyncio.wait_for(next_matching(events, lambda e: e == Poked(REV)), 0.2)
        except TimeoutError:
            return False
        return True

    await eventually(heard, "a poke after the restart reached the autoscaler")


async def test_async_with_connects_and_closes(redis_server: RedisServer) -> None:
    before = asyncio.all_tasks()
    async with RedisBus(redis_server.url, prefix="ctx") as bus:
        events = bus.events()
        await bus.poke(REV)
        assert await next_event(events) == Poked(REV)
    assert [e async for e in events] == []
    assert asyncio.all_tasks() - before == set()


async def test_a_hung_server_is_noticed_and_survived(
    open_bus: Open, redis_server: RedisServer
) -> None:
    autoscaler = await open_bus(liveness_s=0.2, retry_for_s=0.3)
    activator = await open_bus(liveness_s=0.2)
    await autoscaler.publish_endpoints(endpoints(REV, 8001))
    events = activator.events()
    redis_server.pause()
    try:
        # Publishing gives up within its budget instead of waiting on the silent socket.
        with pytest.raises(BusUnavailable):
            await autoscaler.publish_endpoints(endpoints(REV, 8001, 8002))
        # The subscriber's pings go unanswered, so it drops the connection.
        await eventually(lambda: holds(not activator.connected), "the hang was noticed")
    finally:
        redis_server.resume()
    await eventually(lambda: holds(activator.connected), "resubscribed after the hang")
    await eventually(lambda: _publish_ok(autoscaler), "publish works after the server resumes")
    await _converge(events, services=(), endpoints_=[endpoints(REV, 8001, 8002)])


async def _publish_ok(bus: RedisBus) -> bool:
    try:
        await bus.publish_endpoints(endpoints(REV, 8001, 8002))
    except BusUnavailable:
        return False
    return True


async def test_thousands_of_concurrent_reads_wait_their_turn_instead_of_failing(
    open_bus: Open,
) -> None:
    """10,000 revision loops start at once and each reads its stats: more than the connection
    pool holds (100). They queue; none fails."""
    bus = await open_bus(retry_for_s=0.1)  # no time to retry its way past a full pool
    await bus.publish_stats([ActivatorStats("a1", REV, 1, 0, time.time())])
    reads = await asyncio.gather(*(bus.revision_stats(REV) for _ in range(2000)))
    assert all(len(r) == 1 for r in reads)
