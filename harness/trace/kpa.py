"""Knative's KPA as Knative implements it, for the trace benchmark's baseline.

Not ``autoscaler.decide`` with ``metric="concurrency"``: that is torpor's product configured like
a KPA, fed torpor's own signals every tick. This is the competitor, modelled on Knative Serving's
own code so the comparison is against what an operator would really run:

- **Per-second buckets** (``pkg/autoscaler/aggregation``'s ``TimedFloat64Buckets``): the collector
  scrapes every ready pod's queue-proxy once a second and records the revision's summed average
  concurrency in a one-second bucket; the activator adds the requests it holds. The stable and
  panic values are bucket averages over their windows, divided by the number of buckets since the
  first write when the window is not yet full, with seconds of no data inside the window counting
  as zero, and zero once a whole window passed with no data.
- **Ready pods only**: the divisor and the rate limits count ready pods (at least one); a pod that
  is terminating is not scraped, so the work it is still draining is not counted.
- **The decision** (``pkg/autoscaler/scaling/autoscaler.go``): ``ceil(value / (target x
  utilization))`` clamped by the scale-up and scale-down rates, panic when the panic window's
  count is at least ``panic-threshold`` x ready pods (no scale-down while panicking, until a
  stable window passes without crossing), then the ``scale-down-delay`` (the maximum desired
  count over the delay window). Ticks every 2 s; the activator pokes it at zero.
- **Scale to zero** (``pkg/reconciler/autoscaling/kpa/scaler.go``): only after the revision has
  wanted zero for ``scale-to-zero-grace-period``.
- **Which pod goes** is the ReplicaSet controller's choice, not the autoscaler's
  (``victims``): pods not yet ready first (newest first), then the most recently ready one. It
  knows nothing of load; a removed pod finishes what it holds and gets no new requests.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

TICK_S = 2.0  # Knative's autoscaler tick
GRANULARITY_S = 1.0  # the collector's scrape interval and bucket width


@dataclass(frozen=True, slots=True)
class KpaConfig:
    """A KPA's annotations; Knative's defaults unless set."""

    target: float = 100.0  # autoscaling.knative.dev/target (container-concurrency-target-default)
    target_utilization: float = 0.7  # container-concurrency-target-percentage 70
    stable_window_s: float = 60.0
    panic_window_percentage: float = 10.0
    panic_threshold_percentage: float = 200.0
    max_scale_up_rate: float = 1000.0
    max_scale_down_rate: float = 2.0
    scale_down_delay_s: float = 0.0
    scale_to_zero_grace_s: float = 30.0
    max_scale: int = 0  # 0: unbounded

    def __post_init__(self) -> None:
        if self.target <= 0 or not 0 < self.target_utilization <= 1:
            raise ValueError("target must be positive and target_utilization in (0, 1]")
        if self.stable_window_s < 6 or self.scale_down_delay_s < 0:
            raise ValueError("stable window at least 6 s (Knative's minimum), delay >= 0")

    @property
    def panic_window_s(self) -> float:
        return self.stable_window_s * self.panic_window_percentage / 100.0

    def label(self) -> str:
        return (
            f"target {self.target:g}, window {self.stable_window_s:g}s, "
            f"scale-down-delay {self.scale_down_delay_s:g}s"
        )


@dataclass(slots=True)
class Buckets:
    """One-second buckets of a value over a window, averaged as Knative averages them."""

    window_s: float
    values: dict[int, float] = field(default_factory=dict)
    first_write: int | None = None
    last_write: int | None = None

    def record(self, at: float, value: float) -> None:
        second = int(at // GRANULARITY_S)
        if self.last_write is not None and second - self.last_write >= self.window_s:
            # A whole window with no data: start over (Knative resets its first write).
            self.values.clear()
            self.first_write = None
        if self.first_write is None:
            self.first_write = second
        self.values[second] = self.values.get(second, 0.0) + value
        self.last_write = second if self.last_write is None else max(self.last_write, second)
        horizon = second - int(self.window_s)
        for old in [s for s in self.values if s <= horizon]:
            del self.values[old]

    def average(self, now: float) -> float:
        if self.last_write is None or self.first_write is None:
            return 0.0
        second = int(now // GRANULARITY_S)
        n = math.ceil(self.window_s / GRANULARITY_S)
        lag = second - self.last_write
        if lag >= n:
            return 0.0
        lo = second - n  # buckets (lo, second] are in the window
        total = sum(v for s, v in self.values.items() if lo < s <= min(second, self.last_write))
        # Buckets after the last write are missing data, not zeros: Knative shrinks the window.
        valid = min(self.last_write - self.first_write + 1, n - max(0, lag))
        return total / max(1, valid)


@dataclass(frozen=True, slots=True)
class KpaState:
    panic_since: float | None = None
    max_panic_pods: int = 0
    delay_history: tuple[tuple[float, int], ...] = ()
    zero_since: float | None = None


@dataclass(frozen=True, slots=True)
class KpaDecision:
    desired: int
    stable: float
    panic_value: float
    panic: bool


def kpa_decide(
    cfg: KpaConfig,
    state: KpaState,
    now: float,
    *,
    ready: int,
    current: int,
    stable: float,
    panic_value: float,
    poked: bool = False,
) -> tuple[KpaDecision, KpaState]:
    """One KPA tick: the desired pod count from the windows' averages, then the delay window,
    then scale to zero's grace period. ``current`` is pods not terminating (ready or not)."""
    pods = max(1.0, float(ready))
    target = cfg.target * cfg.target_utilization
    max_up = math.ceil(cfg.max_scale_up_rate * pods)
    max_down = math.floor(pods / cfg.max_scale_down_rate) if ready > 0 else 0
    dspc = math.ceil(round(stable / target, 6))
    dppc = math.ceil(round(panic_value / target, 6))
    stable_n = min(max(dspc, max_down), max_up)
    panic_n = min(max(dppc, max_down), max_up)
    over = dppc / pods >= cfg.panic_threshold_percentage / 100.0
    panic_since, max_panic = state.panic_since, state.max_panic_pods
    if over:
        panic_since = now
    elif panic_since is not None and now - panic_since > cfg.stable_window_s:
        panic_since, max_panic = None, 0
    desired = stable_n
    if panic_since is not None:
        # Knative provisions for the larger of the stable and panic counts while panicking
        # (autoscaler.go; its test case AutoscalerPanicStableLargerThanPanic), and never less
        # than the most it asked for since the panic began.
        max_panic = max(max_panic, stable_n, panic_n)
        desired = max_panic
    history = state.delay_history
    if cfg.scale_down_delay_s > 0:
        history = (
            *(h for h in history if h[0] > now - cfg.scale_down_delay_s),
            (now, desired),
        )
        desired = max(n for _, n in history)
    if poked and current == 0:
        desired = max(desired, 1)
    if cfg.max_scale > 0:
        desired = min(desired, cfg.max_scale)
    zero_since = state.zero_since
    if desired == 0 and current > 0:
        zero_since = now if zero_since is None else zero_since
        if now - zero_since < cfg.scale_to_zero_grace_s:
            desired = 1
    else:
        zero_since = None
    new = KpaState(panic_since, max_panic, history, zero_since)
    return KpaDecision(desired, stable, panic_value, panic_since is not None), new


@dataclass(frozen=True, slots=True)
class Pod:
    name: str
    created: float
    ready_since: float | None  # None: not ready yet


def victims(pods: Sequence[Pod], n: int) -> list[str]:
    """The ``n`` pods the ReplicaSet controller deletes first (``getPodsToDelete``'s ranking as
    it applies here: all pods scheduled and unrestarted): not-ready before ready; among not
    ready, the newest; among ready, the one ready for the shortest time, then the newest."""

    def rank(p: Pod) -> tuple[int, float, float]:
        if p.ready_since is None:
            return (0, -p.created, 0.0)
        return (1, -p.ready_since, -p.created)

    return [p.name for p in sorted(pods, key=rank)[: max(0, n)]]


def with_delay(cfg: KpaConfig, delay_s: float) -> KpaConfig:
    return replace(cfg, scale_down_delay_s=delay_s)
