"""The leadership gate: a standby autoscaler observes and decides but never publishes or actuates.

Two autoscaler replicas on Kubernetes share one bus and one set of replicas; only the leader may
write. These run one autoscaler against the fake actuator and the memory bus and flip its
``leader`` callable by hand, as a Lease would.
"""

from __future__ import annotations

from tests.autoscaler.fakes import FakeActuator, FakeScraper, eventually, revision, service
from tests.autoscaler.test_loop import KEY, RecordingBus, endpoints, scaler, settle
from torpor.bus import ActivatorStats, RevisionEndpoints


class Leadership:
    def __init__(self, leading: bool) -> None:
        self.leading = leading

    def __call__(self) -> bool:
        return self.leading


def writes(actuator: FakeActuator) -> list[tuple[str, str]]:
    """Every start, stop, forget and endpoint publication so far (RecordingBus logs the last)."""
    return list(actuator.calls)


async def test_a_standby_observes_but_never_starts_or_publishes() -> None:
    actuator, scraper = FakeActuator(), FakeScraper()
    bus = RecordingBus(actuator.calls)
    rev = revision(min_scale=1)
    await bus.publish_services([service(rev)])
    leader = Leadership(False)
    a = scaler(bus, actuator, scraper, leader=leader)
    try:
        async with a.running():
            await bus.poke(KEY)
            await eventually(lambda: a.statuses()[0].desired_replicas == 1)
            await settle()
            assert writes(actuator) == []
            assert await endpoints(bus) is None
            # Gaining leadership: it acts on what it already decided.
            leader.leading = True
            await eventually(lambda: len(actuator.started()) == 1)
    finally:
        await bus.aclose()


async def test_gaining_leadership_republishes_endpoints() -> None:
    actuator, scraper = FakeActuator(), FakeScraper()
    bus = RecordingBus(actuator.calls)
    rev = revision(min_scale=1)
    await actuator.start(rev, 1)
    ready = actuator.make_ready(KEY)
    await bus.publish_services([service(rev)])
    leader = Leadership(True)
    a = scaler(bus, actuator, scraper, leader=leader)
    try:
        async with a.running():
            await eventually(lambda: ("serving", ready.replica_id) in actuator.calls)
            first = await endpoints(bus)
            assert first is not None
            leader.leading = False
            await settle()
            # Meanwhile another leader published something else (or the bus lost it).
            await bus.publish_endpoints(RevisionEndpoints(KEY, ()))
            await settle()
            stale = await endpoints(bus)
            assert stale is not None and stale.endpoints == ()
            leader.leading = True

            async def republished() -> bool:
                e = await endpoints(bus)
                return e is not None and [x.replica_id for x in e.serving] == [ready.replica_id]

            await eventually(republished)
    finally:
        await bus.aclose()


async def test_losing_leadership_while_draining_leaves_the_replica_running() -> None:
    actuator, scraper = FakeActuator(), FakeScraper()
    bus = RecordingBus(actuator.calls)
    rev = revision(
        metric="llm", target=10, target_utilization=1.0, window_s=0.05, scale_to_zero_grace_s=3600
    )
    await actuator.start(rev, 2)
    busy = actuator.make_ready(KEY)
    light = actuator.make_ready(KEY)
    scraper.set(busy.replica_id, running=3)
    scraper.set(light.replica_id, running=2)
    await bus.publish_services([service(rev)])
    leader = Leadership(True)
    a = scaler(bus, actuator, scraper, leader=leader)
    try:
        async with a.running():
            await eventually(lambda: ("draining", light.replica_id) in actuator.calls)
            leader.leading = False
            await eventually(lambda: a.statuses()[0].draining_replicas == 0)
            # Its requests finish, but a standby does not stop it: the new leader decides.
            scraper.set(light.replica_id, running=0)
            await settle()
            assert ("stop", light.replica_id) not in actuator.calls
            assert light.replica_id in {r.replica_id for r in actuator.replicas(KEY)}
    finally:
        await bus.aclose()


async def test_a_standby_neither_stops_failed_replicas_nor_withdraws_removed_revisions() -> None:
    actuator, scraper = FakeActuator(), FakeScraper()
    bus = RecordingBus(actuator.calls)
    rev = revision(min_scale=1)
    await actuator.start(rev, 1)
    rid = actuator.started()[0]
    actuator.fail(KEY, rid, "exited with code 1")
    await bus.publish_services([service(rev)])
    await bus.publish_stats([ActivatorStats("a1", KEY, queued=1, in_flight=0, at=0.0)])
    before = writes(actuator)
    a = scaler(bus, actuator, scraper, leader=Leadership(False))
    try:
        async with a.running():
            await eventually(lambda: len(a.statuses()) == 1)
            await settle()
            await bus.publish_services([])
            await eventually(lambda: a.statuses() == [])
            await settle()
        assert writes(actuator) == before
        assert await endpoints(bus) is None
    finally:
        await bus.aclose()
