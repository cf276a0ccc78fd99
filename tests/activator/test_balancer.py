from __future__ import annotations

import random
from collections import Counter

from activator.balancer import AFFINITY_SLACK, KV_FULL, MAX_LOAD_AGE_S, Backend, pick


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


# ---- engine-aware choice (issue 14) -------------------------------------------------------------

NOW = 100.0


def loaded(*loads: tuple[int, int, float], at: float | None = NOW) -> list[Backend]:
    """Backends from (in_flight, waiting, kv_cache) triples, scraped at ``at``."""
    return [
        Backend(f"r{i}", f"http://r{i}", in_flight=f, waiting=w, kv_cache=kv, load_at=at)
        for i, (f, w, kv) in enumerate(loads)
    ]


def test_fresh_engine_load_picks_the_least_waiting_not_the_fewest_in_flight() -> None:
    # r0 has fewer requests from this activator, but vLLM reports 5 waiting there (another
    # activator's traffic): r1 is the one with room.
    bs = loaded((1, 5, 0.3), (3, 0, 0.3))
    assert {pick(bs, 0, random.Random(s), now=NOW).replica_id for s in range(20)} == {"r1"}  # type: ignore[union-attr]


def test_a_full_kv_cache_loses_a_tie() -> None:
    bs = loaded((0, 0, 0.95), (0, 0, 0.2))
    assert {pick(bs, 0, random.Random(s), now=NOW).replica_id for s in range(20)} == {"r1"}  # type: ignore[union-attr]


def test_stale_or_missing_load_falls_back_to_in_flight_counts() -> None:
    for at in (None, NOW - MAX_LOAD_AGE_S - 0.1):
        bs = loaded((0, 9, 0.99), (5, 0, 0.0), at=at)
        assert pick(bs, 0, random.Random(0), now=NOW) is bs[0]  # p2c on in-flight: r0
    bs = loaded((0, 9, 0.99), (5, 0, 0.0))
    bs[1].load_at = None  # one replica without a scrape is enough to fall back
    assert pick(bs, 0, random.Random(0), now=NOW) is bs[0]


def test_a_prefix_key_sticks_to_one_replica_from_any_activator() -> None:
    bs = loaded((0, 0, 0.1), (0, 0, 0.1), (0, 0, 0.1))
    homes = {}
    for key in range(200):
        chosen = {pick(bs, 0, random.Random(s), affinity=key, now=NOW) for s in range(5)}
        assert len(chosen) == 1  # the same replica whatever the randomness
        homes[key] = chosen.pop().replica_id  # type: ignore[union-attr]
    spread = Counter(homes.values())
    assert set(spread) == {"r0", "r1", "r2"} and min(spread.values()) > 40
    # A replica gone moves only its own keys.
    two = bs[:2]
    moved = [
        k
        for k in range(200)
        if homes[k] != "r2"
        and pick(two, 0, random.Random(0), affinity=k, now=NOW).replica_id != homes[k]
    ]  # type: ignore[union-attr]
    assert moved == []


def test_an_overloaded_prefix_replica_is_passed_over() -> None:
    key = next(
        k
        for k in range(100)
        if pick(loaded((0, 0, 0), (0, 0, 0)), 0, random.Random(0), affinity=k, now=NOW).replica_id
        == "r0"  # type: ignore[union-attr]
    )
    within_slack = loaded((AFFINITY_SLACK, 0, 0.5), (0, 0, 0.5))
    assert pick(within_slack, 0, random.Random(0), affinity=key, now=NOW) is within_slack[0]
    over_slack = loaded((AFFINITY_SLACK + 1, 0, 0.5), (0, 0, 0.5))
    assert pick(over_slack, 0, random.Random(0), affinity=key, now=NOW) is over_slack[1]
    kv_full = loaded((0, 0, KV_FULL), (1, 0, 0.5))
    assert pick(kv_full, 0, random.Random(0), affinity=key, now=NOW) is kv_full[1]


def test_container_concurrency_still_bounds_the_engine_aware_choice() -> None:
    bs = loaded((4, 0, 0.0), (2, 3, 0.5))
    assert pick(bs, 4, random.Random(0), now=NOW) is bs[1]  # r0 is at its limit
