"""Adapter placement (``autoscaler.adapters.plan_adapters``): pure, ``now`` passed in."""

from __future__ import annotations

import pytest

from autoscaler.adapters import (
    AdapterReplica,
    adapter_rows,
    adopted,
    held_back,
    plan_adapters,
    with_adapters,
)
from autoscaler.lora_client import LoraError, adapters_listed
from torpor import codec
from torpor.bus.base import AdapterFailure, Endpoint, RevisionEndpoints
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


def test_adapters_the_spec_no_longer_declares_are_unloaded_at_once() -> None:
    p = plan_adapters([r("a", "x", "gone")], {"gone"}, {"x": 99.0, "gone": 99.0}, max_loras=2,
                      idle_window_s=10.0, now=100.0, declared={"x"})
    assert p.unloads == (("a", "gone"),)


def test_adapters_found_on_a_replica_get_an_idle_window_from_then() -> None:
    out = adopted({"y": 50.0}, {"x", "y", "gone"}, {"x", "y"}, now=100.0)
    assert out == {"x": 100.0, "y": 50.0}  # a known last use is kept; undeclared not stamped
    assert plan([r("a", "x")], last_used=out, now=105.0).unloads == ()
    assert plan([r("a", "x")], last_used=out, now=110.0).unloads == (("a", "x"),)


def test_a_failed_adapter_is_held_back_until_a_request_pokes_after_the_failure() -> None:
    assert held_back({"x": 100.0}, {}) == {"x"}
    assert held_back({"x": 100.0}, {"x": 99.0}) == {"x"}  # that poke's requests got the error
    assert held_back({"x": 100.0}, {"x": 101.0}) == frozenset()


def test_failures_are_published_and_shown() -> None:
    message = RevisionEndpoints("ns/r", (Endpoint("a", "http://a"),))
    out = with_adapters(message, {}, {"x": "400 bad adapter"})
    assert out.adapter_failures == (AdapterFailure("x", "400 bad adapter"),)
    assert codec.loads(RevisionEndpoints, codec.dumps(out)) == out
    old = codec.loads(RevisionEndpoints, '{"revision": "ns/r", "endpoints": [], "version": 3}')
    assert old.adapter_failures == ()  # data published before the field decodes
    lora = LoraSpec((AdapterSpec("x", "/m/x"),))
    [row] = adapter_rows(lora, {}, (), {"x": "400 bad adapter"})
    assert (row.state, row.reason) == ("failed", "400 bad adapter")


def test_vllm_s_model_list_names_the_loaded_adapters_by_their_parent() -> None:
    # vLLM's ModelList (entrypoints/openai/models/serving.py): the base's card has no parent.
    body = {
        "object": "list",
        "data": [
            {"id": "tiny", "object": "model", "root": "/models/tiny", "parent": None},
            {"id": "sql", "object": "model", "root": "/models/sql", "parent": "tiny"},
        ],
    }
    assert adapters_listed(body) == {"sql"}
    with pytest.raises(LoraError):
        adapters_listed({"error": "nope"})
