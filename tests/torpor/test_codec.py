from __future__ import annotations

from torpor import codec
from torpor.bus import CrashLoop, Endpoint, RevisionEndpoints
from torpor.spec import (
    AutoscalingSpec,
    RevisionRef,
    RevisionSpec,
    RuntimeSpec,
    ServiceSpec,
    TrafficTarget,
)


def test_service_round_trips_through_json() -> None:
    rev = RevisionSpec(
        RevisionRef("ns", "a-00001"),
        "a",
        1,
        RuntimeSpec("img", "/m", "name", ("--x", "1"), (("K", "V"),), 8080),
        AutoscalingSpec(min_scale=1, window_s=10),
    )
    svc = ServiceSpec("ns", "a", 1, (rev,), (TrafficTarget("a-00001", 100, "t", True),))
    assert codec.loads(ServiceSpec, codec.dumps(svc)) == svc


def test_optional_and_nested_tuples() -> None:
    eps = RevisionEndpoints("ns/a", (Endpoint("r1", "http://h:1", True),), failure=None, version=3)
    assert codec.loads(RevisionEndpoints, codec.dumps(eps)) == eps


def test_missing_field_takes_its_default() -> None:
    data = codec.to_jsonable(AutoscalingSpec())
    del data["kv_cache_target"]
    assert codec.from_jsonable(AutoscalingSpec, data) == AutoscalingSpec()


def test_int_reads_as_float() -> None:
    assert codec.from_jsonable(AutoscalingSpec, {"window_s": 6}).window_s == 6.0


def test_a_crash_loop_round_trips_and_old_messages_read_without_one() -> None:
    crash = CrashLoop(3, 1765141445.5, "exited with code 0 (IndexError)", 20.0, served=True)
    eps = RevisionEndpoints("ns/a", (), "exited with code 0\ntail", 4, crash_loop=crash)
    assert codec.loads(RevisionEndpoints, codec.dumps(eps)) == eps
    # Written by an autoscaler that predates crash loops: none.
    old = codec.to_jsonable(eps)
    del old["crash_loop"]
    assert codec.from_jsonable(RevisionEndpoints, old).crash_loop is None
    # Read by an activator that predates them: the field is skipped, the failure stays.
    assert "crash_loop" in codec.to_jsonable(eps)
    assert codec.from_jsonable(RevisionEndpoints, codec.to_jsonable(eps)).failure == eps.failure
