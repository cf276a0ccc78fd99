"""Adapter placement (``autoscaler.adapters.plan_adapters``): pure, ``now`` passed in."""

from __future__ import annotations

from autoscaler.adapters import AdapterReplica, adapter_rows, plan_adapters, with_adapters
from torpor.bus.base import Endpoint, RevisionEndpoints
from torpor.spec import AdapterSpec, LoraSpec


def r(rid: str, *loaded: str, overloaded: bool = False, work: float = 0.0) -> AdapterReplica:
    return AdapterReplica(rid, frozenset(loaded), overloaded, work)


def plan(replicas, wanted=(), last_used=None, max_loras=2, now=100.0):  # type: ignore[no-untyped-def]
    return plan_adapters(replicas, set(wanted), last_used or {}, max_loras=max_loras,
                         idle_window_s=10.0, now=now)


def test_a_wanted_adapter_is_loaded_once_on_the_least_loaded_replica() -> None:
    p = plan([r("a", work=3), r("b", work=1)], wanted={"x"})
    assert p.loads == (("b", "x"),) and p.unloads == ()


def test_nothing_to_do_when_a_holder_has_room_or_no_replica_serves() -> None:
    assert plan([r("a", "x"), r("b")], wanted={"x"}, last_used={"x": 99}).loads == ()
    assert plan([], wanted={"x"}).loads == ()  # at zero: the base starts first


def test_an_overloaded_holder_gets_the_adapter_loaded_on_another_replica() -> None:
    p = plan([r("a", "x", overloaded=True), r("b")], wanted={"x"}, last_used={"x": 99})
    assert p.loads == (("b", "x"),)


def test_idle_adapters_are_unloaded_after_their_window_unless_wanted() -> None:
    p = plan([r("a", "x", "y")], wanted={"y"}, last_used={"x": 89.0, "y": 80.0})
    assert p.unloads == (("a", "x"),)
    assert plan([r("a", "x")], last_used={"x": 95.0}).unloads == ()


def test_a_full_replica_evicts_its_least_recently_used_adapter_nobody_waits_for() -> None:
    p = plan([r("a", "x", "y")], wanted={"z"}, last_used={"x": 99.0, "y": 98.0}, max_loras=2)
    assert p.unloads == (("a", "y"),) and p.loads == (("a", "z"),)
    # Everything wanted: no eviction, the request waits.
    p = plan([r("a", "x", "y")], wanted={"x", "y", "z"}, last_used={"x": 99, "y": 99})
    assert p.loads == () and p.unloads == ()


def test_never_more_than_max_loras_per_replica() -> None:
    p = plan([r("a"), r("b")], wanted={"x", "y", "z"}, max_loras=1)
    assert len(p.loads) == 2 and len({rid for rid, _ in p.loads}) == 2


def test_endpoints_and_status_rows_carry_the_adapters() -> None:
    message = RevisionEndpoints("ns/r", (Endpoint("a", "http://a"), Endpoint("b", "http://b")))
    out = with_adapters(message, {"a": frozenset({"y", "x"})})
    assert [e.adapters for e in out.endpoints] == [("x", "y"), ()]
    lora = LoraSpec((AdapterSpec("x", "/m/x"), AdapterSpec("y", "/m/y"), AdapterSpec("z", "/z")))
    rows = adapter_rows(lora, {"a": frozenset({"x"})}, {("b", "y")})
    assert [(s.name, s.state, s.replica_id) for s in rows] == [
        ("x", "loaded", "a"), ("y", "loading", "b"), ("z", "idle", None)
    ]
