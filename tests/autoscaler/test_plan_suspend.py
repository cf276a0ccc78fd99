"""Table tests of the suspended tier in the pure plan (issue 17): when a replica is frozen, when
it is woken, when it is stopped, and what the activators and ``torpor status`` are told."""

from __future__ import annotations

import pytest

from autoscaler.actuator import Phase, Replica
from autoscaler.decide import Decision, Observation, ReplicaLoad
from autoscaler.plan import (
    Plan,
    StartRecord,
    Suspension,
    announcement,
    plan,
    revision_state,
    suspended_load,
    track_idle,
)

KEY = "default/chat-00001"
NOW = 1000.0
ON = Suspension(after_s=10.0, stop_after_s=60.0)


def ready(rid: str) -> Replica:
    return Replica(rid, KEY, Phase.READY, f"http://{rid}", 0.0)


def frozen(rid: str, at: float = NOW - 5) -> Replica:
    return Replica(rid, KEY, Phase.SUSPENDED, f"http://{rid}", 0.0, suspended_at=at)


def planned(
    desired: int,
    replicas: list[Replica],
    *,
    work: dict[str, float | None] | None = None,
    idle_for: float = 0.0,
    suspension: Suspension = ON,
    queued: int = 0,
    in_flight: int = 0,
    poked: bool = False,
) -> Plan:
    """``replicas`` as the loop feeds them: ready ones with their work, suspended ones as
    ``suspended_load``; every ready replica idle for ``idle_for`` seconds."""
    work = work or {}
    loads = tuple(
        suspended_load(r.replica_id)
        if r.phase is Phase.SUSPENDED
        else ReplicaLoad(r.replica_id)
        if work.get(r.replica_id, 0.0) is None
        else ReplicaLoad(r.replica_id, running=work.get(r.replica_id, 0.0), waiting=0.0)
        for r in replicas
    )
    obs = Observation(
        ready=loads, activator_queued=queued, activator_in_flight=in_flight, poked=poked
    )
    idle = {r.replica_id: NOW - idle_for for r in replicas if r.phase is Phase.READY}
    sus = Suspension(suspension.after_s, suspension.stop_after_s, idle)
    return plan(Decision(desired, "test"), obs, replicas, (), StartRecord(), NOW, sus)


@pytest.mark.parametrize(
    ("name", "desired", "replicas", "kwargs", "want"),
    [
        # ready -> suspended after the idle window, and not a moment of work before
        ("idle past the window", 1, [ready("a")], {"idle_for": 10.0}, Plan(suspend=("a",))),
        ("idle, window not yet over", 1, [ready("a")], {"idle_for": 9.9}, Plan()),
        ("off by default", 1, [ready("a")], {"idle_for": 1e6, "suspension": Suspension()}, Plan()),
        ("work on the replica", 1, [ready("a")], {"idle_for": 60, "work": {"a": 1.0}}, Plan()),
        ("scrape failed: busy", 1, [ready("a")], {"idle_for": 60, "work": {"a": None}}, Plan()),
        ("activator in flight", 1, [ready("a")], {"idle_for": 60, "in_flight": 1}, Plan()),
        (
            "only the idle one of two",
            2,
            [ready("a"), ready("b")],
            {"idle_for": 10.0, "work": {"b": 0.0}},
            Plan(suspend=("a", "b")),
        ),
        # a suspended replica is capacity to decide: no cold start beside it, no wake on the
        # window's memory of past load
        ("parked, no work", 1, [frozen("a")], {}, Plan()),
        # a request held with only suspended replicas: wake, never a cold start
        ("held request wakes", 1, [frozen("a")], {"queued": 1}, Plan(resume=("a",))),
        ("poke wakes", 0, [frozen("a")], {"poked": True}, Plan(resume=("a",))),
        (
            "the last frozen wakes first",
            1,
            [frozen("a", NOW - 30), frozen("b", NOW - 5)],
            {"queued": 1},
            Plan(resume=("b",)),
        ),
        # serving replicas busy and decide wants more: wake before cold-starting
        (
            "busy and short of one",
            2,
            [ready("a"), frozen("b")],
            {"work": {"a": 5.0}},
            Plan(resume=("b",)),
        ),
        (
            "busy, wants more than parked",
            3,
            [ready("a"), frozen("b")],
            {"work": {"a": 9.0}},
            Plan(start=1, resume=("b",)),
        ),
        ("busy but enough", 1, [ready("a"), frozen("b")], {"work": {"a": 1.0}}, Plan()),
        # suspended -> stopped after its own window, only once decide does not count on it
        ("stopped past its window", 0, [frozen("a", NOW - 60)], {}, Plan(stop=("a",))),
        ("not yet past its window", 0, [frozen("a", NOW - 59)], {}, Plan()),
        ("min-scale keeps it parked", 1, [frozen("a", NOW - 600)], {}, Plan()),
        # scale-down: parked replicas absorb the excess before a ready one is drained
        ("parked absorbs excess", 1, [ready("a"), frozen("b")], {"work": {"a": 1.0}}, Plan()),
        (
            "to zero: drain the ready one, keep the parked",
            0,
            [ready("a"), frozen("b")],
            {},
            Plan(drain=("a",)),
        ),
    ],
)
def test_suspension_plan(
    name: str, desired: int, replicas: list[Replica], kwargs: dict[str, object], want: Plan
) -> None:
    assert planned(desired, replicas, **kwargs) == want, name  # type: ignore[arg-type]


def test_idle_windows_track_work_and_restart_after_a_wake() -> None:
    obs = Observation(
        ready=(
            ReplicaLoad("idle", running=0.0, waiting=0.0),
            ReplicaLoad("busy", running=2.0, waiting=0.0),
            ReplicaLoad("unknown"),
            suspended_load("parked"),
        )
    )
    before = {"idle": 500.0, "busy": 500.0, "unknown": 500.0, "parked": 1.0}
    assert track_idle(before, obs, {"parked"}, NOW) == {
        "idle": 500.0,
        "busy": NOW,
        "unknown": NOW,
    }
    # A replica seen for the first time (just woken, or just ready) starts its window now.
    assert track_idle({}, obs, {"parked"}, NOW)["idle"] == NOW


@pytest.mark.parametrize("traffic", [{"activator_queued": 1}, {"arrivals": 1}])
def test_activator_traffic_keeps_every_replica_awake(traffic: dict[str, int]) -> None:
    obs = Observation(ready=(ReplicaLoad("a", running=0.0, waiting=0.0),), **traffic)  # type: ignore[arg-type]
    assert track_idle({"a": 1.0}, obs, set(), NOW) == {"a": NOW}


def test_suspended_replicas_are_never_published() -> None:
    message = announcement(KEY, [frozen("a")], (), (), StartRecord(last_error="old"))
    assert message.endpoints == ()
    # Withdrawn before freezing (the loop's ``suspending`` set): not published either.
    assert announcement(KEY, [ready("b")], (), {"b"}, StartRecord()).endpoints == ()


@pytest.mark.parametrize(
    ("ready_n", "starting", "suspended", "want"),
    [
        (0, 0, 1, "suspended"),
        (1, 0, 1, "ready"),
        (0, 1, 1, "starting"),
        (0, 0, 0, "scaled-to-zero"),
    ],
)
def test_status_state_with_suspended_replicas(
    ready_n: int, starting: int, suspended: int, want: str
) -> None:
    assert revision_state(StartRecord(), ready_n, starting, suspended)[0] == want
