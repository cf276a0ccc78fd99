"""Table and timeline tests of the pure decision, one group per rule, with a fake ``now``."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

import pytest

from autoscaler.decide import Decision, Observation, ReplicaLoad, ScalerState, decide
from torpor.spec import AutoscalingSpec

# Knative's KPA defaults: concurrency 100 x 0.7 = 70 per replica, 60 s / 6 s windows.
KPA = AutoscalingSpec(metric="concurrency", target=100, target_utilization=0.7, initial_scale=0)
# torpor's LLM policy with a round target: 10 x 1.0 = 10 requests per replica.
LLM = AutoscalingSpec(metric="llm", target=10, target_utilization=1.0, initial_scale=0)


def loads(*work: float, kv: float | None = None) -> tuple[ReplicaLoad, ...]:
    """Ready replicas, each with ``work`` requests running and none waiting."""
    return tuple(
        ReplicaLoad(f"r{i}", running=w, waiting=0, kv_cache_usage=kv) for i, w in enumerate(work)
    )


def once(spec: AutoscalingSpec, obs: Observation, state: ScalerState | None = None) -> Decision:
    return decide(spec, obs, state or ScalerState(initialized=True), 100.0)[0]


def timeline(
    spec: AutoscalingSpec,
    steps: Iterable[tuple[float, Observation]],
    state: ScalerState | None = None,
) -> list[tuple[float, Decision]]:
    """Feed observations at fake times; the state threads through like the loop's."""
    state = state or ScalerState(initialized=True)
    out = []
    for now, obs in steps:
        d, state = decide(spec, obs, state, now)
        out.append((now, d))
    return out


def every(
    start: float, stop: float, obs: Observation, step: float = 2.0
) -> list[tuple[float, Observation]]:
    n = int((stop - start) / step)
    return [(start + i * step, obs) for i in range(n)]


# -- target per replica, both metrics ------------------------------------------------------------


@pytest.mark.parametrize(
    ("in_flight", "queued", "ready", "want"),
    [
        (0, 0, 1, 1),  # idle replica inside the grace period stays
        (70, 0, 1, 1),  # exactly at target
        (71, 0, 1, 2),
        (100, 40, 2, 2),  # queued counts as concurrency
        (350, 0, 3, 5),
    ],
)
def test_concurrency_metric_is_knative_kpa(
    in_flight: int, queued: int, ready: int, want: int
) -> None:
    obs = Observation(
        ready=loads(*[0] * ready), activator_in_flight=in_flight, activator_queued=queued
    )
    assert once(KPA, obs).desired == want


def test_concurrency_metric_ignores_vllm_gauges() -> None:
    obs = Observation(ready=loads(500), activator_in_flight=10)
    assert once(KPA, obs).desired == 1


@pytest.mark.parametrize(
    ("work", "queued", "want"),
    [
        ((10,), 0, 1),
        ((10, 10), 1, 3),  # activator's queue adds to what vLLM holds
        ((25,), 0, 3),
        ((4, 4, 4), 0, 2),
    ],
)
def test_llm_metric_uses_vllm_running_and_waiting(
    work: tuple[float, ...], queued: int, want: int
) -> None:
    obs = Observation(ready=loads(*work), activator_queued=queued, activator_in_flight=0)
    assert once(LLM, obs).desired == want


def test_llm_metric_counts_waiting_requests() -> None:
    ready = (ReplicaLoad("a", running=8, waiting=12, kv_cache_usage=0.1),)
    assert once(LLM, Observation(ready=ready)).desired == 2


def test_target_utilization_scales_the_target() -> None:
    spec = AutoscalingSpec(metric="llm", target=10, target_utilization=0.5, initial_scale=0)
    assert once(spec, Observation(ready=loads(10))).desired == 2


# -- unknown is not zero --------------------------------------------------------------------------


def test_unknown_replica_is_covered_by_activator_in_flight() -> None:
    ready = (ReplicaLoad("a"), ReplicaLoad("b"))
    d = once(LLM, Observation(ready=ready, activator_in_flight=40))
    assert d.desired == 4


def test_unknown_replica_holds_instead_of_scaling_down() -> None:
    ready = (ReplicaLoad("a"), *loads(0, 0))
    d = once(LLM, Observation(ready=ready, activator_in_flight=0))
    assert d.desired == 3
    assert "unknown" in d.reason


# -- KV-cache guard ----------------------------------------------------------------------------


def test_kv_cache_pressure_adds_a_replica() -> None:
    d = once(LLM, Observation(ready=loads(3, 3, kv=0.95)))
    assert d.desired == 3
    assert "kv-cache" in d.reason


def test_kv_cache_below_half_its_target_changes_nothing() -> None:
    # 30% full: the cache does not bind, the request target does.
    assert once(LLM, Observation(ready=loads(3, 3, kv=0.3))).desired == 1


@pytest.mark.parametrize(
    ("work", "kv", "want"),
    [
        ((3, 3), 0.5, 2),  # merged onto one replica the cache would be 100% full
        ((8, 8), 0.8, 2),  # exactly at the KV target
        ((8, 8), 1.0, 3),  # 6.4 fit per replica at 80%
        ((20,), 0.4, 2),  # the cache would hold 40: the request target (10) binds first
    ],
)
def test_kv_cache_sizes_the_target_when_it_binds_first(
    work: tuple[float, ...], kv: float, want: int
) -> None:
    d = once(LLM, Observation(ready=loads(*work, kv=kv)))
    assert d.desired == want


def test_kv_capacity_counts_waiting_requests_as_needing_their_own_cache() -> None:
    # 4 running fill the cache to its 80% target; 6 more wait: 10 requests at 4 each -> 3.
    ready = (ReplicaLoad("a", running=4, waiting=6, kv_cache_usage=0.8),)
    d = once(LLM, Observation(ready=ready))
    assert d.desired == 3 and "kv-cache holds" in d.reason


def test_kv_capacity_is_off_for_the_concurrency_metric() -> None:
    obs = Observation(ready=loads(3, 3, kv=0.9), activator_in_flight=6)
    assert once(KPA, obs).desired == 1


def test_kv_guard_counts_a_replica_already_starting() -> None:
    # One more is already on its way: the guard asks for ready + 1, which is what exists.
    obs = Observation(ready=loads(3, 3, kv=0.95), starting=1)
    d = once(LLM, obs)
    assert d.desired == obs.current == 3


def test_kv_guard_is_off_for_the_concurrency_metric() -> None:
    assert once(KPA, Observation(ready=loads(3, kv=0.99), activator_in_flight=3)).desired == 1


# -- min / max scale ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("min_scale", "max_scale", "work", "want"),
    [
        (2, 0, (0,), 2),
        (0, 3, (50, 50), 3),
        (1, 1, (100,), 1),
        (0, 0, (100,), 10),  # 0 means unbounded
    ],
)
def test_min_and_max_scale(
    min_scale: int, max_scale: int, work: tuple[float, ...], want: int
) -> None:
    spec = AutoscalingSpec(
        metric="llm",
        target=10,
        target_utilization=1.0,
        initial_scale=0,
        min_scale=min_scale,
        max_scale=max_scale,
    )
    assert once(spec, Observation(ready=loads(*work))).desired == want


def test_min_scale_keeps_replicas_through_idle() -> None:
    spec = AutoscalingSpec(
        metric="llm", target=10, target_utilization=1.0, initial_scale=0, min_scale=1
    )
    out = timeline(spec, every(0, 300, Observation(ready=loads(0))))
    assert all(d.desired == 1 for _, d in out)


# -- initial scale and activation scale ---------------------------------------------------------


def test_new_revision_goes_to_initial_scale_then_windows_take_over() -> None:
    spec = AutoscalingSpec(metric="llm", target=10, initial_scale=2, scale_to_zero_grace_s=0)
    d, state = decide(spec, Observation(), ScalerState(), 0.0)
    assert d.desired == 2 and "initial" in d.reason
    # Still starting: the initial scale holds even though nothing asks for it.
    d, state = decide(spec, Observation(starting=2), state, 2.0)
    assert d.desired == 2
    d, state = decide(spec, Observation(ready=loads(0, 0)), state, 40.0)
    assert state.initialized
    # Once reached, idle replicas are scaled down like any other.
    d, state = decide(spec, Observation(ready=loads(0, 0)), state, 200.0)
    assert d.desired < 2


def test_initial_scale_zero_stays_at_zero() -> None:
    spec = AutoscalingSpec(initial_scale=0)
    d, _ = decide(spec, Observation(), ScalerState(), 0.0)
    assert d.desired == 0 and d.reason == "idle at zero"


def test_activation_scale_from_zero() -> None:
    spec = AutoscalingSpec(metric="llm", target=10, initial_scale=0, activation_scale=3)
    assert once(spec, Observation(activator_queued=1)).desired == 3
    assert once(spec, Observation(poked=True)).desired == 3


# -- rates ---------------------------------------------------------------------------------------


def test_max_scale_up_rate() -> None:
    spec = AutoscalingSpec(
        metric="llm", target=10, target_utilization=1.0, initial_scale=0, max_scale_up_rate=2.0
    )
    # 2 ready, load for 20: at most ceil(2 x 2) = 4.
    assert once(spec, Observation(ready=loads(100, 100))).desired == 4


def test_max_scale_down_rate() -> None:
    # 8 idle replicas: at most halve per decision (Knative's default rate 2).
    assert once(LLM, Observation(ready=loads(*[0] * 8))).desired == 4


def test_scale_down_to_zero_is_not_rate_limited_from_one() -> None:
    spec = AutoscalingSpec(metric="llm", initial_scale=0, scale_to_zero_grace_s=0)
    assert once(spec, Observation(ready=loads(0))).desired == 0


# -- stable window -----------------------------------------------------------------------------


def test_stable_window_averages_load_before_scaling_down() -> None:
    busy = Observation(ready=loads(15, 15, 15, 15, 0, 0))  # 60 over 6 replicas -> 6
    idle = Observation(ready=loads(0, 0, 0, 0, 0, 0))
    out = timeline(LLM, [*every(0, 60, busy), *every(60, 90, idle)])
    at = dict(out)
    assert at[58].desired == 6
    # Half a window later the average has only halved (30): 3 at the target, held at 4 by the
    # scale-down band since 30 is not 10% under 3 replicas' 30.
    assert at[88].desired == 4
    assert at[88].observed == pytest.approx(30)


def test_load_rise_is_seen_within_the_stable_window() -> None:
    out = timeline(
        LLM, [*every(0, 60, Observation(ready=loads(5))), (60, Observation(ready=loads(40)))]
    )
    assert out[-1][1].desired >= 1


# -- panic mode --------------------------------------------------------------------------------


def test_burst_triggers_panic_and_scales_on_the_panic_window() -> None:
    quiet = Observation(ready=loads(5))
    burst = Observation(ready=loads(5), activator_queued=60)
    out = timeline(LLM, [*every(0, 60, quiet), (60, burst)])
    d = out[-1][1]
    # Panic window (6 s) mean: (5 + 5 + 65) / 3 = 25 -> 3 replicas; stable mean is still ~7.
    assert d.panic
    assert d.desired == 3


def test_no_scale_down_while_panicking_then_stable_after_a_window() -> None:
    burst = Observation(ready=loads(40, 40), activator_queued=0)
    calm = Observation(ready=loads(1, 1, 1, 1, 1, 1, 1, 1))
    steps = [(0.0, burst), (2.0, burst), *every(4, 200, calm)]
    out = timeline(LLM, steps)
    peak = max(d.desired for _, d in out)
    during = [d for t, d in out if 4 <= t <= 60]
    assert all(d.panic and d.desired == peak for d in during)
    after = [d for t, d in out if t > 64]
    assert not after[0].panic
    assert after[-1].desired < peak


# -- scale-down delay --------------------------------------------------------------------------


def test_scale_down_delay_holds_the_highest_recent_decision() -> None:
    spec = AutoscalingSpec(
        metric="llm",
        target=10,
        target_utilization=1.0,
        initial_scale=0,
        window_s=6,
        scale_down_delay_s=30,
        panic_threshold_percentage=1000,
    )
    busy = Observation(ready=loads(15, 15, 0))
    idle = Observation(ready=loads(0, 0, 0))
    at = dict(timeline(spec, [*every(0, 10, busy), *every(10, 60, idle)]))
    assert at[20].desired == 3 and "delay" in at[20].reason
    assert at[50].desired < 3


# -- scale to zero: grace and retention -------------------------------------------------------


def test_scale_to_zero_after_window_and_grace_like_knative() -> None:
    busy = Observation(ready=loads(0), activator_in_flight=10)
    idle = Observation(ready=loads(0))
    out = timeline(KPA, [*every(0, 10, busy), *every(10, 200, idle)])
    zero_at = next(t for t, d in out if d.desired == 0)
    # The 60 s window must read zero (t >= 70), then 30 s of grace.
    assert 98 <= zero_at <= 102
    held = [d for t, d in out if 10 <= t < zero_at]
    assert all(d.desired == 1 for d in held)


def test_retention_longer_than_grace_keeps_the_last_replica() -> None:
    spec = AutoscalingSpec(
        metric="llm",
        initial_scale=0,
        window_s=6,
        scale_to_zero_grace_s=10,
        scale_to_zero_retention_s=60,
    )
    out = timeline(
        spec, [(0.0, Observation(ready=loads(3))), *every(2, 200, Observation(ready=loads(0)))]
    )
    zero_at = next(t for t, d in out if d.desired == 0)
    assert zero_at >= 60


def test_traffic_during_grace_resets_it() -> None:
    spec = AutoscalingSpec(metric="llm", initial_scale=0, window_s=6, scale_to_zero_grace_s=20)
    idle = Observation(ready=loads(0))
    one = Observation(ready=loads(1))
    out = timeline(spec, [(0.0, one), *every(2, 20, idle), (20.0, one), *every(22, 80, idle)])
    zero_at = next(t for t, d in out if d.desired == 0)
    # The request at t=20 restarts the idle clock: zero after 20 s of nothing from t=22.
    assert zero_at >= 22 + 20


def test_llm_waits_for_the_window_then_the_grace_like_knative() -> None:
    # vLLM idle is not enough: a burst in the stable window is evidence of more to come.
    spec = AutoscalingSpec(metric="llm", initial_scale=0, window_s=60, scale_to_zero_grace_s=30)
    busy = Observation(ready=loads(8))
    idle = Observation(ready=loads(0))
    out = timeline(spec, [*every(0, 60, busy), *every(60, 250, idle)])
    zero_at = next(t for t, d in out if d.desired == 0)
    # The last busy sample (t=58) leaves the window at t=118; then 30 s of grace.
    assert 118 + 30 <= zero_at <= 152
    assert all(d.desired == 1 for t, d in out if 60 <= t < zero_at)


def test_bursts_within_the_window_keep_the_last_replica() -> None:
    spec = AutoscalingSpec(metric="llm", initial_scale=0, window_s=60, scale_to_zero_grace_s=30)
    burst = Observation(ready=loads(30))
    idle = Observation(ready=loads(0))
    # Bursts 50 s apart: each is still in the window when the next comes.
    steps = []
    for start in (0, 50, 100, 150):
        steps += [*every(start, start + 4, burst), *every(start + 4, start + 50, idle)]
    out = timeline(spec, steps)
    assert all(d.desired >= 1 for _, d in out)


def test_unknown_replica_never_reaches_zero() -> None:
    spec = AutoscalingSpec(metric="llm", initial_scale=0, window_s=60, scale_to_zero_grace_s=10)
    unknown = Observation(ready=(ReplicaLoad("a"),))
    out = timeline(spec, [(0.0, Observation(ready=loads(5))), *every(2, 300, unknown)])
    assert all(d.desired == 1 for _, d in out)


def test_at_zero_the_old_window_starts_nothing() -> None:
    spec = AutoscalingSpec(metric="llm", initial_scale=0, window_s=60, scale_to_zero_grace_s=10)
    steps = [
        *every(0, 20, Observation(ready=loads(30, 30, 30))),
        *every(20, 200, Observation(ready=loads(0))),  # scaled down to the last one
    ]
    state = ScalerState(initialized=True)
    for now, obs in steps:
        d, state = decide(spec, obs, state, now)
    assert d.desired == 0 and not d.panic
    d, state = decide(spec, Observation(), state, 202.0)
    assert d.desired == 0 and d.reason == "idle at zero"


def test_concurrency_metric_keeps_knative_zero_timing() -> None:
    spec = replace(KPA, scale_to_zero_grace_s=10)
    out = timeline(
        spec,
        [
            (0.0, Observation(ready=loads(0), activator_in_flight=5)),
            *every(2, 120, Observation(ready=loads(0))),
        ],
    )
    zero_at = next(t for t, d in out if d.desired == 0)
    assert zero_at >= 60 + 10


# -- scale from zero, starting replicas -------------------------------------------------------


def test_poke_at_zero_starts_one_at_once() -> None:
    d = once(LLM, Observation(poked=True))
    assert d.desired == 1 and "poked" in d.reason


def test_poke_with_replicas_present_changes_nothing() -> None:
    assert once(LLM, Observation(starting=1, poked=True)).desired == 1


def test_queue_at_zero_asks_for_enough_replicas() -> None:
    d = once(LLM, Observation(activator_queued=35))
    assert d.desired == 4


def test_starting_replicas_are_counted_so_a_burst_does_not_over_start() -> None:
    spec = LLM
    state = ScalerState(initialized=True)
    burst = 35
    d, state = decide(spec, Observation(activator_queued=burst, poked=True), state, 0.0)
    assert d.desired == 4
    # The loop started 4. While they start the same queue asks for the same 4, not 4 more.
    for now in (2.0, 4.0, 6.0, 8.0):
        d, state = decide(spec, Observation(activator_queued=burst, starting=4), state, now)
        assert d.desired == 4


def test_starting_replica_survives_until_the_grace_period() -> None:
    # The poke started one, the stats have not caught up: do not stop it at once.
    state = ScalerState(initialized=True)
    _, state = decide(LLM, Observation(poked=True), state, 0.0)
    d, _ = decide(LLM, Observation(starting=1), state, 2.0)
    assert d.desired == 1


# -- hysteresis: no flapping, never below the work held now -------------------------------------


def _flat_swell() -> list[tuple[float, Observation]]:
    """Load that asked for a third replica, then settles under the line while it starts."""
    rising = Observation(ready=loads(11, 11), starting=0)
    flat = Observation(ready=loads(8, 8), starting=1)
    return [*every(0, 60, rising), *every(60, 100, flat)]


def test_llm_keeps_a_starting_replica_while_load_is_flat() -> None:
    out = timeline(LLM, _flat_swell())
    assert dict(out)[58].desired == 3
    assert all(d.desired == 3 for t, d in out if t >= 60)
    assert "starting" in dict(out)[98].reason


def test_concurrency_metric_stops_a_starting_replica_like_knative() -> None:
    # Knative's KPA (and the ReplicaSet under it) takes a not-yet-ready pod away first.
    spec = replace(KPA, target=10, target_utilization=1.0)
    steps = [
        (t, replace(o, activator_in_flight=int(sum(r.running or 0 for r in o.ready))))
        for t, o in _flat_swell()
    ]
    out = timeline(spec, steps)
    assert out[-1][1].desired == 2


@pytest.mark.parametrize(
    ("stable_load", "want"),
    [
        (31, 4),  # above 3 x 10: stays at 4 (the plain rule)
        (28, 4),  # under 3 x 10 but within 10% of it: held by the band
        (26, 3),  # 10% under 3 x 10: scale down
    ],
)
def test_llm_scale_down_waits_for_load_ten_percent_under_the_smaller_count(
    stable_load: float, want: int
) -> None:
    per = stable_load / 4
    out = timeline(LLM, every(0, 120, Observation(ready=loads(per, per, per, per))))
    assert out[-1][1].desired == want


def test_concurrency_metric_has_no_band_like_knative() -> None:
    spec = replace(KPA, target=10, target_utilization=1.0)
    obs = Observation(ready=loads(0, 0, 0, 0), activator_in_flight=28)
    assert timeline(spec, every(0, 120, obs))[-1][1].desired == 3


def test_starting_replica_is_let_go_once_load_falls_below_the_ready_ones() -> None:
    obs = Observation(ready=loads(2, 2, 2), starting=1)
    assert once(LLM, obs).desired < 3


def test_with_none_ready_extra_starting_replicas_are_let_go() -> None:
    # Nothing ready yet and the queue needs one of the three starting: no "flat load" to keep.
    obs = Observation(starting=3, activator_queued=5)
    assert once(LLM, obs).desired == 1


def test_llm_never_scales_below_what_the_current_work_needs() -> None:
    quiet = Observation(ready=loads(1, 1, 1, 1))
    busy = Observation(ready=loads(10, 10, 10, 10))
    steps = [*every(0, 50, quiet), *every(50, 56, busy)]
    out = timeline(LLM, steps)
    d = out[-1][1]
    # The stable mean (~10) asks for 1 and the panic window is under its threshold: KPA's rule
    # would halve to 2 while 40 requests run. The work held now needs all 4.
    assert not d.panic
    assert d.desired == 4 and "current work" in d.reason
    kpa = replace(KPA, target=10, target_utilization=1.0)
    steps_kpa = [
        (t, replace(o, activator_in_flight=int(sum(r.running or 0 for r in o.ready))))
        for t, o in steps
    ]
    assert timeline(kpa, steps_kpa)[-1][1].desired == 2


@pytest.mark.parametrize("spec", [LLM, KPA], ids=["llm", "concurrency"])
def test_requests_between_ticks_keep_the_last_replica(spec: AutoscalingSpec) -> None:
    """A fast replica answers between two ticks: the gauges read zero every tick, but the
    activators' counters say requests came, so the window never reads zero and the revision is
    not scaled to zero while it serves a request every 20 s."""
    idle = Observation(ready=loads(0))
    served = Observation(ready=loads(0), arrivals=1)
    steps = [(float(t), served if t % 20 == 0 else idle) for t in range(0, 301, 2)]
    assert all(d.desired == 1 for _, d in timeline(spec, steps))
    # Without the counters the same revision goes to zero once the window and grace pass.
    blind = [(t, idle) for t, _ in steps]
    assert timeline(spec, blind)[-1][1].desired == 0


def test_arrivals_never_ask_for_a_second_replica() -> None:
    d = once(LLM, Observation(ready=loads(0), arrivals=50))
    assert d.desired == 1
