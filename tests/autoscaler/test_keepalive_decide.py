"""The learned keep-alive inside ``decide`` (issue 24), and its annotations."""

from __future__ import annotations

from dataclasses import replace

import pytest

from autoscaler.decide import (
    Decision,
    Observation,
    ReplicaLoad,
    ScalerState,
    decide,
    keepalive_spec,
)
from autoscaler.keepalive import KeepAliveState
from autoscaler.loop import at_rest
from torpor.manifest.annotations import parse_template_annotations
from torpor.manifest.errors import ManifestError
from torpor.spec import AutoscalingSpec

SPEC = AutoscalingSpec(metric="llm", initial_scale=0, window_s=6, keepalive_min_gaps=4)
BUSY = Observation(ready=(ReplicaLoad("r", running=1, waiting=0, kv_cache_usage=0.1),), arrivals=1)
IDLE = Observation(ready=(ReplicaLoad("r", running=0, waiting=0, kv_cache_usage=0.0),))
AT_ZERO = Observation()


def learn(spec: AutoscalingSpec, gap_s: float, n: int) -> tuple[ScalerState, float]:
    """``n`` requests ``gap_s`` apart, a 2 s tick, the replica kept throughout."""
    state, now = ScalerState(), 0.0
    for _ in range(n + 1):
        _, state = decide(spec, BUSY, state, now)
        now += 2.0
        end = now + gap_s
        while now < end:
            _, state = decide(spec, IDLE, state, now)
            now += 2.0
    return state, now


def test_without_a_history_knatives_rule_decides() -> None:
    state, now = ScalerState(), 0.0
    _, state = decide(SPEC, BUSY, state, now)
    out = []
    for t in range(2, 80, 2):
        d, state = decide(SPEC, IDLE, state, float(t))
        out.append((t, d.desired))
    zero_at = next(t for t, n in out if n == 0)
    assert zero_at >= 6 + 30  # the window, then the 30 s grace
    assert state.keepalive.idle_since is not None


def test_long_regular_gaps_drop_the_replica_at_once_and_pre_warm_before_the_next() -> None:
    state, now = learn(SPEC, 300.0, 8)
    assert state.keepalive.gaps.n >= 4
    d, state = decide(SPEC, BUSY, state, now)
    t0 = now + 2
    d, state = decide(SPEC, IDLE, state, t0)
    d, state = decide(SPEC, IDLE, state, t0 + 10)
    assert d.desired == 0 and "keep-alive" in d.reason  # Knative's rule would hold 36 s
    assert d.keepalive_over
    d, state = decide(SPEC, AT_ZERO, state, t0 + 100)
    assert d.desired == 0 and d.prewarm_pending
    assert not at_rest(d, AT_ZERO, replicas=0, draining=0)  # the loop keeps ticking for it
    d, state = decide(SPEC, AT_ZERO, state, t0 + 290)
    assert d.desired == 1 and d.reason.startswith("pre-warm")


def test_gaps_shorter_than_a_cold_start_keep_the_last_replica_through_them() -> None:
    state, now = learn(SPEC, 12.0, 8)
    _, state = decide(SPEC, BUSY, state, now)
    for t in range(2, 14, 2):
        d, state = decide(SPEC, IDLE, state, now + t)
        assert d.desired == 1, t


def test_fixed_turns_it_off_and_min_scale_still_holds() -> None:
    fixed = replace(SPEC, keepalive="fixed")
    state, now = learn(fixed, 300.0, 8)
    assert state.keepalive == KeepAliveState()
    floor = replace(SPEC, min_scale=1)
    state, now = learn(floor, 300.0, 8)
    d, _ = decide(floor, IDLE, state, now + 100)
    assert d.desired == 1


def test_suspension_makes_the_suspended_tier_the_cover_tier() -> None:
    assert not keepalive_spec(SPEC).tiers
    k = keepalive_spec(replace(SPEC, suspend_after_s=5.0))
    assert k.tiers and k.ready_hold_s == 5.0


def test_annotations_set_every_knob() -> None:
    a = parse_template_annotations(
        {
            "torpor.dev/keepalive": "fixed",
            "torpor.dev/keepalive-wait-value": "2m",
            "torpor.dev/keepalive-cold-start": "40s",
            "torpor.dev/keepalive-prewarm": "false",
            "torpor.dev/keepalive-min-gaps": "20",
        },
        "spec.template.metadata.annotations",
    ).autoscaling
    assert a.keepalive == "fixed" and a.keepalive_wait_value_s == 120.0
    assert a.keepalive_cold_start_s == 40.0 and not a.keepalive_prewarm
    assert a.keepalive_min_gaps == 20
    d = parse_template_annotations({}, "a").autoscaling
    assert d.keepalive == "learned" and d.keepalive_prewarm
    with pytest.raises(ManifestError):
        parse_template_annotations({"torpor.dev/keepalive": "always"}, "a")
    with pytest.raises(ManifestError):
        parse_template_annotations({"torpor.dev/keepalive-prewarm": "yes"}, "a")


def test_a_suspended_last_replica_goes_when_the_learned_cover_ends_not_after_its_window() -> None:
    from autoscaler.actuator import Phase, Replica
    from autoscaler.plan import StartRecord, Suspension, plan, suspended_load

    frozen = Replica("r", "default/chat-00001", Phase.SUSPENDED, "http://r", 0.0, suspended_at=99.0)
    obs = Observation(ready=(suspended_load("r"),))
    sus = Suspension(after_s=10.0, stop_after_s=300.0)
    over = Decision(desired=0, reason="keep-alive over", keepalive_over=True)
    assert plan(over, obs, [frozen], (), StartRecord(), 100.0, sus).stop == ("r",)
    rule = Decision(desired=0, reason="idle")
    assert plan(rule, obs, [frozen], (), StartRecord(), 100.0, sus).stop == ()


def test_decide_drops_the_last_replica_where_the_policys_schedule_says() -> None:
    from autoscaler.keepalive import schedule

    spec = replace(SPEC, keepalive_prewarm=False)
    rng_gaps = [20.0, 30.0, 24.0, 40.0, 26.0, 34.0, 22.0, 38.0, 28.0]
    state, now = ScalerState(), 0.0
    for gap in rng_gaps:
        _, state = decide(spec, BUSY, state, now)
        now += 2.0
        end = now + gap
        while now < end:
            _, state = decide(spec, IDLE, state, now)
            now += 2.0
    _, state = decide(spec, BUSY, state, now)
    keep = schedule(keepalive_spec(spec), state.keepalive.gaps).keep_s
    start = now + 2.0
    t = start
    while True:
        d, state = decide(spec, IDLE, state, t)
        if d.desired == 0:
            break
        t += 2.0
    assert keep <= t - start < keep + 2.0  # the first tick past the schedule's keep-alive
