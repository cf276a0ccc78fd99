"""The keep-alive policy across tiers (autoscaler/keepalive.py): pure, from its gap history."""

from __future__ import annotations

import json
import random

import pytest

from autoscaler.keepalive import (
    GapModel,
    KeepAliveSpec,
    KeepAliveState,
    Tier,
    evict_order,
    ready_hold,
    schedule,
    step,
)

SPEC = KeepAliveSpec(cold_start_s=17.0, wait_value_s=60.0, suspend_rate=0.1, wake_s=0.1)


def model_of(spec: KeepAliveSpec, gaps: list[float]) -> GapModel:
    m = GapModel()
    for g in gaps:
        m = m.observe(spec, g)
    return m


def test_without_history_the_cover_tier_is_kept_to_the_rent_or_buy_break_even() -> None:
    s = schedule(SPEC, GapModel())
    assert not s.learned
    assert s.keep_s == pytest.approx(ready_hold(SPEC) + (17.0 + 60.0) / 0.1)
    assert s.at(0.0)[0] is Tier.READY
    assert s.at(5.0)[0] is Tier.SUSPENDED
    assert s.at(s.keep_s + 1)[0] is Tier.STANDBY
    assert s.at(1e9)[0] is Tier.ZERO


def test_without_tiers_it_is_ready_then_zero_and_the_break_even_is_ten_times_shorter() -> None:
    spec = KeepAliveSpec(tiers=False, cold_start_s=17.0, wait_value_s=60.0)
    s = schedule(spec, GapModel())
    assert [t for _, t in s.phases] == [Tier.READY, Tier.ZERO]
    assert s.keep_s == pytest.approx(77.0)


def test_short_gaps_are_covered_and_the_unseen_tail_gets_rent_or_buy() -> None:
    rng = random.Random(3)
    gaps = [rng.uniform(5, 40) for _ in range(200)]
    plain = KeepAliveSpec(tiers=False, tail_rent_or_buy=False)
    s = schedule(plain, model_of(plain, gaps))
    assert s.learned
    assert 40 <= s.keep_s <= 60  # just past the observed gaps (+10% margin), not the fallback
    assert s.at(30)[0] is Tier.READY and s.at(s.keep_s + 1)[0] is Tier.ZERO
    # Every gap seen is covered, so nothing is known of longer ones: rent-or-buy for those.
    tail = KeepAliveSpec(tiers=False)
    assert schedule(tail, model_of(tail, gaps)).keep_s == pytest.approx(17.0 + 60.0)


def test_gaps_not_worth_covering_are_not_paid_for() -> None:
    spec = KeepAliveSpec(tiers=False)
    gaps = [10.0] * 90 + [3000.0] * 10  # a tenth of the gaps are long: covering them costs more
    s = schedule(spec, model_of(spec, gaps))
    assert s.keep_s < 77.0


def test_a_higher_price_of_a_wait_never_keeps_the_replica_for_less() -> None:
    rng = random.Random(5)
    gaps = [rng.expovariate(1 / 120) for _ in range(300)]
    keeps = []
    for wv in (0.0, 30.0, 120.0, 600.0):
        spec = KeepAliveSpec(tiers=False, wait_value_s=wv)
        keeps.append(schedule(spec, model_of(spec, gaps)).keep_s)
    assert keeps == sorted(keeps)
    assert keeps[0] < keeps[-1]


def test_long_predictable_gaps_drop_at_once_and_pre_warm_before_the_next_request() -> None:
    spec = KeepAliveSpec(tiers=False)
    gaps = [600.0 + (i % 10) for i in range(100)]
    s = schedule(spec, model_of(spec, gaps))
    assert s.prewarm_at_s is not None and 590 <= s.prewarm_at_s <= 600
    assert s.at(10)[0] is Tier.ZERO
    tier, end = s.at(s.prewarm_at_s - 5)
    assert tier is Tier.STARTING and end == pytest.approx(s.prewarm_at_s)
    assert s.at(s.prewarm_at_s + 1)[0] is Tier.READY
    no_prewarm = schedule(KeepAliveSpec(tiers=False, prewarm=False), model_of(spec, gaps))
    assert no_prewarm.prewarm_at_s is None


def test_unrepresentative_history_falls_back() -> None:
    spec = KeepAliveSpec(min_gaps=8, bins=10, bin_s=10.0)
    few = model_of(spec, [5.0] * 7)
    assert not schedule(spec, few).learned
    mostly_beyond = model_of(spec, [5.0] * 4 + [500.0] * 6)
    assert not mostly_beyond.representative(spec)


def test_memory_is_bounded_and_recent_gaps_weigh_more() -> None:
    spec = KeepAliveSpec(max_count=100)
    m = model_of(spec, [5.0] * 1000)
    assert m.n <= 100 and len(m.counts) == 1
    m = model_of(spec, [5.0] * 100 + [200.0] * 100)
    assert m.percentile(spec, 50) >= 200 - spec.bin_s


def test_state_round_trips_through_json() -> None:
    st = KeepAliveState(model_of(SPEC, [1.0, 30.0, 3000.0, 1e6]), idle_since=12.5)
    back = KeepAliveState.from_json(json.loads(json.dumps(st.to_json())))
    assert back == st
    with pytest.raises(ValueError):
        GapModel.from_json({"counts": [[-1, 2]]})


def test_step_records_a_gap_when_work_comes_back_and_reads_the_schedule_when_idle() -> None:
    st = KeepAliveState()
    out, st = step(SPEC, st, busy=True, now=0.0)
    assert out.tier is Tier.READY and st.gaps.n == 0
    out, st = step(SPEC, st, busy=False, now=10.0)
    assert st.idle_since == 10.0 and out.idle_s == 0.0
    out, st = step(SPEC, st, busy=False, now=20.0)
    assert out.idle_s == 10.0 and out.tier is Tier.SUSPENDED
    out, st = step(SPEC, st, busy=True, now=45.0)
    assert st.gaps.n == 1 and st.idle_since is None and st.gaps.percentile(SPEC, 50) == 30.0


def test_a_full_node_evicts_the_suspended_revision_least_likely_to_be_called_soon() -> None:
    busy = model_of(SPEC, [30.0] * 50)  # called every 30 s
    rare = model_of(SPEC, [30.0] * 5 + [3000.0] * 45)
    order = evict_order(SPEC, [("busy", busy, 20.0), ("rare", rare, 20.0)])
    assert order == ["rare", "busy"]
