"""A replica that dies after serving is replaced; its death is not the revision's start failure.

Publishing it as a failure would answer every request held at zero with an error at once, while
a replacement is on its way (found by tests/faults: a replica killed mid-stream turned the next
minute of requests into ``503 revision_failed``).
"""

from __future__ import annotations

from tests.autoscaler.fakes import FakeActuator, FakeScraper, eventually, revision, service
from tests.autoscaler.test_loop import KEY, RecordingBus, endpoints, scaler, settle
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
