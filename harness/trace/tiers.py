"""Keep-alive across tiers, one idle gap at a time: the simulator issue 24's comparison runs on.

On the measured replica one replica serves a whole service of the split with room to spare
(``benchmarks/results/autoscaler_trace.md``: every over-target wait there is a request that
arrived at zero), so what separates the policies is what the revision's last replica is doing when
the next request comes: ready, suspended, a warm-pool standby kept for it, or nothing. This
simulator replays each service's requests and, for every idle gap, asks the policy for its
``Schedule`` (``autoscaler.keepalive``), charges each phase of it, and gives the request the wait
of the tier it finds:

- ``READY``: ``warm_wait_s`` (the full simulator's warm waits are under 0.1 s on this replica);
- ``SUSPENDED``: a measured wake (``results/coldstart_suspended.json``, ``torpor_suspended``);
- ``STANDBY``: a measured warm-pool start (``results/coldstart.json``, ``torpor_warm``);
- ``ZERO``: a measured cold start (``results/coldstart.json``, ``torpor_plain``);
- ``STARTING`` (a pre-warm under way): what is left of its start;
- ``held``: a request that comes while an earlier one's start is under way waits for its end.

Costs, separately: **accelerator-seconds** (a replica starting, waking, ready or busy),
**suspended-seconds** and **standby-seconds**. Each request holds the replica for its service
time at batch 1 (prefill at the measured slope plus its output at the measured batch-1 decode
rate); requests that overlap extend the busy spell. Each service's first request (the revision
has just been deployed, at zero, with no history) is counted apart from ``over_target``.

Policies: a fixed keep-alive (``fixed``: Knative's KPA and torpor's old rule, their keep-alive
measured by running the full simulator's own ``KpaPolicy``/``TorporPolicy`` on one request,
``probe_keepalive``), the learned one (``learned``: ``autoscaler.keepalive``, the product's
code), and the clairvoyant ``oracle``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from autoscaler.keepalive import GapModel, KeepAliveSpec, Schedule, Tier, schedule
from harness.trace.azure import TraceRequest
from harness.trace.policies import Policy
from harness.trace.replica import ReplicaModel
from harness.trace.sim import simulate


@dataclass(frozen=True, slots=True)
class TierModel:
    """Measured latencies of each way back to serving (drawn in turn), and the wait target."""

    cold_start_s: tuple[float, ...]
    standby_start_s: tuple[float, ...]
    wake_s: tuple[float, ...]
    target_s: float = 2.0
    warm_wait_s: float = 0.0

    def __post_init__(self) -> None:
        if not (self.cold_start_s and self.standby_start_s and self.wake_s):
            raise ValueError("every tier needs at least one measured latency")


@dataclass
class TierRun:
    policy: str
    requests: int = 0
    over_target: int = 0  # each service's first request excluded
    first_requests: int = 0
    first_requests_over_target: int = 0
    accelerator_s: float = 0.0
    suspended_s: float = 0.0
    standby_s: float = 0.0
    # How each request (first ones excluded) found the revision, and its waits by that tier.
    found: dict[str, int] = field(default_factory=dict)
    over_by_tier: dict[str, int] = field(default_factory=dict)
    wait_s_by_tier: dict[str, float] = field(default_factory=dict)
    prewarms: int = 0  # starts the policy made before a request (not counted as cold starts)
    # Of ``over_target``: requests held behind their service's first cold start, which no
    # policy can avoid (the oracle has them too).
    over_target_behind_first: int = 0
    # (start, end) of every suspended spell, all services: what a node budget would have to hold.
    suspended_spells: list[tuple[float, float]] = field(default_factory=list)

    def suspended_peak(self) -> int:
        """The most replicas suspended at once (every service on one node)."""
        events = sorted(
            [(a, 1) for a, _ in self.suspended_spells] + [(b, -1) for _, b in self.suspended_spells]
        )
        peak = cur = 0
        for _, d in events:
            cur += d
            peak = max(peak, cur)
        return peak

    @property
    def cold_starts(self) -> int:
        """Starts a request waited for: from zero or from a standby (first requests excluded)."""
        return self.found.get("zero", 0) + self.found.get("standby", 0)

    def cost(self, rate: float, standby_rate: float | None = None) -> float:
        """Accelerator-seconds plus suspended- and standby-seconds at ``rate`` (standby at
        ``standby_rate``, by default the same)."""
        sr = rate if standby_rate is None else standby_rate
        return self.accelerator_s + rate * self.suspended_s + sr * self.standby_s

    def add(self, other: TierRun) -> None:
        self.requests += other.requests
        self.over_target += other.over_target
        self.first_requests += other.first_requests
        self.first_requests_over_target += other.first_requests_over_target
        self.accelerator_s += other.accelerator_s
        self.suspended_s += other.suspended_s
        self.standby_s += other.standby_s
        self.prewarms += other.prewarms
        self.over_target_behind_first += other.over_target_behind_first
        self.suspended_spells += other.suspended_spells
        for mine, theirs in (
            (self.found, other.found),
            (self.over_by_tier, other.over_by_tier),
        ):
            for k, v in theirs.items():
                mine[k] = mine.get(k, 0) + v
        for k, w in other.wait_s_by_tier.items():
            self.wait_s_by_tier[k] = self.wait_s_by_tier.get(k, 0.0) + w


class GapPolicy(Protocol):
    name: str

    def next_gap(self) -> Schedule:
        """The schedule of the idle gap that starts now."""

    def observe(self, gap_s: float) -> None:
        """The gap ended after ``gap_s`` with a request."""


@dataclass
class FixedKeepAlive:
    """Ready for ``keep_s`` after the last request, then zero (Knative's rule, whatever its
    windows, delay and grace add up to)."""

    name: str
    keep_s: float

    def next_gap(self) -> Schedule:
        return Schedule(((0.0, Tier.READY), (self.keep_s, Tier.ZERO)), self.keep_s)

    def observe(self, gap_s: float) -> None:
        return None


@dataclass
class LearnedKeepAlive:
    """torpor's policy: ``autoscaler.keepalive`` as the product runs it."""

    name: str
    spec: KeepAliveSpec
    gaps: GapModel = field(default_factory=GapModel)
    _cached: Schedule | None = None

    def next_gap(self) -> Schedule:
        if self._cached is None:
            self._cached = schedule(self.spec, self.gaps)
        return self._cached

    def observe(self, gap_s: float) -> None:
        self.gaps = self.gaps.observe(self.spec, gap_s)
        self._cached = None


def service_time(model: ReplicaModel, req: TraceRequest) -> float:
    """A request alone on a replica: its prefill at the measured slope, its output at the
    measured batch-1 decode rate."""
    return req.prompt * model.prefill_s_per_token + req.output / model.decode_tps(1)


def _charge(run: TierRun, sched: Schedule, upto: float, at: float = 0.0) -> None:
    """The phases of ``sched`` over ``[0, upto)`` of a gap that began at ``at``, into the run's
    costs."""
    phases = sched.phases
    for i, (start, tier) in enumerate(phases):
        if start >= upto:
            break
        end = min(upto, phases[i + 1][0] if i + 1 < len(phases) else math.inf)
        span = max(0.0, end - start)
        if tier in (Tier.READY, Tier.STARTING):
            run.accelerator_s += span
        elif tier is Tier.SUSPENDED:
            run.suspended_s += span
            if span > 0:
                run.suspended_spells.append((at + start, at + start + span))
        elif tier is Tier.STANDBY:
            run.standby_s += span


def simulate_service(
    policy: GapPolicy,
    trace: Sequence[TraceRequest],
    model: ReplicaModel,
    tiers: TierModel,
    end_s: float,
    draw_offset: int = 0,
) -> TierRun:
    """One service's requests under ``policy``; idle time charged until ``end_s``."""
    run = TierRun(policy.name)
    if not trace:
        return run
    draws = {"zero": draw_offset, "standby": draw_offset, "suspended": draw_offset}

    def draw(kind: str) -> float:
        seq = {
            "zero": tiers.cold_start_s,
            "standby": tiers.standby_start_s,
            "suspended": tiers.wake_s,
        }[kind]
        x = seq[draws[kind] % len(seq)]
        draws[kind] += 1
        return x

    first = trace[0]
    cold = draw("zero")
    run.requests += 1
    run.first_requests += 1
    run.first_requests_over_target += int(cold > tiers.target_s)
    run.accelerator_s += cold
    ready_at = first.arrival + cold
    first_ready = ready_at
    busy_end = ready_at + service_time(model, first)
    run.accelerator_s += busy_end - first.arrival - cold
    for req in trace[1:]:
        run.requests += 1
        d = service_time(model, req)
        if req.arrival < busy_end:
            # The replica is busy, or still starting for an earlier request: this one is held
            # until it serves.
            held = ready_at > req.arrival
            wait = max(tiers.warm_wait_s, ready_at - req.arrival)
            found = "held" if held else "ready"
            new_end = max(busy_end, req.arrival + wait + d)
            run.accelerator_s += new_end - busy_end
            busy_end = new_end
        else:
            gap = req.arrival - busy_end
            sched = policy.next_gap()
            _charge(run, sched, gap, busy_end)
            tier, phase_end = sched.at(gap)
            if sched.prewarm_at_s is not None and gap >= sched.prewarm_at_s - _start_len(sched):
                run.prewarms += 1
            if tier is Tier.READY:
                wait, found = tiers.warm_wait_s, "ready"
            elif tier is Tier.SUSPENDED:
                wait, found = draw("suspended"), "suspended"
            elif tier is Tier.STANDBY:
                wait, found = draw("standby"), "standby"
            elif tier is Tier.STARTING:
                wait, found = phase_end - gap, "starting"
            else:
                wait, found = draw("zero"), "zero"
            run.accelerator_s += wait + d
            policy.observe(gap)
            ready_at = req.arrival + wait
            busy_end = ready_at + d
        run.found[found] = run.found.get(found, 0) + 1
        run.wait_s_by_tier[found] = run.wait_s_by_tier.get(found, 0.0) + wait
        if wait > tiers.target_s:
            run.over_target += 1
            run.over_by_tier[found] = run.over_by_tier.get(found, 0) + 1
            run.over_target_behind_first += int(req.arrival < first_ready)
    if end_s > busy_end:
        _charge(run, policy.next_gap(), end_s - busy_end, busy_end)
    return run


def _start_len(sched: Schedule) -> float:
    for i, (start, tier) in enumerate(sched.phases):
        if tier is Tier.STARTING and i + 1 < len(sched.phases):
            return sched.phases[i + 1][0] - start
    return 0.0


def simulate_all(
    make: Callable[[], GapPolicy],
    services: Sequence[Sequence[TraceRequest]],
    model: ReplicaModel,
    tiers: TierModel,
    end_s: float,
    name: str,
) -> TierRun:
    total = TierRun(name)
    for k, reqs in enumerate(services):
        total.add(simulate_service(make(), reqs, model, tiers, end_s, draw_offset=k))
    return total


# -- the clairvoyant oracle ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OracleCurve:
    """The oracle's cost (at one exchange rate) for each number of over-target waits it may
    allow: ``cost[k]`` with ``k`` waits (the gaps where allowing one saves the most)."""

    run: TierRun  # with no over-target wait beyond first requests
    cost: tuple[float, ...]

    def cost_at(self, waits: int) -> float:
        return self.cost[min(max(0, waits), len(self.cost) - 1)]


def oracle(
    services: Sequence[Sequence[TraceRequest]],
    model: ReplicaModel,
    tiers: TierModel,
    end_s: float,
    rate: float,
    use_tiers: bool = True,
    name: str = "oracle",
) -> OracleCurve:
    """Knows every arrival. For each gap it keeps the replica in the tier that is cheapest at
    ``rate`` among those that serve the next request in time (ready; suspended, woken just
    before; a standby or zero, started just before so the request waits for nothing), and pays
    exactly one start before the next arrival when it drops. Latencies: the mean of each tier's
    measurements. After the last request it goes to zero at once."""
    cold = sum(tiers.cold_start_s) / len(tiers.cold_start_s)
    warm = sum(tiers.standby_start_s) / len(tiers.standby_start_s)
    wake = sum(tiers.wake_s) / len(tiers.wake_s)
    run = TierRun(name)
    savings: list[float] = []
    for reqs in services:
        if not reqs:
            continue
        run.requests += 1
        run.first_requests += 1
        run.first_requests_over_target += int(cold > tiers.target_s)
        run.accelerator_s += cold
        ready_at = reqs[0].arrival + cold
        busy_end = ready_at + service_time(model, reqs[0])
        run.accelerator_s += busy_end - ready_at
        for req in reqs[1:]:
            run.requests += 1
            d = service_time(model, req)
            if req.arrival < busy_end:
                # Held behind the first request's cold start (no policy avoids those) or busy.
                wait = max(0.0, ready_at - req.arrival)
                new_end = max(busy_end, req.arrival + wait + d)
                run.accelerator_s += new_end - busy_end
                busy_end = new_end
                found = "held" if wait > 0 else "ready"
                run.found[found] = run.found.get(found, 0) + 1
                if wait > tiers.target_s:
                    run.over_target += 1
                    run.over_by_tier[found] = run.over_by_tier.get(found, 0) + 1
                    run.over_target_behind_first += 1  # the oracle's only waits
                continue
            g = req.arrival - busy_end
            # (cost at rate, accelerator-s, suspended-s, standby-s, tier)
            options: list[tuple[float, float, float, float, str]] = [(g, g, 0.0, 0.0, "ready")]
            if use_tiers and g >= wake:
                options.append((wake + rate * (g - wake), wake, g - wake, 0.0, "suspended"))
            if use_tiers and g >= warm:
                options.append((warm + rate * (g - warm), warm, 0.0, g - warm, "standby"))
            if g >= cold:
                options.append((cold, cold, 0.0, 0.0, "zero"))
            best = min(options)
            run.accelerator_s += best[1] + d
            run.suspended_s += best[2]
            if best[2] > 0:
                run.suspended_spells.append((busy_end, busy_end + best[2]))
            run.standby_s += best[3]
            run.found[best[4]] = run.found.get(best[4], 0) + 1
            # Allowing a wait here: go to zero at once, start when the request comes.
            savings.append(best[0] - cold)
            ready_at = req.arrival
            busy_end = req.arrival + d
    base = run.cost(rate)
    cuts = sorted((s for s in savings if s > 0), reverse=True)
    costs = [base]
    for s in cuts:
        costs.append(costs[-1] - s)
    return OracleCurve(run, tuple(costs))


# -- a fixed policy's keep-alive, measured on the full simulator ----------------------------------


def probe_keepalive(make: Callable[[], Policy], model: ReplicaModel) -> float:
    """Seconds a policy keeps its replica after one short request's work ends, measured by
    running it in the full simulator (``harness.trace.sim``) on that one request: its
    replica-seconds less the cold start and the request's service time."""
    req = TraceRequest(0.0, 1, 1)
    run = simulate(make(), [req], model, end_s=0.0)
    cold = model.cold_start_s[0]
    return max(0.0, run.replica_seconds - cold - service_time(model, req))
