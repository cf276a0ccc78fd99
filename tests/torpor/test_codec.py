from __future__ import annotations

from torpor import codec
from torpor.bus import Endpoint, RevisionEndpoints
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
