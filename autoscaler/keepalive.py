"""When an idle revision's last replica steps down a tier, and when it comes back before a request.

A pure policy (issue 24), like ``decide``: no clock, no I/O; the caller passes the idle time.
Per revision it keeps a bounded-memory histogram of its idle gaps (``GapModel``: the time from the
revision going idle to its next request), the hybrid histogram policy of Shahrad et al. ("Serverless
in the Wild", USENIX ATC 2020) made cost-aware:

- **Tiers.** An idle replica is ``READY`` (holds the accelerator), ``SUSPENDED`` (frozen in place;
  wakes in well under the wait target; costs ``suspend_rate`` accelerator-seconds per second, the
  memory it keeps), ``STANDBY`` (the revision at zero with a warm-pool standby kept for it: a
  shorter cold start, ``standby_rate`` per second) or ``ZERO`` (a full cold start).
- **Keep-alive as rent-or-buy with a learned distribution.** The "cover" tier is the cheapest one
  that serves within the wait target (``SUSPENDED`` with tiers, ``READY`` without). It is kept for
  the ``K`` that minimises the expected cost of one gap under the histogram: ``rate x E[min(gap,
  K)] + (cold_start_s + wait_value_s) x P(gap > K)``, where a request that finds the revision at
  zero costs its cold start (accelerator-seconds) plus ``wait_value_s`` (what an over-target wait
  is worth, in accelerator-seconds: the one price the operator sets). With no history (fewer than
  ``min_gaps`` gaps, or most of them beyond the histogram's range) ``K`` is the classic rent-or-buy
  break-even ``(cold_start_s + wait_value_s) / rate``, never worse than 2x the best fixed choice.
- **Pre-warm.** If the histogram's ``head_pct`` percentile (Shahrad's 5th) is long enough, the
  replica may instead drop at once and start again so that it is in the cover tier from that
  percentile on; taken only when its expected cost is lower.
- **The cascade.** ``READY`` for ``ready_hold_s`` (a burst's next request), then the cover tier
  until ``K``, then ``STANDBY`` until its own break-even (the cold start it saves over its cost
  per second), then ``ZERO``. A tier whose rate is not below the one above it is skipped.
- **A node budget** for suspended replicas is the caller's: ``evict_order`` ranks suspended
  revisions by the expected cost of losing them.

Nothing here assumes a trace's shape: bins, range and the fallback come from the spec, the
rest from the revision's own gaps. ``GapModel.to_json``/``from_json`` persist it.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


class Tier(enum.Enum):
    READY = "ready"
    SUSPENDED = "suspended"
    STANDBY = "standby"
    ZERO = "zero"
    STARTING = "starting"  # a pre-warm under way: the replica holds the accelerator, not yet ready


@dataclass(frozen=True, slots=True)
class KeepAliveSpec:
    """The policy's knobs (``torpor.dev/keepalive-*`` annotations, ``torpor.manifest``)."""

    enabled: bool = True
    tiers: bool = True  # suspended and standby tiers allowed; False: ready or zero only
    prewarm: bool = True
    wait_value_s: float = 60.0  # an over-target wait, in accelerator-seconds
    # Ready after the last request before stepping down; None: the break-even of ready against
    # the cover tier (a wake's accelerator time over the per-second saving).
    ready_hold_s: float | None = None
    cold_start_s: float = 17.0  # from zero to serving (torpor_plain, results/coldstart.md)
    standby_start_s: float = 5.0  # from a warm-pool standby (torpor_warm, same file)
    wake_s: float = 0.1  # a suspended replica to serving (results/coldstart_suspended.md)
    target_wait_s: float = 2.0  # a tier serves "in time" if it wakes within this
    suspend_rate: float = 0.1  # a suspended second, in accelerator-seconds
    standby_rate: float = 0.1  # a standby second, in accelerator-seconds
    bin_s: float = 10.0
    bins: int = 360  # range bins x bin_s (an hour by default)
    min_gaps: int = 8
    head_pct: float = 5.0
    margin: float = 0.1  # a learned keep-alive is stretched this much (Shahrad et al.'s 10%)
    # Without a representative history: None, the rent-or-buy break-even; a number, a fixed
    # keep-alive (the product keeps Knative's window-and-grace rule then: decide.keepalive_spec).
    fallback_keep_s: float | None = None
    tail_rent_or_buy: bool = True
    max_count: int = 2000  # counts halve beyond this: bounded memory, recent gaps weigh more

    def __post_init__(self) -> None:
        if self.bin_s <= 0 or self.bins < 1 or self.min_gaps < 1 or self.max_count < 2:
            raise ValueError("bin_s, bins, min_gaps and max_count must be positive")
        if self.suspend_rate < 0 or self.standby_rate < 0 or self.wait_value_s < 0:
            raise ValueError("rates and wait_value_s must not be negative")
        if not 0 <= self.head_pct < 100:
            raise ValueError("head_pct in [0, 100)")

    @property
    def range_s(self) -> float:
        return self.bin_s * self.bins


@dataclass(frozen=True, slots=True)
class GapModel:
    """A revision's idle gaps: counts per bin (sparse), and how many fell beyond the range."""

    counts: tuple[tuple[int, int], ...] = ()  # (bin, count), sorted by bin
    beyond: int = 0
    n: int = 0

    def observe(self, spec: KeepAliveSpec, gap_s: float) -> GapModel:
        gap_s = max(0.0, gap_s)
        counts = dict(self.counts)
        beyond = self.beyond
        if gap_s >= spec.range_s:
            beyond += 1
        else:
            b = int(gap_s // spec.bin_s)
            counts[b] = counts.get(b, 0) + 1
        n = self.n + 1
        if n > spec.max_count:
            counts = {b: c // 2 for b, c in counts.items() if c // 2 > 0}
            beyond //= 2
            n = sum(counts.values()) + beyond
        return GapModel(tuple(sorted(counts.items())), beyond, n)

    def representative(self, spec: KeepAliveSpec) -> bool:
        return self.n >= spec.min_gaps and self.beyond * 2 <= self.n

    def percentile(self, spec: KeepAliveSpec, pct: float) -> float:
        """The gap below which ``pct`` percent fall (bin lower edge); the range if beyond it."""
        need = pct / 100.0 * self.n
        seen = 0
        for b, c in self.counts:
            seen += c
            if seen > need:
                return b * spec.bin_s
        return spec.range_s

    def to_json(self) -> dict[str, Any]:
        return {"counts": [list(x) for x in self.counts], "beyond": self.beyond, "n": self.n}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> GapModel:
        counts = tuple(sorted((int(b), int(c)) for b, c in data.get("counts", [])))
        if any(b < 0 or c < 0 for b, c in counts):
            raise ValueError("negative bin or count in a persisted gap model")
        beyond, n = int(data.get("beyond", 0)), int(data.get("n", 0))
        return cls(counts, beyond, n)


@dataclass(frozen=True, slots=True)
class Schedule:
    """What one idle gap looks like, from the moment the revision went idle: ``phases`` are
    ``(from_s, tier)`` in order; the last one lasts for ever."""

    phases: tuple[tuple[float, Tier], ...]
    keep_s: float  # the cover tier's end
    prewarm_at_s: float | None = None  # when the cover tier is reached again after a drop
    learned: bool = False
    reason: str = ""

    def at(self, idle_s: float) -> tuple[Tier, float]:
        """The tier at ``idle_s`` into the gap and when that phase ends (``inf`` for the last)."""
        tier, end = self.phases[0][1], math.inf
        for i, (start, t) in enumerate(self.phases):
            if start <= idle_s:
                tier = t
                end = self.phases[i + 1][0] if i + 1 < len(self.phases) else math.inf
        return tier, end


@dataclass(frozen=True, slots=True)
class _Cover:
    tier: Tier
    rate: float


def _cover(spec: KeepAliveSpec) -> _Cover:
    if spec.tiers and spec.wake_s <= spec.target_wait_s and spec.suspend_rate < 1.0:
        return _Cover(Tier.SUSPENDED, spec.suspend_rate)
    return _Cover(Tier.READY, 1.0)


def _best_keep(
    spec: KeepAliveSpec, model: GapModel, rate: float, start: float, edges: Sequence[float]
) -> tuple[float, float]:
    """The ``K`` of ``edges`` (ascending, all above ``start``) with the lowest expected cost of
    one gap, and that cost: the cover tier held on ``[start, K)``; a request before ``start`` or
    at or after ``K`` finds the revision down (cold start + wait value); with ``start > 0`` the
    pre-warm's own cold start for every gap that reaches it. One sweep over the sparse bins."""
    miss = spec.cold_start_s + spec.wait_value_s
    items = [((b + 0.5) * spec.bin_s, float(c)) for b, c in model.counts]
    n = max(1, model.n)
    before = sum(c for g, c in items if g < start)
    items = [(g, c) for g, c in items if g >= start]
    above = sum(c for _, c in items) + model.beyond  # gaps >= start
    fixed = miss * before + (spec.cold_start_s * above if start > 0 else 0.0)
    held_below = 0.0  # sum of (g - start) over gaps in [start, K)
    left = above  # gaps >= K
    i = 0
    best = (math.inf, edges[-1] if edges else start)
    for k in edges:
        while i < len(items) and items[i][0] < k:
            g, c = items[i]
            held_below += c * (g - start)
            left -= c
            i += 1
        cost = (fixed + rate * (held_below + (k - start) * left) + miss * left) / n
        if cost < best[0]:
            best = (cost, k)
    return best


def _largest(spec: KeepAliveSpec, model: GapModel) -> float:
    """The upper edge of the highest bin with a gap in it."""
    return (model.counts[-1][0] + 1) * spec.bin_s if model.counts else 0.0


def ready_hold(spec: KeepAliveSpec) -> float:
    """How long the last replica stays ready after its work: the knob, or the break-even of
    ready (1 per second) against the cover tier (its rate, plus one wake's accelerator time)."""
    if spec.ready_hold_s is not None:
        return max(0.0, spec.ready_hold_s)
    cover = _cover(spec)
    if cover.tier is Tier.READY:
        return 0.0
    return spec.wake_s / max(1e-9, 1.0 - cover.rate)


def schedule(spec: KeepAliveSpec, model: GapModel) -> Schedule:
    """The tiers of the next idle gap, from the revision's gap history."""
    cover = _cover(spec)
    miss = spec.cold_start_s + spec.wait_value_s
    hold = ready_hold(spec)
    prewarm: float | None = None
    if not model.representative(spec) and spec.fallback_keep_s is not None:
        keep = max(hold, spec.fallback_keep_s)
        learned, reason = False, f"{model.n} gaps: the fixed keep-alive"
    elif not model.representative(spec):
        keep = hold + miss / max(cover.rate, 1e-9)
        learned, reason = False, f"{model.n} gaps: rent-or-buy break-even"
    else:
        edges = [hold] + [b * spec.bin_s for b in range(1, spec.bins + 1) if b * spec.bin_s > hold]
        best, keep = _best_keep(spec, model, cover.rate, 0.0, edges)
        keep *= 1.0 + spec.margin
        if spec.tail_rent_or_buy and model.beyond == 0 and keep > _largest(spec, model):
            # Every gap seen so far is covered: the histogram says nothing about longer ones,
            # so the unseen tail gets the distribution-free rule, rent-or-buy's break-even.
            keep = max(keep, hold + miss / max(cover.rate, 1e-9))
        learned, reason = True, f"{model.n} gaps: keep to {keep:g}s"
        head = model.percentile(spec, spec.head_pct)
        if spec.prewarm and head - spec.cold_start_s >= hold:
            later = [k for k in edges if k > head]
            if later:
                c, k = _best_keep(spec, model, cover.rate, head, later)
                if c < best:
                    keep, prewarm = k * (1.0 + spec.margin), head
                    reason = f"{model.n} gaps: drop, pre-warm at {head:g}s, keep to {k:g}s"
    phases: list[tuple[float, Tier]] = [(0.0, Tier.READY)]
    if prewarm is not None:
        phases += [(hold, Tier.ZERO), (prewarm - spec.cold_start_s, Tier.STARTING)]
        phases.append((prewarm, cover.tier))
    elif keep > hold and cover.tier is not Tier.READY:
        phases.append((hold, cover.tier))
    down = keep
    if spec.tiers and spec.standby_rate > 0 and spec.standby_start_s < spec.cold_start_s:
        standby = (spec.cold_start_s - spec.standby_start_s) / spec.standby_rate
        phases.append((keep, Tier.STANDBY))
        down = keep + standby
    phases.append((down, Tier.ZERO))
    # Drop phases that start no later than the next one (zero-length).
    out: list[tuple[float, Tier]] = []
    for start, tier in phases:
        while out and out[-1][0] >= start:
            out.pop()
        out.append((start, tier))
    return Schedule(tuple(out), keep, prewarm, learned, reason)


@dataclass(frozen=True, slots=True)
class KeepAliveState:
    """The policy's per-revision state, persisted with the revision's (``to_json``)."""

    gaps: GapModel = field(default_factory=GapModel)
    idle_since: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {"gaps": self.gaps.to_json(), "idle_since": self.idle_since}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> KeepAliveState:
        idle = data.get("idle_since")
        return cls(GapModel.from_json(data.get("gaps", {})), None if idle is None else float(idle))


@dataclass(frozen=True, slots=True)
class KeepAliveStep:
    tier: Tier  # what the revision's last replica should be now
    schedule: Schedule
    idle_s: float  # 0 while busy


def step(
    spec: KeepAliveSpec, state: KeepAliveState, *, busy: bool, now: float
) -> tuple[KeepAliveStep, KeepAliveState]:
    """One tick: ``busy`` when the revision has work (in flight, queued or just arrived). A busy
    tick after an idle spell records the gap; an idle tick reads the schedule."""
    if busy:
        if state.idle_since is not None:
            state = KeepAliveState(state.gaps.observe(spec, now - state.idle_since), None)
        return KeepAliveStep(Tier.READY, schedule(spec, state.gaps), 0.0), state
    if state.idle_since is None:
        state = KeepAliveState(state.gaps, now)
    sched = schedule(spec, state.gaps)
    idle = now - (state.idle_since if state.idle_since is not None else now)
    tier, _ = sched.at(idle)
    return KeepAliveStep(tier, sched, idle), state


def expected_loss(spec: KeepAliveSpec, model: GapModel, idle_s: float) -> float:
    """What evicting a suspended revision now is expected to cost: the chance its next request
    comes before its keep-alive ends, times a cold start and a wait."""
    keep = schedule(spec, model).keep_s
    if model.n == 0 or idle_s >= keep:
        return 0.0
    items = [((b + 0.5) * spec.bin_s, c) for b, c in model.counts]
    later = sum(c for g, c in items if g >= idle_s) + model.beyond
    soon = sum(c for g, c in items if idle_s <= g < keep)
    if later <= 0:
        return 0.0
    return soon / later * (spec.cold_start_s + spec.wait_value_s)


def evict_order(spec: KeepAliveSpec, suspended: Sequence[tuple[str, GapModel, float]]) -> list[str]:
    """Suspended revisions ``(name, gaps, idle_s)`` in the order a full node evicts them: the
    smallest expected loss first."""
    ranked = sorted(suspended, key=lambda x: (expected_loss(spec, x[1], x[2]), -x[2], x[0]))
    return [name for name, _, _ in ranked]
