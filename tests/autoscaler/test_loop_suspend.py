"""The suspended tier through the real loop (issue 17), with a fake actuator, scraper and clock:
an idle replica is withdrawn then frozen, a held request wakes it (no cold start) and it is
published again, it is stopped after its window, and an actuator without the state is left be."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from autoscaler.actuator import Phase
from tests.autoscaler.fakes import FakeActuator, FakeScraper, eventually, revision, service
from tests.autoscaler.test_loop import KEY, FakeClock, RecordingBus, endpoints, scaler, settle
from torpor.bus import ActivatorStats

# A long stable window and grace: scale-to-zero never comes first in these tests.
SPEC = {
    "metric": "llm",
    "window_s": 3600.0,
    "scale_to_zero_grace_s": 3600.0,
    "suspend_after_s": 10.0,
    "stop_suspended_after_s": 60.0,
}


@pytest.fixture
def actuator() -> FakeActuator:
    return FakeActuator()


@pytest.fixture
def scraper() -> FakeScraper:
    return FakeScraper()


@pytest.fixture
async def bus(actuator: FakeActuator) -> AsyncIterator[RecordingBus]:
    b = RecordingBus(actuator.calls)
    yield b
    await b.aclose()


def phase(actuator: FakeActuator, replica_id: str) -> Phase | None:
    r = actuator.live.get(KEY, {}).get(replica_id)
    return None if r is None else r.phase


async def test_idle_replica_is_suspended_woken_by_a_held_request_then_stopped(
    bus: RecordingBus, actuator: FakeActuator, scraper: FakeScraper
) -> None:
    clock = FakeClock()
    actuator.now = clock.now
    rev = revision(**SPEC)  # type: ignore[arg-type]
    await actuator.start(rev, 1)
    r = actuator.make_ready(KEY)
    scraper.set(r.replica_id, running=0)
    await bus.publish_services([service(rev)])
    a = scaler(bus, actuator, scraper, clock=clock)
    async with a.running():
        await eventually(lambda: ("serving", r.replica_id) in actuator.calls)
        await settle()
        assert phase(actuator, r.replica_id) is Phase.READY  # idle, but not for 10 s yet
        clock.now += 10.0
        actuator.now = clock.now
        await eventually(lambda: phase(actuator, r.replica_id) is Phase.SUSPENDED)
        e = await endpoints(bus)
        assert e is not None and e.endpoints == ()  # withdrawn: the activators hold requests
        status = a.statuses()[0]
        assert (status.state, status.suspended_replicas, status.ready_replicas) == (
            "suspended",
            1,
            0,
        )
        await settle()
        assert actuator.started() == [r.replica_id]  # decide counts it: no cold start beside it
        # A request is held and the activator pokes: the replica wakes and is published.
        await bus.publish_stats([ActivatorStats("a1", KEY, queued=1, in_flight=0, at=clock())])
        await bus.poke(KEY)
        await eventually(lambda: phase(actuator, r.replica_id) is Phase.READY)
        await eventually(lambda: actuator.calls[-1] == ("serving", r.replica_id))
        assert actuator.started() == [r.replica_id]
        assert [c for c in actuator.calls if c[0] == "resume"] == [("resume", r.replica_id)]
        # Served; idle again for the window: frozen again, then stopped after its own window
        # once decide no longer counts on it (here: its stable window reads zero).
        await bus.publish_stats([ActivatorStats("a1", KEY, queued=0, in_flight=0, at=clock())])
        await settle()
        clock.now += 10.0
        actuator.now = clock.now
        await eventually(lambda: phase(actuator, r.replica_id) is Phase.SUSPENDED)
        # Past its own window, but the stable window still holds the request: decide counts on
        # it, so it stays parked (stopping it would only make the next request a cold start).
        clock.now += 3700.0
        await settle()
        assert phase(actuator, r.replica_id) is Phase.SUSPENDED
        # The window read zero for a grace period: decide wants none, and it goes.
        clock.now += 3700.0
        await eventually(lambda: ("stop", r.replica_id) in actuator.calls)
        assert actuator.started() == [r.replica_id]
    metrics = a.registry.get_sample_value(
        "torpor_autoscaler_suspended_replica_seconds_total",
        {"namespace": "default", "revision": "chat-00001"},
    )
    assert metrics is not None and metrics > 0


async def test_a_replica_with_work_is_not_frozen(
    bus: RecordingBus, actuator: FakeActuator, scraper: FakeScraper
) -> None:
    clock = FakeClock()
    rev = revision(**SPEC)  # type: ignore[arg-type]
    await actuator.start(rev, 1)
    r = actuator.make_ready(KEY)
    scraper.set(r.replica_id, running=1)
    await bus.publish_services([service(rev)])
    async with scaler(bus, actuator, scraper, clock=clock).running():
        await eventually(lambda: ("serving", r.replica_id) in actuator.calls)
        clock.now += 100.0
        await settle()
        assert phase(actuator, r.replica_id) is Phase.READY
        assert ("suspend", r.replica_id) not in actuator.calls


async def test_a_replica_that_does_not_wake_is_replaced_by_a_cold_start(
    bus: RecordingBus, actuator: FakeActuator, scraper: FakeScraper
) -> None:
    clock = FakeClock()
    rev = revision(**SPEC)  # type: ignore[arg-type]
    await actuator.start(rev, 1)
    r = actuator.make_ready(KEY)
    scraper.set(r.replica_id, running=0)
    await bus.publish_services([service(rev)])
    async with scaler(bus, actuator, scraper, clock=clock).running():
        await eventually(lambda: ("serving", r.replica_id) in actuator.calls)
        clock.now += 10.0
        await eventually(lambda: phase(actuator, r.replica_id) is Phase.SUSPENDED)
        actuator.wake_fails = True
        await bus.publish_stats([ActivatorStats("a1", KEY, queued=1, in_flight=0, at=clock())])
        await bus.poke(KEY)
        await eventually(lambda: ("stop", r.replica_id) in actuator.calls)
        await eventually(lambda: len(actuator.started()) == 2)  # the first start, then this


async def test_an_actuator_without_suspension_is_asked_once(
    bus: RecordingBus, actuator: FakeActuator, scraper: FakeScraper
) -> None:
    clock = FakeClock()
    actuator.suspend_unsupported = True
    rev = revision(**SPEC)  # type: ignore[arg-type]
    await actuator.start(rev, 1)
    r = actuator.make_ready(KEY)
    scraper.set(r.replica_id, running=0)
    await bus.publish_services([service(rev)])
    async with scaler(bus, actuator, scraper, clock=clock).running():
        await eventually(lambda: ("serving", r.replica_id) in actuator.calls)
        clock.now += 10.0
        await eventually(lambda: actuator.calls.count(("serving", r.replica_id)) == 2)
        await settle()
        # Withdrawn for the attempt, published again, never withdrawn again.
        assert actuator.calls.count(("serving", r.replica_id)) == 2
        assert phase(actuator, r.replica_id) is Phase.READY
        e = await endpoints(bus)
        assert e is not None and [x.replica_id for x in e.serving] == [r.replica_id]
