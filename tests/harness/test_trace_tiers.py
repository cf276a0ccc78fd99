"""The keep-alive simulator across tiers and the clairvoyant oracle (harness/trace/tiers.py)."""

from __future__ import annotations

import pytest

from harness.trace.azure import TraceRequest
from harness.trace.replica import ReplicaModel
from harness.trace.tiers import FixedKeepAlive, TierModel, oracle, simulate_service

MODEL = ReplicaModel(
    decode=((1.0, 100.0),),
    prefill_s_per_token=0.0,
    max_num_seqs=8,
    kv_blocks=100,
    block_tokens=16,
    token_budget=1000,
    cold_start_s=(10.0,),
)
TIERS = TierModel(cold_start_s=(10.0,), standby_start_s=(4.0,), wake_s=(0.1,), target_s=2.0)


def reqs(*at: float) -> list[TraceRequest]:
    return [TraceRequest(a, 1, 100) for a in at]  # 1 s of service each


def test_first_request_is_counted_apart_and_a_short_gap_finds_the_replica_ready() -> None:
    run = simulate_service(FixedKeepAlive("k", 30.0), reqs(0, 20), MODEL, TIERS, end_s=20)
    assert run.first_requests == 1 and run.first_requests_over_target == 1
    assert run.over_target == 0 and run.found == {"ready": 1}
    # 10 s cold start, 1 s busy, 9 s idle ready, 1 s busy.
    assert run.accelerator_s == pytest.approx(21.0)


def test_a_gap_past_the_keep_alive_pays_a_cold_start_and_an_over_target_wait() -> None:
    run = simulate_service(FixedKeepAlive("k", 5.0), reqs(0, 100), MODEL, TIERS, end_s=100)
    assert run.over_target == 1 and run.found == {"zero": 1} and run.cold_starts == 1
    assert run.accelerator_s == pytest.approx(10 + 1 + 5 + 10 + 1)


def test_requests_held_behind_a_start_wait_for_it() -> None:
    run = simulate_service(FixedKeepAlive("k", 5.0), reqs(0, 3), MODEL, TIERS, end_s=3)
    assert run.found == {"held": 1} and run.over_target == 1


def test_the_oracle_suspends_or_drops_whichever_is_cheaper_and_never_waits() -> None:
    services = [reqs(0, 30, 2000)]
    curve = oracle(services, MODEL, TIERS, end_s=2000, rate=0.1)
    run = curve.run
    assert run.over_target == 0 and run.first_requests_over_target == 1
    # Idle 19 s (after the 10 s cold start and 1 s of work): suspend; 1969 s: drop, restart.
    assert run.found == {"suspended": 1, "zero": 1}
    assert run.suspended_s == pytest.approx(19 - 0.1)
    assert run.suspended_peak() == 1
    # Allowing one wait saves nothing here: both gaps already cost no more than a cold start.
    assert curve.cost_at(1) == pytest.approx(curve.cost_at(0))


def test_without_tiers_the_oracle_stays_ready_through_gaps_shorter_than_a_cold_start() -> None:
    curve = oracle([reqs(0, 20)], MODEL, TIERS, end_s=20, rate=0.1, use_tiers=False)
    assert curve.run.found == {"ready": 1} and curve.run.suspended_s == 0.0


def test_the_peak_of_suspended_replicas_is_what_a_node_budget_must_hold() -> None:
    from harness.trace.tiers import TierRun

    run = TierRun("t", suspended_spells=[(0.0, 10.0), (5.0, 15.0), (20.0, 30.0)])
    assert run.suspended_peak() == 2


def test_a_node_budget_evicts_suspended_replicas_and_a_large_one_changes_nothing() -> None:
    from autoscaler.keepalive import KeepAliveSpec
    from harness.trace.tiers import LearnedKeepAlive, simulate_all, simulate_budget

    spec = KeepAliveSpec(cold_start_s=10.0, standby_start_s=4.0, wake_s=0.1, min_gaps=1)
    services = [reqs(0, 40, 80, 120), reqs(1, 41, 81, 121), reqs(2, 42, 82, 122)]
    free = simulate_all(lambda: LearnedKeepAlive("t", spec), services, MODEL, TIERS, 130, "t")
    big = simulate_budget(spec, services, MODEL, TIERS, 130, "t", budget=10)
    assert (big.over_target, big.accelerator_s, big.suspended_s) == pytest.approx(
        (free.over_target, free.accelerator_s, free.suspended_s)
    )
    assert free.suspended_peak() == 3
    one = simulate_budget(spec, services, MODEL, TIERS, 130, "t", budget=1)
    assert one.suspended_peak() == 1
    assert one.found.get("standby", 0) + one.found.get("zero", 0) > 0
