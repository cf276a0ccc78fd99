from __future__ import annotations

import random
from collections import Counter

from activator.balancer import Backend, pick


def backends(*in_flight: int) -> list[Backend]:
    return [Backend(f"r{i}", f"http://r{i}", in_flight=n) for i, n in enumerate(in_flight)]


def test_container_concurrency_is_a_hard_limit() -> None:
    bs = backends(2, 2)
    assert pick(bs, 2, random.Random(0)) is None
    bs[1].in_flight = 1
    assert pick(bs, 2, random.Random(0)) is bs[1]


def test_small_container_concurrency_packs_the_first_free_replica() -> None:
    bs = backends(0, 0, 0)
    assert {pick(bs, 1, random.Random(s)).replica_id for s in range(20)} == {"r0"}  # type: ignore[union-attr]


def test_draining_replicas_get_nothing() -> None:
    bs = backends(5, 0)
    bs[1].draining = True
    rng = random.Random(0)
    assert {pick(bs, 0, rng) for _ in range(50)} == {bs[0]}
    bs[0].draining = True
    assert pick(bs, 0, rng) is None


def test_excluded_replicas_are_skipped() -> None:
    bs = backends(0, 9)
    assert pick(bs, 0, random.Random(0), exclude=("r0",)) is bs[1]
    assert pick(bs, 0, random.Random(0), exclude=("r0", "r1")) is None


def test_power_of_two_choices_prefers_the_less_loaded() -> None:
    bs = backends(10, 0)
    rng = random.Random(0)
    assert {pick(bs, 0, rng) for _ in range(50)} == {bs[1]}


def test_power_of_two_choices_never_picks_the_most_loaded_of_three() -> None:
    bs = backends(0, 5, 10)
    rng = random.Random(3)
    counts = Counter(pick(bs, 0, rng).replica_id for _ in range(3000))  # type: ignore[union-attr]
    assert counts["r2"] == 0
    assert counts["r0"] > counts["r1"] > 0
