"""The best KPA of a grid, and issue 15's verdict, on known numbers."""

from __future__ import annotations

from harness.trace.sim import ServiceRun
from harness.trace.verdict import Summary, best_kpa, frontier, summarise, verdict


def s(waits: int, replica_seconds: float) -> Summary:
    return Summary(1000, waits, 0, 0.1, 1.0, replica_seconds, 1, 0, 0)


GRID = {
    "defaults": s(477, 28_000),
    "delay": s(477, 29_000),  # as many waits for more: not on the frontier
    "t25": s(160, 31_100),
    "t25-delay": s(51, 37_000),
    "t5": s(37, 52_000),
}


def test_frontier_drops_settings_beaten_on_both_counts() -> None:
    assert frontier(GRID) == ["defaults", "t25", "t25-delay", "t5"]


def test_best_is_the_cheapest_frontier_setting_spending_at_least_torpor() -> None:
    assert best_kpa(s(109, 31_000), GRID) == "t25"
    assert best_kpa(s(109, 27_000), GRID) == "defaults"
    # Torpor spends more than every setting: the frontier's fewest waits, and rs fails.
    assert best_kpa(s(10, 60_000), GRID) == "t5"


def test_verdict_needs_half_the_waits_at_no_more_replica_seconds() -> None:
    assert verdict(s(80, 31_000), GRID["t25"])["met"]
    assert not verdict(s(81, 31_000), GRID["t25"])["met"]
    assert not verdict(s(10, 31_200), GRID["t25"])["met"]
    # No waits on either side: met only if torpor has none either.
    assert verdict(s(0, 1.0), s(0, 1.0))["met"]
    assert verdict(s(1, 1.0), s(0, 1.0))["over_target_ratio"] is None


def test_summarise_counts_over_target_and_at_zero_waits() -> None:
    run = ServiceRun("p", waits=[0.1, 3.0, 5.0], at_zero=[False, True, False])
    run.replica_seconds, run.cold_starts = 12.5, 1
    x = summarise([run, ServiceRun("p")], 2.0)
    assert (x.requests, x.over_target, x.over_target_at_zero) == (3, 2, 1)
    assert (x.replica_seconds, x.cold_starts, x.wait_p50_s) == (12.5, 1, 3.0)


def test_frontier_waits_interpolate_between_the_settings_around() -> None:
    from harness.trace.verdict import frontier_waits_at

    assert frontier_waits_at(GRID, 28_000) == 477
    assert frontier_waits_at(GRID, (28_000 + 31_100) / 2) == (477 + 160) / 2
    assert frontier_waits_at(GRID, 27_000) is None
    assert frontier_waits_at(GRID, 60_000) is None
