"""Knative's KPA model: its windows, its decision and the ReplicaSet's victims, on known inputs."""

from __future__ import annotations

import pytest

from harness.trace.kpa import Buckets, KpaConfig, KpaState, Pod, kpa_decide, victims


def test_average_over_a_partial_window_divides_by_the_seconds_seen() -> None:
    b = Buckets(60.0)
    for s, v in [(10, 3.0), (11, 1.0), (12, 2.0)]:
        b.record(s, v)
    assert b.average(12.5) == pytest.approx(2.0)  # (3 + 1 + 2) / 3 buckets since the first


def test_a_gap_inside_the_window_counts_as_zero() -> None:
    b = Buckets(60.0)
    b.record(0, 4.0)
    b.record(3, 4.0)  # seconds 1 and 2 had no data
    assert b.average(3) == pytest.approx(2.0)  # 8 / 4


def test_seconds_after_the_last_write_shrink_the_window_then_it_reads_zero() -> None:
    b = Buckets(6.0)
    for s in range(10):
        b.record(s, 6.0)
    assert b.average(9) == pytest.approx(6.0)
    assert b.average(12) == pytest.approx(6.0)  # (4..9] less the 3 missing seconds
    assert b.average(15) == 0.0  # a whole window without data


def test_old_buckets_leave_the_window_and_a_long_silence_resets_it() -> None:
    b = Buckets(6.0)
    b.record(0, 60.0)
    for s in range(1, 7):
        b.record(s, 0.0)
    assert b.average(6) == 0.0  # second 0 is out of (0, 6]
    b.record(20, 3.0)  # after a silence longer than the window: first write resets
    assert b.average(20) == pytest.approx(3.0)


# (stable, panic, ready, current) -> desired with Knative's defaults (target 100 x 0.7 = 70).
@pytest.mark.parametrize(
    ("stable", "panic", "ready", "current", "desired", "panicking"),
    [
        (70.0, 70.0, 1, 1, 1, False),  # exactly at target
        (71.0, 71.0, 1, 1, 2, True),  # 2 pods wanted by 1 ready: 200% -> panic
        (71.0, 71.0, 2, 2, 2, False),  # 2 wanted by 2: no panic
        (300.0, 10.0, 2, 2, 5, False),  # stable decides outside panic
        (10.0, 700.0, 4, 4, 10, True),  # panic window's 10 pods >= 2 x 4
        (1.0, 1.0, 8, 8, 4, False),  # max scale-down rate 2: at most half go per tick
    ],
)
def test_decision_table(
    stable: float, panic: float, ready: int, current: int, desired: int, panicking: bool
) -> None:
    d, _ = kpa_decide(
        KpaConfig(),
        KpaState(),
        100.0,
        ready=ready,
        current=current,
        stable=stable,
        panic_value=panic,
    )
    assert (d.desired, d.panic) == (desired, panicking)


def test_no_scale_down_while_panicking_until_a_stable_window_passes() -> None:
    cfg = KpaConfig()
    d, s = kpa_decide(cfg, KpaState(), 0.0, ready=1, current=1, stable=10, panic_value=300)
    assert d.desired == 5 and d.panic
    d, s = kpa_decide(cfg, s, 30.0, ready=5, current=5, stable=10, panic_value=10)
    assert d.desired == 5 and d.panic  # the panic high-water mark holds
    d, s = kpa_decide(cfg, s, 61.0, ready=5, current=5, stable=10, panic_value=10)
    assert d.desired == 2 and not d.panic  # ceil(10/70) = 1, but the rate keeps floor(5/2)


def test_scale_down_delay_holds_the_highest_count_of_the_delay_window() -> None:
    cfg = KpaConfig(scale_down_delay_s=120.0)
    d, s = kpa_decide(cfg, KpaState(), 0.0, ready=3, current=3, stable=200, panic_value=200)
    assert d.desired == 3
    d, s = kpa_decide(cfg, s, 60.0, ready=3, current=3, stable=60, panic_value=60)
    assert d.desired == 3  # wants 1, the delay window still holds t=0's 3
    d, s = kpa_decide(cfg, s, 121.0, ready=3, current=3, stable=60, panic_value=60)
    assert d.desired == 1  # t=0 has left the 120 s delay window


def test_scale_to_zero_waits_for_the_grace_period_and_a_poke_wakes_it() -> None:
    cfg = KpaConfig()
    d, s = kpa_decide(cfg, KpaState(), 0.0, ready=1, current=1, stable=0, panic_value=0)
    assert d.desired == 1  # wants zero: grace period starts
    d, s = kpa_decide(cfg, s, 29.0, ready=1, current=1, stable=0, panic_value=0)
    assert d.desired == 1
    d, s = kpa_decide(cfg, s, 30.0, ready=1, current=1, stable=0, panic_value=0)
    assert d.desired == 0
    d, s = kpa_decide(cfg, s, 40.0, ready=0, current=0, stable=0, panic_value=0, poked=True)
    assert d.desired == 1


def test_config_refuses_nonsense() -> None:
    with pytest.raises(ValueError):
        KpaConfig(target=0)
    with pytest.raises(ValueError):
        KpaConfig(stable_window_s=1)


def test_victims_follow_the_replicaset_ranking_not_load() -> None:
    pods = [
        Pod("old-ready", created=0.0, ready_since=20.0),
        Pod("new-ready", created=100.0, ready_since=117.0),
        Pod("starting-old", created=200.0, ready_since=None),
        Pod("starting-new", created=210.0, ready_since=None),
    ]
    assert victims(pods, 1) == ["starting-new"]
    assert victims(pods, 3) == ["starting-new", "starting-old", "new-ready"]
    assert victims(pods, 0) == []
