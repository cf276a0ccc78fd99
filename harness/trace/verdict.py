"""Summing a policy's runs up, and issue 15's verdict against the best KPA of a grid."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from harness.trace.sim import ServiceRun


@dataclass(frozen=True)
class Summary:
    requests: int
    over_target: int
    over_target_at_zero: int
    wait_p50_s: float
    wait_p99_s: float
    replica_seconds: float
    cold_starts: int
    preemptions: int
    unfinished: int


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    s = sorted(values)
    return s[max(0, min(len(s) - 1, math.ceil(q / 100 * len(s)) - 1))]


def summarise(runs: Sequence[ServiceRun], target: float) -> Summary:
    waits = [w for r in runs for w in r.waits]
    zero = [z for r in runs for z in r.at_zero]
    return Summary(
        requests=len(waits),
        over_target=sum(1 for w in waits if w > target),
        over_target_at_zero=sum(1 for w, z in zip(waits, zero, strict=True) if w > target and z),
        wait_p50_s=round(percentile(waits, 50), 3),
        wait_p99_s=round(percentile(waits, 99), 3),
        replica_seconds=round(sum(r.replica_seconds for r in runs), 1),
        cold_starts=sum(r.cold_starts for r in runs),
        preemptions=sum(r.preemptions for r in runs),
        unfinished=sum(r.unfinished for r in runs),
    )


def frontier(grid: dict[str, Summary]) -> list[str]:
    """The grid's settings no other setting beats on both over-target waits and replica-seconds,
    cheapest first."""
    keep = [
        n
        for n, s in grid.items()
        if not any(
            o.over_target <= s.over_target
            and o.replica_seconds <= s.replica_seconds
            and (o.over_target, o.replica_seconds) != (s.over_target, s.replica_seconds)
            for o in grid.values()
        )
    ]
    return sorted(keep, key=lambda n: grid[n].replica_seconds)


def best_kpa(torpor: Summary, grid: dict[str, Summary]) -> str:
    """The competitor: the operator who tunes KPA, on torpor's budget. Of the grid's frontier
    (``frontier``), the cheapest setting that spends at least torpor's replica-seconds: the
    fewest waits KPA reaches without spending less than torpor, and without letting a setting
    that spends far more count against it. If every frontier setting spends less than torpor,
    the one with the fewest waits (then torpor fails the replica-seconds half of the goal)."""
    front = frontier(grid)
    above = [n for n in front if grid[n].replica_seconds >= torpor.replica_seconds]
    return above[0] if above else front[-1]


def verdict(t: Summary, k: Summary) -> dict[str, Any]:
    """Issue 15's goal: over-target waits <= 0.5x the best KPA's at <= 1.0x its replica-seconds."""
    ratio_w = round(t.over_target / k.over_target, 3) if k.over_target else None
    ratio_r = round(t.replica_seconds / max(1e-9, k.replica_seconds), 3)
    waits_ok = t.over_target == 0 if k.over_target == 0 else t.over_target <= 0.5 * k.over_target
    return {
        "over_target_ratio": ratio_w,
        "replica_seconds_ratio": ratio_r,
        "met": bool(waits_ok and ratio_r <= 1.0),
    }


def frontier_waits_at(grid: dict[str, Summary], replica_seconds: float) -> float | None:
    """Over-target waits of the grid's frontier at ``replica_seconds``, interpolated linearly
    between the two frontier settings around it (a KPA tuned to spend exactly that much, as far
    as the grid tells); ``None`` outside the frontier's range."""
    front = [grid[n] for n in frontier(grid)]
    for lo, hi in itertools.pairwise(front):
        if lo.replica_seconds <= replica_seconds <= hi.replica_seconds:
            span = hi.replica_seconds - lo.replica_seconds
            f = (replica_seconds - lo.replica_seconds) / span if span else 0.0
            return lo.over_target + f * (hi.over_target - lo.over_target)
    return None
