"""A replica that dies after serving is replaced; its death is not the revision's start failure.

Publishing it as a failure would answer every request held at zero with an error at once, while
a replacement is on its way (found by tests/faults: a replica killed mid-stream turned the next
minute of requests into ``503 revision_failed``).

Replicas that die before or soon after ready, again and again, are a crash loop: the kubelet's
backoff, published so the activators answer at once (``autoscaler.crashloop``).
"""

from __future__ import annotations

from dataclasses import replace

from tests.autoscaler.fakes import FakeActuator, FakeScraper, eventually, revision, service
from tests.autoscaler.test_loop import (
    KEY,
    FakeClock,
    RecordingBus,
    endpoints,
    scaler,
    settle,
)
from torpor.bus import ActivatorStats


async def test_a_crash_after_ready_is_replaced_without_publishing_a_failure() -> None:
    actuator, scraper = FakeActuator(), FakeScraper()
    bus = RecordingBus(actuator.calls)
    rev = revision(metric="llm", window_s=0.05, scale_to_zero_grace_s=3600)
    await bus.publish_services([service(rev)])
    a = scaler(bus, actuator, scraper)
    try:
        async with a.running():
            await bus.poke(KEY)
            await eventually(lambda: len(actuator.started()) == 1)
            first = actuator.make_ready(KEY)
            scraper.set(first.replica_id, running=1)
            await eventually(lambda: ("serving", first.replica_id) in actuator.calls)
            # Requests are held while it is gone: the activator's stats say so.
            stats = [ActivatorStats("a1", KEY, queued=2, in_flight=0, at=a.clock())]
            await bus.publish_stats(stats)
            actuator.fail(KEY, first.replica_id, "exited with code -9")
            await eventually(lambda: len(actuator.started()) == 2)
            await settle()
            e = await endpoints(bus)
            assert e is not None and e.failure is None, e
            assert a.statuses()[0].state != "failed"
    finally:
        await bus.aclose()


# -- crash loops: replicas that die before or soon after ready, on an injected clock -----------


def line_error(code: int = 0) -> str:
    return f"exited with code {code}\n...the runtime's log tail..."


async def demand(bus: RecordingBus, clock: FakeClock, queued: int = 1) -> None:
    """An activator holds ``queued`` requests for the revision, as of the clock's now."""
    await bus.publish_stats([ActivatorStats("a1", KEY, queued=queued, in_flight=0, at=clock())])


def die(actuator: FakeActuator, rid: str) -> None:
    """The replica's engine died at its first request: the process exited."""
    actuator.fail(KEY, rid, line_error())
    replicas = actuator.live[KEY]
    replicas[rid] = replace(replicas[rid], error_line="IndexError: index out of range in self")


async def test_replicas_that_die_soon_after_ready_back_off_like_the_kubelet() -> None:
    actuator, scraper, clock = FakeActuator(), FakeScraper(), FakeClock()
    bus = RecordingBus(actuator.calls)
    await bus.publish_services([service(revision(scale_to_zero_grace_s=3600))])
    a = scaler(bus, actuator, scraper, clock=clock)
    try:
        async with a.running():
            await demand(bus, clock)
            await bus.poke(KEY)
            await eventually(lambda: len(actuator.started()) == 1)
            first = actuator.make_ready(KEY)
            await eventually(lambda: ("serving", first.replica_id) in actuator.calls)
            clock.now += 5  # dies 5 s after ready: young, it counts
            die(actuator, first.replica_id)
            # The first death is replaced at once, and nothing is published for it: the
            # requests held meanwhile wait for the replacement.
            await eventually(lambda: len(actuator.started()) == 2)
            e = await endpoints(bus)
            assert e is not None and e.crash_loop is None and e.failure is None
            assert a.statuses()[0].state == "starting"

            second = actuator.make_ready(KEY)
            await eventually(lambda: ("serving", second.replica_id) in actuator.calls)
            clock.now += 5
            die(actuator, second.replica_id)

            async def looping() -> bool:
                e = await endpoints(bus)
                return e is not None and e.crash_loop is not None

            await eventually(looping)
            e = await endpoints(bus)
            assert e is not None and e.crash_loop is not None
            assert (e.crash_loop.restarts, e.crash_loop.retry_at) == (2, clock.now + 10)
            assert e.crash_loop.reason == "exited with code 0 (IndexError)" and e.crash_loop.served
            status = a.statuses()[0]
            assert status.state == "crash-loop"
            assert status.reason == "IndexError: index out of range in self"
            assert status.crash_loop is not None
            assert status.crash_loop.restarts == 2 and status.crash_loop.backing_off
            assert status.crash_loop.next_try_at == clock.now + 10
            assert status.crash_loop.last_error == "IndexError: index out of range in self"

            # Backing off: nothing starts while the clock stands still, requests held or not.
            await demand(bus, clock)
            await bus.poke(KEY)
            await settle()
            assert len(actuator.started()) == 2
            clock.now += 9.9
            await demand(bus, clock)
            await settle()
            assert len(actuator.started()) == 2

            # The wait is over: a held request starts the next try, which fails to start.
            clock.now += 0.1
            await demand(bus, clock)
            await bus.poke(KEY)
            await eventually(lambda: len(actuator.started()) == 3)
            assert not a.statuses()[0].crash_loop.backing_off  # type: ignore[union-attr]
            actuator.fail(KEY, actuator.started()[-1], "exited with code 1\nValueError: bad")

            async def third() -> bool:
                e = await endpoints(bus)
                return e is not None and e.crash_loop is not None and e.crash_loop.restarts == 3

            await eventually(third)
            e = await endpoints(bus)
            assert e is not None and e.crash_loop is not None
            assert e.crash_loop.retry_at == clock.now + 20 and not e.crash_loop.served
            clock.now += 19
            await demand(bus, clock)
            await settle()
            assert len(actuator.started()) == 3
    finally:
        await bus.aclose()


async def test_a_replica_that_serves_ten_minutes_ends_the_crash_loop() -> None:
    actuator, scraper, clock = FakeActuator(), FakeScraper(), FakeClock()
    bus = RecordingBus(actuator.calls)
    await bus.publish_services([service(revision(min_scale=1))])
    a = scaler(bus, actuator, scraper, clock=clock)
    try:
        async with a.running():
            for n in (1, 2):
                await eventually(lambda n=n: len(actuator.started()) == n)  # type: ignore[misc]
                actuator.fail(KEY, actuator.started()[-1], line_error(3))
            await eventually(lambda: a.statuses()[0].state == "crash-loop")
            # min-scale wants one: the loop itself starts the next try once the wait is over.
            clock.now += 10
            await eventually(lambda: len(actuator.started()) == 3)
            r = actuator.make_ready(KEY)
            await eventually(lambda: a.statuses()[0].state == "ready")

            async def served() -> bool:
                e = await endpoints(bus)
                return e is not None and e.crash_loop is None and bool(e.serving)

            await eventually(served)
            clock.now += 600  # ten stable minutes: the count starts over
            await settle()
            # A death now is a single crash: replaced at once, nothing published.
            die(actuator, r.replica_id)
            await eventually(lambda: len(actuator.started()) == 4)
            await settle()
            e = await endpoints(bus)
            assert e is not None and e.crash_loop is None and e.failure is None
            assert a.statuses()[0].state == "starting"
    finally:
        await bus.aclose()


async def test_a_poke_while_backing_off_republishes_and_a_new_spec_starts_at_once() -> None:
    actuator, scraper, clock = FakeActuator(), FakeScraper(), FakeClock()
    bus = RecordingBus(actuator.calls)
    await bus.publish_services([service(revision())])
    a = scaler(bus, actuator, scraper, clock=clock, tick_s=3600)
    try:
        async with a.running():
            for n in (1, 2):
                await bus.poke(KEY)
                await eventually(lambda n=n: len(actuator.started()) == n)  # type: ignore[misc]
                actuator.fail(KEY, actuator.started()[-1], line_error(1))
                await bus.poke(KEY)  # the long tick: the poke makes the loop look
            await eventually(lambda: a.statuses()[0].state == "crash-loop")
            before = await endpoints(bus)
            assert before is not None and before.crash_loop is not None
            await bus.poke(KEY)

            async def republished() -> bool:
                e = await endpoints(bus)
                return e is not None and e.version > before.version and e.crash_loop is not None

            await eventually(republished)
            assert len(actuator.started()) == 2
            # A new spec is a fresh chance: its first start is at once.
            await bus.publish_services([service(revision(target=8))])
            await bus.poke(KEY)
            await eventually(lambda: len(actuator.started()) == 3)
    finally:
        await bus.aclose()


async def test_a_start_failure_before_the_activators_report_still_gets_its_retry() -> None:
    """A replica that fails within a moment of the poke that started it, before any activator
    has reported the request held for it: the loop must not rest (it would sleep until a poke
    that never comes, the activator having poked once already) but look again once the
    activators report, and start the retry (found by tests/faults: the request waited out its
    whole timeout)."""
    actuator, scraper, clock = FakeActuator(), FakeScraper(), FakeClock()
    bus = RecordingBus(actuator.calls)
    await bus.publish_services([service(revision())])
    a = scaler(bus, actuator, scraper, clock=clock)
    try:
        async with a.running():
            await bus.poke(KEY)  # no stats yet: the activator reports once a second
            await eventually(lambda: len(actuator.started()) == 1)
            actuator.fail(KEY, actuator.started()[0], "exited with code 2\nno such model")
            await settle()
            clock.now += 1.0  # the activator's first report: the request is still held
            await demand(bus, clock)
            await eventually(lambda: len(actuator.started()) == 2)
            e = await endpoints(bus)
            assert e is not None and e.crash_loop is None  # one death: replaced at once
    finally:
        await bus.aclose()


async def test_young_replicas_that_served_requests_are_replaced_without_a_crash_loop() -> None:
    """A replica killed (or run out of memory) under load soon after it became ready has served:
    vLLM counted finished requests on it. Its death is not a crash loop's, however young, so two
    in a row answer no one with 503 (found by tests/faults: an engine killed twice in a minute)."""
    actuator, scraper, clock = FakeActuator(), FakeScraper(), FakeClock()
    bus = RecordingBus(actuator.calls)
    await bus.publish_services([service(revision(scale_to_zero_grace_s=3600))])
    a = scaler(bus, actuator, scraper, clock=clock)
    try:
        async with a.running():
            await demand(bus, clock)
            await bus.poke(KEY)
            for n in (1, 2, 3):
                await eventually(lambda n=n: len(actuator.started()) == n)  # type: ignore[misc]
                if n == 3:
                    break
                replica = actuator.make_ready(KEY)
                scraper.set(replica.replica_id, running=1, completed=5)
                await eventually(lambda r=replica: ("serving", r.replica_id) in actuator.calls)  # type: ignore[misc]
                await settle()  # a tick scrapes it: it has finished requests
                clock.now += 5
                await demand(bus, clock)
                die(actuator, replica.replica_id)
            e = await endpoints(bus)
            assert e is not None and e.crash_loop is None and e.failure is None
            assert a.statuses()[0].state != "crash-loop"
    finally:
        await bus.aclose()
