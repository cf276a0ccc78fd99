"""The KPA model (``harness/trace/kpa.py``) against Knative's own autoscaler tests.

Each vector is a test of knative/serving's ``pkg/autoscaler/scaling/autoscaler_test.go`` (read at
commit 98e5ef90aa7033797aa0a61ef97f3ff7e49a3944, August 2026), named as Knative names it, with
its inputs and its expected ``DesiredPodCount`` copied from the Go source: the observed stable and
panic concurrency, the ready pod count, the time of each ``Scale`` call. Knative's test helper
(``newTestAutoscalerWithScalingMetric``) builds a ``DeciderSpec`` with ``PanicThreshold: 2``,
``MaxScaleUpRate: 10``, ``MaxScaleDownRate: 10``, a 60 s stable window and a ``TargetValue``
that already includes the utilization, so the model runs with ``target_utilization=1`` and the
test's target value; the delay tests set ``PanicThreshold: 100`` (10000%).

What ``autoscaler.go``'s ``Scale`` does not do is left out of the vectors: the scale-to-zero grace
period lives in the KPA reconciler's scaler (so these run with a grace of 0), excess burst
capacity is not modelled (only the pod count is checked), nor are ``Reachable: false``
(``TestAutoscalerScaleDownDelayNotReachable``, ``AutoscalerStableModeDecreaseNonReachable``), the
RPS metric, activation scale and metrics errors (``TestCantCountPods``). Where ``time.Now()`` is
called twice in a Go test the vectors advance one second: nothing in those tests depends on it.

One disagreement was found and fixed in the model: while panicking Knative asks for the larger
of the stable and panic counts (``AutoscalerPanicStableLargerThanPanic``); the model used the
panic count only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from harness.trace.kpa import KpaConfig, KpaState, kpa_decide


@dataclass(frozen=True)
class Step:
    at: float  # seconds since the test's start
    ready: int
    stable: float
    panic: float
    want: int


@dataclass(frozen=True)
class Vector:
    name: str  # Knative's test (and sub-test) name
    target: float
    steps: tuple[Step, ...]
    max_up: float = 10.0
    max_down: float = 10.0
    panic_threshold_pct: float = 200.0
    delay_s: float = 0.0
    state: KpaState = field(default_factory=KpaState)


VECTORS = [
    Vector(
        "TestAutoscalerScaleDownDelay/simple",
        10,
        (Step(2, 0, 40, 40, 4), Step(300, 0, 0, 0, 4), Step(302, 0, 0, 0, 0)),
        panic_threshold_pct=10000,
        delay_s=300,
    ),
    Vector(
        "TestAutoscalerScaleDownDelay/simple+gradual",
        10,
        (
            Step(2, 0, 40, 40, 4),
            Step(300, 0, 0, 0, 4),
            Step(302, 0, 0, 0, 0),
            Step(540, 0, 40, 40, 4),
            Step(600, 0, 30, 30, 4),
            Step(660, 0, 0, 0, 4),
            Step(840, 0, 0, 0, 3),
            Step(900, 0, 0, 0, 0),
        ),
        panic_threshold_pct=10000,
        delay_s=300,
    ),
    Vector(
        "TestAutoscalerScaleDownDelayZero",
        10,
        (Step(0, 0, 40, 40, 4), Step(0.5, 0, 20, 20, 2)),
        panic_threshold_pct=10000,
    ),
    Vector(
        "TestAutoscalerStableModeIncreaseWithConcurrencyDefault",
        10,
        (Step(0, 1, 50, 10, 5), Step(1, 1, 100, 10, 10)),
    ),
    Vector(
        "TestAutoscalerUnpanicAfterSlowIncrease",
        1,
        (Step(0, 10, 11, 25, 25), Step(30, 40, 30, 41, 41), Step(62, 55, 50, 56, 50)),
    ),
    Vector(
        "TestAutoscalerExtendPanicWindow",
        1,
        (Step(0, 10, 11, 25, 25), Step(30, 40, 30, 80, 80)),
    ),
    Vector(
        "TestAutoscalerStableModeDecrease",
        10,
        (Step(0, 8, 100, 100, 10), Step(1, 8, 50, 50, 5)),
    ),
    Vector(
        "TestAutoscalerStableModeNoTrafficScaleToZero",
        10,
        (Step(0, 1, 1, 0, 1), Step(1, 1, 0, 0, 0)),
    ),
    Vector(
        "TestAutoscalerPanicModeExponentialTrackAndStabilize",
        1,
        (
            Step(0, 1, 6, 6, 6),
            Step(1, 6, 36, 36, 36),
            Step(2, 36, 216, 216, 216),
            Step(2, 216, 1296, 1296, 1296),
            Step(3, 1296, 1296, 1296, 1296),
        ),
    ),
    Vector("TestAutoscalerScale/AutoscalerNoDataAtZeroNoAutoscale", 10, (Step(0, 1, 0, 0, 0),)),
    Vector("TestAutoscalerScale/AutoscalerStableModeUnlimitedTBC", 181, (Step(0, 1, 21, 26, 1),)),
    Vector("TestAutoscalerScale/Autoscaler0TBC", 10, (Step(0, 1, 50, 49, 5),)),
    Vector("TestAutoscalerScale/AutoscalerStableModeNoChange", 10, (Step(0, 1, 50, 50, 5),)),
    Vector(
        "TestAutoscalerScale/AutoscalerPanicStableLargerThanPanic",
        1,
        (Step(5, 5, 50, 30, 50),),
        state=KpaState(panic_since=0.0, max_panic_pods=5),
    ),
    Vector(
        "TestAutoscalerScale/AutoscalerPanicStableLessThanPanic",
        1,
        (Step(5, 5, 20, 30, 30),),
        state=KpaState(panic_since=0.0, max_panic_pods=5),
    ),
    Vector(
        "TestAutoscalerScale/AutoscalerStableModeNoChangeAlreadyScaled",
        10,
        (Step(0, 5, 50, 50, 5),),
    ),
    Vector(
        "TestAutoscalerScale/AutoscalerStableModeIncreaseWithSmallScaleUpRate",
        1,
        (Step(0, 2, 3, 3.1, 3),),
        max_up=1.1,
    ),
    Vector(
        "TestAutoscalerScale/AutoscalerStableModeDecreaseWithSmallScaleDownRate",
        10,
        (Step(0, 100, 1, 1, 90),),
        max_down=1.1,
    ),
    Vector("TestAutoscalerScale/AutoscalerPanicModeDoublePodCount", 10, (Step(0, 1, 50, 100, 10),)),
    Vector(
        "TestAutoscalerPanicThenUnPanicScaleDown",
        10,
        (
            Step(0, 1, 100, 100, 10),
            Step(1, 10, 100, 1000, 100),
            Step(31, 10, 1, 1, 100),
            Step(62, 10, 1, 1, 1),
        ),
    ),
    Vector(
        "TestAutoscalerRateLimitScaleUp",
        10,
        (Step(0, 1, 1000, 1001, 10), Step(1, 10, 1000, 1001, 100)),
    ),
    Vector(
        "TestAutoscalerRateLimitScaleDown",
        10,
        (Step(0, 100, 1, 1, 10), Step(1, 10, 1, 1, 1)),
    ),
    Vector(
        "TestAutoscalerUseOnePodAsMinimumIfEndpointsNotFound",
        10,
        (Step(0, 0, 1000, 888, 10),),
    ),
]


@pytest.mark.parametrize("v", VECTORS, ids=[v.name for v in VECTORS])
def test_the_model_scales_as_knatives_own_tests_expect(v: Vector) -> None:
    cfg = KpaConfig(
        target=v.target,
        target_utilization=1.0,
        stable_window_s=60.0,
        panic_threshold_percentage=v.panic_threshold_pct,
        max_scale_up_rate=v.max_up,
        max_scale_down_rate=v.max_down,
        scale_down_delay_s=v.delay_s,
        scale_to_zero_grace_s=0.0,
    )
    state = v.state
    for step in v.steps:
        d, state = kpa_decide(
            cfg,
            state,
            step.at,
            ready=step.ready,
            current=step.ready,
            stable=step.stable,
            panic_value=step.panic,
        )
        assert d.desired == step.want, f"{v.name} at {step.at}s"
