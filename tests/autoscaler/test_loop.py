"""The per-revision loop with a fake actuator, a fake scraper and the in-memory bus."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any

import pytest

from autoscaler.loop import Autoscaler, LoopConfig, activator_load
from tests.autoscaler.fakes import FakeActuator, FakeScraper, eventually, revision, service
from torpor.bus import ActivatorStats, BusEvent, MemoryBus, RevisionEndpoints

KEY = "default/chat-00001"


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class RecordingBus(MemoryBus):
    """Puts endpoint publications in the actuator's call log, to check drain-before-stop order."""

    def __init__(self, calls: list[tuple[str, str]]) -> None:
        super().__init__()
        self.calls = calls

    async def publish_endpoints(self, endpoints: RevisionEndpoints) -> None:
        for e in endpoints.endpoints:
            self.calls.append(("draining" if e.draining else "serving", e.replica_id))
        await super().publish_endpoints(endpoints)


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


def scaler(
    bus: MemoryBus,
    actuator: FakeActuator,
    scraper: FakeScraper,
    clock: FakeClock | None = None,
    tick_s: float = 0.01,
    leader: Callable[[], bool] | None = None,
    **config: Any,
) -> Autoscaler:
    kwargs: dict[str, Callable[[], object]] = {}
    if clock is not None:
        kwargs["clock"] = clock
    if leader is not None:
        kwargs["leader"] = leader
    # Most tests hold their clock still; the quiet period before a stop is tested on its own.
    config.setdefault("drain_quiet_s", 0.0)
    return Autoscaler(
        bus,
        actuator,
        scrape=scraper,
        config=LoopConfig(tick_s=tick_s, **config),
        **kwargs,  # type: ignore[arg-type]
    )


async def settle() -> None:
    """Let the loops run a few dozen ticks (for checks that something does *not* happen)."""
    await asyncio.sleep(0.2)


async def endpoints(bus: MemoryBus, key: str = KEY) -> RevisionEndpoints | None:
    return (await bus.snapshot()).endpoints.get(key)


async def test_poke_at_zero_starts_a_replica_at_once(
    bus: MemoryBus, actuator: FakeActuator, scraper: FakeScraper
) -> None:
    await bus.publish_services([service(revision())])
    # A long tick: only the poke can explain a start.
    a = scaler(bus, actuator, scraper, tick_s=3600)
    async with a.running():
        await eventually(lambda: len(a.statuses()) == 1)
        await settle()
        assert actuator.started() == []
        await bus.poke(KEY)
        await eventually(lambda: len(actuator.started()) == 1)


async def test_ready_replica_is_published_and_shown_in_status(
    bus: MemoryBus, actuator: FakeActuator, scraper: FakeScraper
) -> None:
    await bus.publish_services([service(revision())])
    a = scaler(bus, actuator, scraper)
    async with a.running():
        await bus.poke(KEY)
        await eventually(lambda: len(actuator.started()) == 1)
        r = actuator.make_ready(KEY)
        scraper.set(r.replica_id, running=1)

        async def published() -> bool:
            e = await endpoints(bus)
            return e is not None and [x.url for x in e.serving] == [r.url]

        await eventually(published)
        await eventually(lambda: a.statuses()[0].ready_replicas == 1)
        status = a.statuses()[0]
        assert (status.name, status.service, status.state) == ("chat-00001", "chat", "ready")
        assert status.desired_replicas == 1
        labels = {"namespace": "default", "revision": "chat-00001"}
        await eventually(
            lambda: a.registry.get_sample_value("torpor_autoscaler_ready_replicas", labels) == 1
        )


async def test_scale_down_drains_before_stopping(
    bus: RecordingBus, actuator: FakeActuator, scraper: FakeScraper
) -> None:
    rev = revision(
        metric="llm", target=10, target_utilization=1.0, window_s=0.05, scale_to_zero_grace_s=3600
    )
    await actuator.start(rev, 2)
    busy = actuator.make_ready(KEY)
    light = actuator.make_ready(KEY)
    scraper.set(busy.replica_id, running=3)
    scraper.set(light.replica_id, running=2)
    await bus.publish_services([service(rev)])
    a = scaler(bus, actuator, scraper)
    async with a.running():
        # Load 5 fits one replica: the one with less work is drained, not stopped.
        await eventually(lambda: ("draining", light.replica_id) in actuator.calls)
        await settle()
        assert ("stop", light.replica_id) not in actuator.calls
        assert a.statuses()[0].draining_replicas == 1
        e = await endpoints(bus)
        assert e is not None and [x.replica_id for x in e.serving] == [busy.replica_id]
        # Its requests finish: only now is it stopped.
        scraper.set(light.replica_id, running=0)
        await eventually(lambda: ("stop", light.replica_id) in actuator.calls)
    draining_at = actuator.calls.index(("draining", light.replica_id))
    assert draining_at < actuator.calls.index(("stop", light.replica_id))
    assert ("stop", busy.replica_id) not in actuator.calls


async def test_drain_waits_for_activator_in_flight(
    bus: RecordingBus, actuator: FakeActuator, scraper: FakeScraper
) -> None:
    clock = FakeClock()
    rev = revision(metric="llm", window_s=0.05, scale_to_zero_grace_s=0)
    await actuator.start(rev, 1)
    r = actuator.make_ready(KEY)
    scraper.set(r.replica_id, running=0)
    # vLLM is done but the activator still streams two responses from it.
    await bus.publish_stats([ActivatorStats("a1", KEY, queued=0, in_flight=2, at=clock())])
    await bus.publish_services([service(rev)])
    async with scaler(bus, actuator, scraper, clock=clock).running():
        # vLLM reports nothing running, so the replica is drained; it is not stopped while the
        # activator still counts requests on the revision that no serving replica accounts for.
        await eventually(lambda: ("draining", r.replica_id) in actuator.calls)
        await settle()
        assert ("stop", r.replica_id) not in actuator.calls
        await bus.publish_stats([ActivatorStats("a1", KEY, queued=0, in_flight=0, at=clock())])
        await eventually(lambda: ("stop", r.replica_id) in actuator.calls)
    assert actuator.calls.index(("draining", r.replica_id)) < actuator.calls.index(
        ("stop", r.replica_id)
    )


async def test_drain_waits_while_an_activator_reports_requests_on_the_replica(
    bus: RecordingBus, actuator: FakeActuator, scraper: FakeScraper
) -> None:
    clock = FakeClock()
    rev = revision(
        metric="llm", target=10, target_utilization=1.0, window_s=0.05, scale_to_zero_grace_s=3600
    )
    await actuator.start(rev, 2)
    busy = actuator.make_ready(KEY)
    light = actuator.make_ready(KEY)
    scraper.set(busy.replica_id, running=3)
    scraper.set(light.replica_id, running=2)
    await bus.publish_services([service(rev)])
    async with scaler(bus, actuator, scraper, clock=clock, drain_poll_s=0.01).running():
        await eventually(lambda: ("draining", light.replica_id) in actuator.calls)
        # vLLM counts nothing on the drained replica, and the activators' in-flight total is
        # covered by the replica that stays, which alone would let it go; but an activator's
        # report names it: a request is still on its way there.
        report = ActivatorStats(
            "a1", KEY, queued=0, in_flight=3, at=clock(), busy=(busy.replica_id, light.replica_id)
        )
        await bus.publish_stats([report])
        scraper.set(light.replica_id, running=0)
        await settle()
        assert ("stop", light.replica_id) not in actuator.calls
        await bus.publish_stats([replace(report, busy=(busy.replica_id,))])
        await eventually(lambda: ("stop", light.replica_id) in actuator.calls)


async def test_drain_stops_only_after_the_replica_stayed_quiet_for_drain_quiet_s(
    bus: RecordingBus, actuator: FakeActuator, scraper: FakeScraper
) -> None:
    clock = FakeClock()
    rev = revision(metric="llm", window_s=0.05, scale_to_zero_grace_s=0)
    await actuator.start(rev, 1)
    r = actuator.make_ready(KEY)
    scraper.set(r.replica_id, running=0)
    await bus.publish_services([service(rev)])
    async with scaler(
        bus, actuator, scraper, clock=clock, drain_quiet_s=1.5, drain_poll_s=0.01
    ).running():
        await eventually(lambda: ("draining", r.replica_id) in actuator.calls)
        clock.now += 1.0
        await settle()
        assert ("stop", r.replica_id) not in actuator.calls
        # Busy again before the quiet period ran out: the period starts over.
        scraper.set(r.replica_id, running=1)
        await settle()
        scraper.set(r.replica_id, running=0)
        await settle()
        clock.now += 1.0
        await settle()
        assert ("stop", r.replica_id) not in actuator.calls
        clock.now += 1.0
        await eventually(lambda: ("stop", r.replica_id) in actuator.calls)


async def test_a_slow_scrape_of_one_revision_does_not_delay_another(
    bus: MemoryBus, actuator: FakeActuator, scraper: FakeScraper
) -> None:
    slow = revision("slow-00001", "slow", min_scale=1)
    fast = revision("fast-00001", "fast")
    await actuator.start(slow, 1)
    stuck = actuator.make_ready(slow.ref.key)
    gate = scraper.block(stuck.replica_id)
    await bus.publish_services([service(slow), service(fast)])
    try:
        async with scaler(bus, actuator, scraper).running():
            await bus.poke(fast.ref.key)
            await eventually(lambda: any(x.startswith("fast-") for x in actuator.started()))
    finally:
        gate.set()


async def test_removed_revision_is_forgotten(
    bus: MemoryBus, actuator: FakeActuator, scraper: FakeScraper
) -> None:
    rev = revision(min_scale=1)
    await bus.publish_services([service(rev)])
    async with scaler(bus, actuator, scraper).running():
        await eventually(lambda: len(actuator.started()) == 1)
        actuator.make_ready(KEY)
        await eventually(lambda: len(actuator.calls) > 1)
        await bus.publish_services([])
        await eventually(lambda: ("forget", KEY) in actuator.calls)

        async def emptied() -> bool:
            e = await endpoints(bus)
            return e is not None and e.endpoints == ()

        await eventually(emptied)


async def test_unrouted_revision_ignores_min_scale(
    bus: MemoryBus, actuator: FakeActuator, scraper: FakeScraper
) -> None:
    old = revision("chat-00001", min_scale=2)
    new = replace(revision("chat-00002", min_scale=1), generation=2)
    svc = replace(service(new, old), revisions=(old, new))
    await bus.publish_services([svc])
    async with scaler(bus, actuator, scraper).running():
        await eventually(lambda: len(actuator.started()) == 1)
        await settle()
    assert actuator.started() == ["chat-00002-r1"]


async def test_scale_up_takes_back_a_draining_replica(
    bus: RecordingBus, actuator: FakeActuator, scraper: FakeScraper
) -> None:
    rev = revision(
        metric="llm", target=10, target_utilization=1.0, window_s=0.05, scale_to_zero_grace_s=3600
    )
    await actuator.start(rev, 2)
    busy = actuator.make_ready(KEY)
    light = actuator.make_ready(KEY)
    scraper.set(busy.replica_id, running=3)
    scraper.set(light.replica_id, running=2)
    await bus.publish_services([service(rev)])
    async with scaler(bus, actuator, scraper).running():
        await eventually(lambda: ("draining", light.replica_id) in actuator.calls)
        # A burst arrives while it drains: it is taken back instead of a cold start.
        await bus.publish_stats([ActivatorStats("a1", KEY, queued=30, in_flight=0, at=time.time())])
        await eventually(lambda: len(actuator.started()) > 2)
        drained_at = actuator.calls.index(("draining", light.replica_id))
        assert ("serving", light.replica_id) in actuator.calls[drained_at:]
    assert ("stop", light.replica_id) not in actuator.calls


class FlakyBus(MemoryBus):
    """Its first event stream breaks at once, as a Redis connection might."""

    def __init__(self) -> None:
        super().__init__()
        self.subscriptions = 0

    def events(self) -> AsyncIterator[BusEvent]:
        self.subscriptions += 1
        if self.subscriptions == 1:
            return self._broken()
        return super().events()

    async def _broken(self) -> AsyncIterator[BusEvent]:
        raise ConnectionError("bus connection lost")
        yield  # pragma: no cover - makes this an async generator


async def test_a_broken_event_stream_is_resubscribed(
    actuator: FakeActuator, scraper: FakeScraper
) -> None:
    bus = FlakyBus()
    try:
        a = scaler(bus, actuator, scraper)
        async with a.running():
            await eventually(lambda: bus.subscriptions >= 2)
            await bus.publish_services([service(revision())])
            await eventually(lambda: len(a.statuses()) == 1)
    finally:
        await bus.aclose()


async def test_tick_s_has_one_source_of_truth(actuator: FakeActuator) -> None:
    bus = MemoryBus()
    try:
        # LoopConfig(tick_s=5) used to tick every 2 s: Autoscaler's own tick_s default won.
        assert Autoscaler(bus, actuator, config=LoopConfig(tick_s=5)).config.tick_s == 5
        assert Autoscaler(bus, actuator, tick_s=5).config.tick_s == 5
        assert Autoscaler(bus, actuator, tick_s=5, config=LoopConfig(tick_s=5)).config.tick_s == 5
        assert Autoscaler(bus, actuator).config.tick_s == LoopConfig().tick_s
        with pytest.raises(ValueError, match="disagrees"):
            Autoscaler(bus, actuator, tick_s=1, config=LoopConfig(tick_s=5))
    finally:
        await bus.aclose()


@pytest.mark.parametrize(
    "bad", [{"tick_s": 0.0}, {"stats_fresh_s": -1.0}, {"drain_quiet_s": -1.0}]
)
def test_a_bad_loop_config_is_refused(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        LoopConfig(**bad)  # type: ignore[arg-type]


def test_activator_load_sums_fresh_stats_only() -> None:
    stats = [
        ActivatorStats("a1", KEY, queued=2, in_flight=3, at=100.0),
        ActivatorStats("a2", KEY, queued=1, in_flight=1, at=96.0),
        ActivatorStats("a3", KEY, queued=50, in_flight=50, at=94.9),  # a stale report
    ]
    assert activator_load(stats, now=100.0, fresh_s=5.0) == (3, 4)
    assert activator_load([], now=100.0, fresh_s=5.0) == (0, 0)
