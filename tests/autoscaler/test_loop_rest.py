"""A revision at rest (at zero, no traffic) is not polled; a poke, a spec change or a change of
leadership wakes it, and anything it still waits for keeps it ticking."""

from __future__ import annotations

import time
from dataclasses import replace

from autoscaler.decide import Decision, Observation
from autoscaler.loop import at_rest
from tests.autoscaler.fakes import FakeActuator, FakeScraper, eventually, revision, service
from tests.autoscaler.test_loop import KEY, endpoints, scaler, settle
from tests.autoscaler.test_loop_leader import Leadership
from torpor.bus import ActivatorStats, MemoryBus


class CountingBus(MemoryBus):
    """Counts the autoscaler's per-tick read: one call is one tick of one revision."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: dict[str, int] = {}

    async def revision_stats(self, revision: str) -> tuple[ActivatorStats, ...]:
        self.reads[revision] = self.reads.get(revision, 0) + 1
        return await super().revision_stats(revision)


ZERO = Decision(desired=0, reason="idle at zero")


def test_at_rest_only_with_nothing_running_held_or_wanted() -> None:
    assert at_rest(ZERO, Observation(), replicas=0, draining=0)
    assert not at_rest(replace(ZERO, desired=1), Observation(), replicas=0, draining=0)
    assert not at_rest(ZERO, Observation(), replicas=1, draining=0)  # a failed one, say
    assert not at_rest(ZERO, Observation(), replicas=0, draining=1)
    for busy in (
        Observation(activator_queued=1),
        Observation(activator_in_flight=1),
        Observation(arrivals=1),
        Observation(poked=True),
    ):
        assert not at_rest(ZERO, busy, replicas=0, draining=0)


async def test_a_revision_at_zero_is_not_polled_until_poked() -> None:
    bus, actuator, scraper = CountingBus(), FakeActuator(), FakeScraper()
    others = [revision(f"m{i}-00001", service=f"m{i}") for i in range(50)]
    await bus.publish_services([service(revision()), *(service(r) for r in others)])
    a = scaler(bus, actuator, scraper, tick_s=0.01)
    try:
        async with a.running():
            await eventually(lambda: len(bus.reads) == 51)
            before = dict(bus.reads)
            await settle()  # twenty ticks' worth
            assert bus.reads == before
            await bus.poke(KEY)
            await eventually(lambda: len(actuator.started()) == 1)
            assert bus.reads[KEY] > before[KEY]
            # The woken revision ticks again (it is starting); the others still sleep.
            assert {k: v for k, v in bus.reads.items() if k != KEY} == {
                k: v for k, v in before.items() if k != KEY
            }
    finally:
        await bus.aclose()


async def test_a_spec_change_wakes_a_resting_revision() -> None:
    bus, actuator, scraper = CountingBus(), FakeActuator(), FakeScraper()
    await bus.publish_services([service(revision())])
    a = scaler(bus, actuator, scraper, tick_s=3600)  # only a wake can explain a tick
    try:
        async with a.running():
            await eventually(lambda: bus.reads.get(KEY) == 1)
            await bus.publish_services([service(revision(min_scale=1))])
            await eventually(lambda: len(actuator.started()) == 1)
    finally:
        await bus.aclose()


async def test_a_revision_keeps_ticking_while_requests_are_held() -> None:
    bus, actuator, scraper = CountingBus(), FakeActuator(), FakeScraper()
    await bus.publish_services([service(revision())])
    a = scaler(bus, actuator, scraper, tick_s=0.01)
    try:
        async with a.running():
            await bus.publish_stats([ActivatorStats("a1", KEY, 1, 0, time.time())])
            await bus.poke(KEY)
            await eventually(lambda: len(actuator.started()) == 1)
            (rid,) = actuator.started()
            actuator.fail(KEY, rid, "boom")
            # Failed, backing off, a request still held: it must come back to retry by itself.
            await eventually(lambda: len(actuator.started()) == 2)
    finally:
        await bus.aclose()


async def test_gaining_leadership_wakes_resting_revisions() -> None:
    bus, actuator, scraper = CountingBus(), FakeActuator(), FakeScraper()
    await bus.publish_services([service(revision())])
    leader = Leadership(False)
    a = scaler(bus, actuator, scraper, tick_s=0.01, leader=leader)
    try:
        async with a.running():
            await eventually(lambda: bus.reads.get(KEY) == 1)
            await settle()
            assert bus.reads[KEY] == 1
            assert await endpoints(bus) is None
            leader.leading = True
            # Taking over republishes every revision's endpoints, resting ones included.
            await eventually(lambda: bus.reads[KEY] > 1)

            async def published() -> bool:
                return await endpoints(bus) is not None

            await eventually(published)
    finally:
        await bus.aclose()


class Monotonic:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_a_request_after_a_quiet_spell_counts_as_an_arrival() -> None:
    """Activators stop reporting a quiet revision; its stats expire. The next request one of them
    accepts (and finishes between two ticks) must still count, or a busy-but-fast revision reads
    zero load and is scaled to zero under its traffic."""
    stats_clock = Monotonic()
    bus, actuator, scraper = MemoryBus(clock=stats_clock), FakeActuator(), FakeScraper()
    await bus.publish_services([service(revision(min_scale=1))])
    a = scaler(bus, actuator, scraper, tick_s=0.01)

    def observed() -> float:
        labels = {"namespace": "default", "revision": "chat-00001"}
        value = a.registry.get_sample_value("torpor_autoscaler_observed_concurrency", labels)
        return value or 0.0

    try:
        async with a.running():
            await eventually(lambda: len(actuator.started()) == 1)
            actuator.make_ready(KEY)
            await bus.publish_stats([ActivatorStats("a1", KEY, 0, 0, time.time(), 5)])
            await settle()
            stats_clock.now += 60  # a1 went quiet: its stats expired
            await settle()
            assert observed() == 0.0
            await bus.publish_stats([ActivatorStats("a1", KEY, 0, 0, time.time(), 6)])
            await eventually(lambda: observed() > 0.0)
    finally:
        await bus.aclose()
