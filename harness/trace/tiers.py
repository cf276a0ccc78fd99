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

import heapq
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from autoscaler.keepalive import GapModel, KeepAliveSpec, Schedule, Tier, evict_order, schedule
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
        # Rounded so that a spell ending where an eviction starts another does not overlap it.
        events = sorted(
            [(round(a, 6), 1) for a, _ in self.suspended_spells]
            + [(round(b, 6), -1) for _, b in self.suspended_spells]
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


class ServiceSim:
    """One service's requests, one at a time (``arrive``), under ``policy``; the first request
    is served by a cold start on construction. ``evicted_idle`` (``arrive``, ``finish``): the
    idle time at which a node's budget evicted the gap's suspended replica."""

    def __init__(
        self,
        policy: GapPolicy,
        trace: Sequence[TraceRequest],
        model: ReplicaModel,
        tiers: TierModel,
        draw_offset: int = 0,
        standby_after_evict_s: float = 0.0,
    ) -> None:
        self.policy, self.model, self.tiers = policy, model, tiers
        self.run = TierRun(policy.name)
        self.standby_after_evict_s = standby_after_evict_s
        self._draws = {"zero": draw_offset, "standby": draw_offset, "suspended": draw_offset}
        first = trace[0]
        cold = self._draw("zero")
        run = self.run
        run.requests += 1
        run.first_requests += 1
        run.first_requests_over_target += int(cold > tiers.target_s)
        run.accelerator_s += cold
        self.ready_at = first.arrival + cold
        self.first_ready = self.ready_at
        self.busy_end = self.ready_at + service_time(model, first)
        run.accelerator_s += self.busy_end - first.arrival - cold

    def _draw(self, kind: str) -> float:
        seq = {
            "zero": self.tiers.cold_start_s,
            "standby": self.tiers.standby_start_s,
            "suspended": self.tiers.wake_s,
        }[kind]
        x = seq[self._draws[kind] % len(seq)]
        self._draws[kind] += 1
        return x

    def gap_schedule(self, evicted_idle: float | None = None) -> Schedule:
        sched = self.policy.next_gap()
        if evicted_idle is None:
            return sched
        kept = [(t, tier) for t, tier in sched.phases if t < evicted_idle]
        after: list[tuple[float, Tier]] = []
        if self.standby_after_evict_s > 0:
            after.append((evicted_idle, Tier.STANDBY))
        after.append((evicted_idle + self.standby_after_evict_s, Tier.ZERO))
        return Schedule(tuple(kept + after), min(sched.keep_s, evicted_idle), None, sched.learned)

    def arrive(self, req: TraceRequest, evicted_idle: float | None = None) -> None:
        run, tiers = self.run, self.tiers
        run.requests += 1
        d = service_time(self.model, req)
        if req.arrival < self.busy_end:
            # The replica is busy, or still starting for an earlier request: this one is held
            # until it serves.
            held = self.ready_at > req.arrival
            wait = max(tiers.warm_wait_s, self.ready_at - req.arrival)
            found = "held" if held else "ready"
            new_end = max(self.busy_end, req.arrival + wait + d)
            run.accelerator_s += new_end - self.busy_end
            self.busy_end = new_end
        else:
            gap = req.arrival - self.busy_end
            sched = self.gap_schedule(evicted_idle)
            _charge(run, sched, gap, self.busy_end)
            tier, phase_end = sched.at(gap)
            if sched.prewarm_at_s is not None and gap >= sched.prewarm_at_s - _start_len(sched):
                run.prewarms += 1
            if tier is Tier.READY:
                wait, found = tiers.warm_wait_s, "ready"
            elif tier is Tier.SUSPENDED:
                wait, found = self._draw("suspended"), "suspended"
            elif tier is Tier.STANDBY:
                wait, found = self._draw("standby"), "standby"
            elif tier is Tier.STARTING:
                wait, found = phase_end - gap, "starting"
            else:
                wait, found = self._draw("zero"), "zero"
            run.accelerator_s += wait + d
            self.policy.observe(gap)
            self.ready_at = req.arrival + wait
            self.busy_end = self.ready_at + d
        run.found[found] = run.found.get(found, 0) + 1
        run.wait_s_by_tier[found] = run.wait_s_by_tier.get(found, 0.0) + wait
        if wait > tiers.target_s:
            run.over_target += 1
            run.over_by_tier[found] = run.over_by_tier.get(found, 0) + 1
            run.over_target_behind_first += int(req.arrival < self.first_ready)

    def finish(self, end_s: float, evicted_idle: float | None = None) -> TierRun:
        if end_s > self.busy_end:
            _charge(self.run, self.gap_schedule(evicted_idle), end_s - self.busy_end, self.busy_end)
        return self.run


def simulate_service(
    policy: GapPolicy,
    trace: Sequence[TraceRequest],
    model: ReplicaModel,
    tiers: TierModel,
    end_s: float,
    draw_offset: int = 0,
) -> TierRun:
    """One service's requests under ``policy``; idle time charged until ``end_s``."""
    if not trace:
        return TierRun(policy.name)
    sim = ServiceSim(policy, trace, model, tiers, draw_offset)
    for req in trace[1:]:
        sim.arrive(req)
    return sim.finish(end_s)


def simulate_budget(
    specs: KeepAliveSpec,
    services: Sequence[Sequence[TraceRequest]],
    model: ReplicaModel,
    tiers: TierModel,
    end_s: float,
    name: str,
    budget: int,
) -> TierRun:
    """Every service under the learned policy on one node that holds at most ``budget``
    suspended replicas: when one more would be suspended, the node evicts the one of least
    expected loss (``autoscaler.keepalive.evict_order``) to a standby (for its break-even) and
    then zero. Requests are taken in time order across services."""
    standby = (
        (specs.cold_start_s - specs.standby_start_s) / specs.standby_rate
        if specs.tiers and specs.standby_rate > 0 and specs.standby_start_s < specs.cold_start_s
        else 0.0
    )
    sims: dict[int, ServiceSim] = {}
    policies: dict[int, LearnedKeepAlive] = {}
    nxt: dict[int, int] = {}
    for k, reqs in enumerate(services):
        if reqs:
            policies[k] = LearnedKeepAlive(name, specs)
            sims[k] = ServiceSim(policies[k], reqs, model, tiers, k, standby)
            nxt[k] = 1
    evicted: dict[int, float] = {}  # service -> idle time of its eviction in the current gap
    heap: list[tuple[float, int, int]] = []  # (time, kind 0 = suspend 1 = arrival, service)
    gen: dict[int, float] = {}  # service -> gap start the pending suspend event belongs to

    def push_suspend(k: int) -> None:
        sim = sims[k]
        sched = sim.gap_schedule()
        start = next((t for t, tier in sched.phases if tier is Tier.SUSPENDED), None)
        gen[k] = sim.busy_end
        if start is not None:
            heapq.heappush(heap, (sim.busy_end + start, 0, k))

    for k in sims:
        push_suspend(k)
        if nxt[k] < len(services[k]):
            heapq.heappush(heap, (services[k][1].arrival, 1, k))
    active: dict[int, float] = {}  # suspended now -> when that spell ends
    while heap:
        t, kind, k = heapq.heappop(heap)
        sim = sims[k]
        if kind == 1:
            before = sim.busy_end
            sim.arrive(services[k][nxt[k]], evicted.pop(k, None) if t >= before else None)
            active.pop(k, None)
            nxt[k] += 1
            if nxt[k] < len(services[k]):
                heapq.heappush(heap, (services[k][nxt[k]].arrival, 1, k))
            if sim.busy_end != before:
                evicted.pop(k, None)
                push_suspend(k)
            continue
        if gen.get(k) != sim.busy_end or t < sim.busy_end:
            continue  # a later request moved the gap
        sched = sim.gap_schedule()
        until = sim.busy_end + sched.keep_s
        if nxt[k] < len(services[k]):
            until = min(until, services[k][nxt[k]].arrival)
        for j in [j for j, e in active.items() if e <= t]:
            del active[j]
        if until <= t:
            continue
        active[k] = until
        if len(active) > budget:
            cands = [(str(j), policies[j].gaps, t - sims[j].busy_end) for j in active]
            victim = int(evict_order(specs, cands)[0])
            evicted[victim] = t - sims[victim].busy_end
            del active[victim]
    total = TierRun(name)
    for k, sim in sims.items():
        total.add(sim.finish(end_s, evicted.get(k)))
    return total


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
