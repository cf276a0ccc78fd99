"""How many replicas a revision should have: a pure function of spec, observation, state, now.

The math mirrors Knative's KPA (``pkg/autoscaler/scaling/autoscaler.go`` and the scale-to-zero
handling in ``pkg/reconciler/autoscaling/kpa/scaler.go``) so that, configured with Knative's
defaults and ``metric="concurrency"``, it *is* a KPA. ``metric="llm"`` swaps the load signal for
what vLLM itself reports (running + waiting) and adds rules for a replica whose capacity is its KV
cache and whose start costs tens of seconds: the per-replica target drops to what the KV cache
holds once it binds; scale-down waits until the load is 10% under the smaller count's target,
never goes below what the work held right now needs, and keeps a replica that is still starting
while load is flat. Scale to zero is Knative's for both metrics: the stable window must read zero
(recent bursts are evidence of more), then the grace period.

No I/O, no clock, no logging: the loop in ``autoscaler.loop`` owns those. ``desired`` is the
total the revision should have once starting replicas are ready; draining replicas are already
on their way out and are not counted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from autoscaler.keepalive import KeepAliveSpec, KeepAliveState, KeepAliveStep, Tier
from autoscaler.keepalive import step as keepalive_step
from torpor.spec import AutoscalingSpec

SCALE_DOWN_TOLERANCE = 0.1
"""Kubernetes HPA's default tolerance, used as a hysteresis band for metric "llm": scale down to
N only once the load sits 10% under N's target. An LLM replica's in-flight count falls when a
replica is added (smaller batches decode faster), so without a band the count flaps N <-> N+1
and every flap pays a cold start."""


@dataclass(frozen=True, slots=True)
class ReplicaLoad:
    """One ready replica's vLLM gauges; ``None`` when its scrape failed (unknown, not zero)."""

    replica_id: str
    running: float | None = None
    waiting: float | None = None
    kv_cache_usage: float | None = None  # 0..1, vLLM's kv_cache_usage_perc
    completed: float | None = None  # vLLM's request_success_total: requests it has finished

    @property
    def known(self) -> bool:
        return self.running is not None and self.waiting is not None

    @property
    def work(self) -> float | None:
        if self.running is None or self.waiting is None:
            return None
        return self.running + self.waiting


@dataclass(frozen=True, slots=True)
class Observation:
    ready: tuple[ReplicaLoad, ...] = ()
    starting: int = 0
    draining: int = 0
    activator_queued: int = 0  # summed over activators
    activator_in_flight: int = 0  # summed over activators
    poked: bool = False  # a request arrived while the revision had no replica with room
    # Requests the activators accepted since the previous observation (the growth of their
    # ``requests_total`` counters). The gauges are read once a tick, so a request that starts
    # and ends between two ticks (tens of milliseconds on a fast replica) never shows in them;
    # Knative's per-second concurrency averages do see it. See ``ARRIVAL_SEEN``.
    arrivals: int = 0

    @property
    def current(self) -> int:
        """Replicas that are or will be serving: what ``desired`` is compared against."""
        return len(self.ready) + self.starting


@dataclass(frozen=True, slots=True)
class ScalerState:
    samples: tuple[tuple[float, float], ...] = ()  # (now, observed load) within the stable window
    panic_since: float | None = None  # last time the panic threshold was crossed
    max_panic_replicas: int = 0
    zero_since: float | None = None  # first tick the windows asked for zero replicas
    desired_history: tuple[tuple[float, int], ...] = ()  # for the scale-down delay
    initialized: bool = False  # initial scale has been reached once
    # The learned keep-alive's gap history and idle clock (autoscaler.keepalive); persist it
    # with the revision's state (KeepAliveState.to_json) so a restart does not forget it.
    keepalive: KeepAliveState = field(default_factory=KeepAliveState)


@dataclass(frozen=True, slots=True)
class Decision:
    desired: int
    reason: str
    panic: bool = False
    observed: float = 0.0  # load averaged over the stable window
    observed_panic: float = 0.0  # load averaged over the panic window
    kv_cache_usage: float | None = None  # mean over replicas that answered
    # At zero with a pre-warm ahead (autoscaler.keepalive): the loop must keep ticking to
    # start it in time rather than rest until a poke.
    prewarm_pending: bool = False
    # The learned keep-alive's cover is over: a suspended last replica goes now, not after
    # ``stop_suspended_after_s`` (plan), so the product keeps what the policy scheduled.
    keepalive_over: bool = False


ARRIVAL_SEEN = 1e-3
"""The load a tick records when requests arrived since the last tick but none is in flight now:
enough that the stable window does not read zero (so the revision is not scaled to zero while
it is serving requests), too little to ask for a second replica. On the Azure conversation trace
split 64 ways (benchmarks/results/autoscaler_trace.md), ticks that only read the gauges saw
zero load on busy-but-fast revisions and scaled them to zero between requests 20 s apart."""


def target_per_replica(spec: AutoscalingSpec) -> float:
    return max(spec.target * spec.target_utilization, 1e-9)


def kv_capacity(spec: AutoscalingSpec, obs: Observation) -> float | None:
    """Requests one replica holds at ``kv_cache_target``, read off what vLLM reports now.

    A replica's KV cache, not a request count, bounds its batch: with ``running`` sequences at
    ``kv`` usage it holds about ``running * kv_cache_target / kv`` at the target. Summed over
    replicas so one long prompt on one replica does not swing it. Only trusted once the caches are
    at least half way to the target; below that the cache does not bind and the extrapolation
    would be noise.
    """
    known = [
        (r.running, r.kv_cache_usage)
        for r in obs.ready
        if r.running is not None and r.kv_cache_usage is not None
    ]
    if not known:
        return None
    running = sum(n for n, _ in known)
    kv = sum(k for _, k in known)
    if running <= 0 or kv / len(known) < spec.kv_cache_target / 2:
        return None
    return max(running * spec.kv_cache_target / kv, 1.0)


def observed_load(spec: AutoscalingSpec, obs: Observation) -> tuple[float, bool]:
    """The revision's load right now in the spec's metric, and whether any replica was unknown.

    ``concurrency`` is Knative's signal: requests the activators hold plus those in flight.
    ``llm`` is vLLM's own running + waiting per replica plus the activators' queue; a replica that
    did not answer is covered by the activators' in-flight count, never read as idle.
    """
    unknown = any(not r.known for r in obs.ready)
    if spec.metric == "concurrency":
        return float(obs.activator_queued + obs.activator_in_flight), unknown
    known = sum(r.work or 0.0 for r in obs.ready)
    if unknown:
        known = max(known, float(obs.activator_in_flight))
    return known + obs.activator_queued, unknown


def _mean_kv(obs: Observation) -> float | None:
    values = [r.kv_cache_usage for r in obs.ready if r.kv_cache_usage is not None]
    return sum(values) / len(values) if values else None


def _window_mean(samples: tuple[tuple[float, float], ...], since: float) -> float:
    values = [v for t, v in samples if t > since]
    return sum(values) / len(values) if values else 0.0


def _clamp(spec: AutoscalingSpec, n: int) -> int:
    n = max(n, spec.min_scale)
    if spec.max_scale > 0:
        n = min(n, spec.max_scale)
    return n


def keepalive_spec(spec: AutoscalingSpec) -> KeepAliveSpec:
    """The keep-alive policy's spec for a revision: its annotations; the suspended tier is the
    cover tier only where the revision has suspension on (``suspend_after_s``)."""
    suspend = spec.suspend_after_s > 0
    return KeepAliveSpec(
        tiers=suspend,
        prewarm=spec.keepalive_prewarm,
        wait_value_s=spec.keepalive_wait_value_s,
        cold_start_s=spec.keepalive_cold_start_s,
        min_gaps=spec.keepalive_min_gaps,
        ready_hold_s=spec.suspend_after_s if suspend else None,
    )


def _learned_keepalive(
    spec: AutoscalingSpec, obs: Observation, state: ScalerState, now: float, active: bool
) -> tuple[KeepAliveStep | None, ScalerState]:
    """One step of the learned keep-alive, once the revision has had a replica; ``None`` while
    its history is not representative (Knative's rule decides then) or with ``fixed``."""
    if spec.keepalive != "learned":
        return None, state
    if not (active or obs.current > 0 or state.keepalive.idle_since is not None):
        return None, state  # never served: no gap to learn from yet
    ka, ka_state = keepalive_step(keepalive_spec(spec), state.keepalive, busy=active, now=now)
    state = replace(state, keepalive=ka_state)
    return (ka if ka.schedule.learned else None), state


def decide(
    spec: AutoscalingSpec, obs: Observation, state: ScalerState, now: float
) -> tuple[Decision, ScalerState]:
    load, unknown = observed_load(spec, obs)
    if obs.arrivals > 0:
        load = max(load, ARRIVAL_SEEN)
    kv = _mean_kv(obs)
    panic_window = spec.window_s * spec.panic_window_percentage / 100.0
    samples = (*(s for s in state.samples if s[0] > now - spec.window_s), (now, load))
    stable = _window_mean(samples, now - spec.window_s)
    panicky = _window_mean(samples, now - panic_window)
    state = replace(state, samples=samples)
    active = load > 0 or obs.poked

    ready = len(obs.ready)
    # Knative divides by at least one pod so that a queue at zero reads as pressure.
    base = max(1, ready)
    target = target_per_replica(spec)
    capacity = kv_capacity(spec, obs) if spec.metric == "llm" else None
    kv_bound = capacity is not None and capacity < target
    if capacity is not None and capacity < target:
        # The KV cache fills before the request target: size replicas by what fits.
        target = capacity
    max_up = math.ceil(spec.max_scale_up_rate * base)
    max_down = math.floor(base / spec.max_scale_down_rate) if ready > 0 else 0

    want_stable = math.ceil(stable / target)
    want_panic = math.ceil(panicky / target)
    stable_n = min(max(want_stable, max_down), max_up)
    panic_n = min(max(want_panic, max_down), max_up)
    if spec.activation_scale > 1:
        if want_stable > 0:
            stable_n = max(stable_n, spec.activation_scale)
        if want_panic > 0:
            panic_n = max(panic_n, spec.activation_scale)

    over_threshold = want_panic / base >= spec.panic_threshold_percentage / 100.0
    if over_threshold:
        state = replace(state, panic_since=now)
    elif state.panic_since is not None and now - state.panic_since > spec.window_s:
        # The surge has made its way into the stable window: back to stable mode.
        state = replace(state, panic_since=None, max_panic_replicas=0)
    panic = state.panic_since is not None

    desired = stable_n
    per = f"{target:.1f}/replica" + (" (what the kv-cache holds)" if kv_bound else "")
    reason = f"load {stable:.1f} over {spec.window_s:g}s at target {per}"
    if panic:
        desired = max(stable_n, panic_n, state.max_panic_replicas)
        state = replace(state, max_panic_replicas=desired)
        reason = (
            f"panic: load {panicky:.1f} over {panic_window:g}s at target {per}"
            f" (no scale-down while panicking)"
        )

    kv_full = spec.metric == "llm" and kv is not None and kv > spec.kv_cache_target
    if kv_full and ready > 0 and desired < ready + 1:
        # vLLM queues new requests once the KV cache is full whatever the request count says.
        desired = ready + 1
        reason = f"kv-cache {kv:.0%} above {spec.kv_cache_target:.0%}: one more replica"

    if unknown and desired < obs.current:
        desired = obs.current
        reason = "metrics unknown for a replica: holding"

    if spec.metric == "llm" and desired < obs.current and not panic:
        band_n = min(obs.current, math.ceil(stable / (target * (1 - SCALE_DOWN_TOLERANCE))))
        if band_n > desired:
            desired = band_n
            reason = (
                f"holding {band_n}: load {stable:.1f} is within {SCALE_DOWN_TOLERANCE:.0%}"
                f" of the target for fewer ({per})"
            )
    if spec.metric == "llm" and desired < obs.current:
        # The stable average lags: never shrink below what the work held right now needs.
        now_n = min(obs.current, math.ceil(load / target))
        if now_n > desired:
            desired = now_n
            reason = f"holding {now_n}: current work {load:.0f} needs them at {per}"
        if obs.starting > 0 and ready > 0 and desired >= ready:
            # A replica still starting was asked for by a recent decision and has paid most of
            # its cold start; when load is merely flat (still needs every ready one) keep it
            # instead of flapping between N and N+1 and paying the cold start again.
            desired = obs.current
            reason = f"keeping {obs.starting} starting: load has not fallen below the ready ones"

    if spec.scale_down_delay_s > 0:
        history = (
            *(h for h in state.desired_history if h[0] > now - spec.scale_down_delay_s),
            (now, desired),
        )
        state = replace(state, desired_history=history)
        delayed = max(n for _, n in history)
        if delayed > desired:
            reason = f"scale-down delay {spec.scale_down_delay_s:g}s: holding {delayed}"
            desired = delayed

    if obs.poked and obs.current == 0:
        # The fast path: a request is waiting at zero, so start without waiting for a window.
        floor = max(1, spec.activation_scale)
        if desired < floor:
            desired = floor
            reason = "poked at zero: a request is waiting"

    if not state.initialized:
        # A new revision first reaches its initial scale (Knative's rule); only then do the
        # windows take over, so a slow first start is not scaled away under it.
        if ready >= spec.initial_scale:
            state = replace(state, initialized=True)
        elif desired < spec.initial_scale:
            desired = spec.initial_scale
            reason = f"initial scale {spec.initial_scale}"

    hold = max(spec.scale_to_zero_grace_s, spec.scale_to_zero_retention_s)
    desired = _clamp(spec, desired)

    # Scale to zero only after the windows have asked for zero for the grace period (and the
    # last replica's retention), as Knative does once the activator is in the path.
    # For both metrics: a burst is evidence of more bursts, and the stable window is that
    # evidence; dropping the last replica as soon as vLLM is idle paid extra cold starts when
    # bursts came 30-90 s apart (benchmarks/autoscaler_trace.py).
    learned, state = _learned_keepalive(spec, obs, state, now, active)
    prewarm_pending = keepalive_over = False
    if learned is not None and not active and desired <= 1 and spec.min_scale == 0:
        # The revision's own gaps decide its last replica (autoscaler.keepalive): kept while
        # the schedule says ready or suspended, dropped after, started again for a pre-warm.
        keep = learned.tier in (Tier.READY, Tier.SUSPENDED, Tier.STARTING)
        sched = learned.schedule
        state = replace(state, zero_since=None)
        if obs.current > 0:
            desired = 1 if keep else 0
            keepalive_over = not keep
            reason = f"keep-alive ({sched.reason}): idle {learned.idle_s:.0f}s, " + (
                "keeping the last replica" if keep else "scale to zero"
            )
        elif keep and sched.prewarm_at_s is not None:
            desired = 1
            reason = f"pre-warm ({sched.reason}): idle {learned.idle_s:.0f}s"
        else:
            desired = 0
            reason = "idle at zero"
            prewarm_pending = sched.prewarm_at_s is not None and learned.idle_s < sched.prewarm_at_s
    elif desired == 0 and (obs.current > 0 or ready > 0):
        zero_since = state.zero_since if state.zero_since is not None else now
        state = replace(state, zero_since=zero_since)
        if now - zero_since < hold:
            desired = 1
            reason = f"idle; scale to zero in {hold - (now - zero_since):.0f}s (grace period)"
        else:
            reason = f"idle for {now - zero_since:.0f}s: scale to zero"
    elif desired > 0 or active:
        state = replace(state, zero_since=None)
    if desired == 0 and obs.current == 0:
        reason = "idle at zero"
    desired = _clamp(spec, desired)

    decision = Decision(
        desired=desired,
        reason=reason,
        panic=panic,
        observed=stable,
        observed_panic=panicky,
        kv_cache_usage=kv,
        prewarm_pending=prewarm_pending and desired == 0,
        keepalive_over=keepalive_over and desired == 0,
    )
    return decision, state
