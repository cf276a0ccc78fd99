"""The crash-loop backoff on its own: the kubelet's sequence, its resets, what a caller is told."""

from __future__ import annotations

import pytest

from autoscaler.crashloop import (
    CrashLoopPolicy,
    CrashLoopState,
    count_death,
    exception_name,
    with_resets,
)

POLICY = CrashLoopPolicy()


def test_the_default_sequence_is_the_kubelets() -> None:
    # The first restart at once, then 10 s doubling to the 5 minute cap, for ever.
    waits = [POLICY.backoff_s(n) for n in range(1, 11)]
    assert waits == [0, 10, 20, 40, 80, 160, 300, 300, 300, 300]


def test_deaths_in_a_row_follow_the_sequence_and_set_the_next_try() -> None:
    state, now, seen = CrashLoopState(), 1000.0, []
    for _ in range(8):
        state = count_death(state, now, POLICY)
        seen.append((state.restarts, state.backoff_s, state.retry_at - now))
        now = state.retry_at + 25.0  # the next try dies 25 s after it starts
    assert seen == [
        (1, 0.0, 0.0),
        (2, 10.0, 10.0),
        (3, 20.0, 20.0),
        (4, 40.0, 40.0),
        (5, 80.0, 80.0),
        (6, 160.0, 160.0),
        (7, 300.0, 300.0),
        (8, 300.0, 300.0),
    ]


def test_looping_and_backing_off() -> None:
    once = count_death(CrashLoopState(), 100.0, POLICY)
    assert not once.looping and not once.backing_off(100.0)  # replaced at once
    twice = count_death(once, 130.0, POLICY)
    assert twice.looping
    assert twice.backing_off(139.9) and not twice.backing_off(140.0)
    assert twice.looping  # until a reset, whatever the time


@pytest.mark.parametrize(
    ("ready_for_s", "counts"),
    [(None, True), (0.0, True), (59.9, True), (60.0, False), (3600.0, False)],
)
def test_which_deaths_count(ready_for_s: float | None, counts: bool) -> None:
    assert POLICY.counts(ready_for_s) is counts


def test_ten_stable_minutes_reset_the_count() -> None:
    state = CrashLoopState(restarts=5, died_at=100.0, backoff_s=80.0, retry_at=180.0)
    assert with_resets(state, 599.0, 200.0, POLICY) == state
    assert with_resets(state, None, 200.0, POLICY) == state
    assert with_resets(state, 600.0, 200.0, POLICY) == CrashLoopState()


def test_ten_quiet_minutes_forget_the_count() -> None:
    state = CrashLoopState(restarts=7, died_at=100.0, backoff_s=300.0, retry_at=400.0)
    assert with_resets(state, None, 699.0, POLICY) == state
    assert with_resets(state, None, 700.0, POLICY) == CrashLoopState()
    # ... and a death after such a quiet spell is the first of a new count.
    assert count_death(state, 700.0, POLICY).restarts == 1
    assert count_death(state, 699.0, POLICY).restarts == 8


def test_the_constants_are_a_policy() -> None:
    fast = CrashLoopPolicy(initial_backoff_s=1.0, max_backoff_s=4.0)
    assert [fast.backoff_s(n) for n in range(1, 6)] == [0, 1, 2, 4, 4]


@pytest.mark.parametrize(
    "bad",
    [
        {"initial_backoff_s": -1.0},
        {"max_backoff_s": -1.0},
        {"young_s": -1.0},
        {"young_s": 700.0},  # longer than stable_s
        {"forget_s": float("nan")},
    ],
)
def test_a_bad_policy_is_refused(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        CrashLoopPolicy(**bad)


@pytest.mark.parametrize(
    ("line", "name"),
    [
        ("IndexError: index out of range in self", "IndexError"),
        ("vllm.v1.engine.exceptions.EngineDeadError: EngineCore died.", "EngineDeadError"),
        ("RuntimeError", "RuntimeError"),
        ("KeyboardInterrupt", "KeyboardInterrupt"),
        ("torpor runtime: model /x not found", None),
        ("Worker proc VllmWorker-0 died unexpectedly", None),
        (None, None),
        ("", None),
    ],
)
def test_the_exception_name_a_caller_may_be_told(line: str | None, name: str | None) -> None:
    assert exception_name(line) == name
