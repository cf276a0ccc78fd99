"""The simulated vLLM replica and one service's replay under both policies."""

from __future__ import annotations

import pytest

from harness.trace.azure import TraceRequest
from harness.trace.kpa import KpaConfig
from harness.trace.policies import KpaPolicy, TorporPolicy
from harness.trace.replica import ReplicaModel, SimReplica
from harness.trace.sim import simulate
from torpor.spec import AutoscalingSpec


def model(**kw: object) -> ReplicaModel:
    base: dict[str, object] = {
        "decode": ((1.0, 100.0), (4.0, 200.0)),
        "prefill_s_per_token": 0.001,
        "max_num_seqs": 8,
        "kv_blocks": 100,
        "block_tokens": 16,
        "token_budget": 1000,
        "cold_start_s": (10.0,),
    }
    base.update(kw)
    return ReplicaModel(**base)  # type: ignore[arg-type]


def test_decode_throughput_interpolates_and_saturates() -> None:
    m = model()
    assert m.decode_tps(0) == 0.0
    assert m.decode_tps(1) == 100.0
    assert m.decode_tps(2) == pytest.approx(100.0 + 100.0 / 3)
    assert m.decode_tps(64) == 200.0


def test_first_token_comes_after_the_prompt_is_prefilled() -> None:
    r = SimReplica("r", model(), 0.0, 0.0)
    r.add(TraceRequest(0.0, 500, 10), 0)
    firsts = r.advance(0.0, 1.0)
    # 500 prompt tokens at 1 ms each: the first token at 0.5 s.
    assert [s.first_token for s in firsts] == [pytest.approx(0.5)]


def test_a_longer_prompt_waits_longer() -> None:
    waits = []
    for prompt in (100, 900):
        r = SimReplica("r", model(), 0.0, 0.0)
        r.add(TraceRequest(0.0, prompt, 10), 0)
        t = 0.0
        while not (f := r.advance(t, 0.01)):
            t += 0.01
        assert f[0].first_token is not None
        waits.append(f[0].first_token)
    assert waits[1] == pytest.approx(9 * waits[0], rel=0.05)


def test_kv_admission_is_in_whole_blocks() -> None:
    r = SimReplica("r", model(kv_blocks=10), 0.0, 0.0)
    for i in range(4):
        r.add(TraceRequest(0.0, 40, 100), i)  # 41 tokens: 3 blocks of 16 each
    r.advance(0.0, 0.001)
    assert len(r.running) == 3 and len(r.waiting) == 1  # 9 of 10 blocks; a 4th needs 3 more


def test_a_growing_sequence_preempts_the_newest_which_recomputes() -> None:
    r = SimReplica("r", model(kv_blocks=6, token_budget=10_000), 0.0, 0.0)
    r.add(TraceRequest(0.0, 30, 200), 0)  # 2 blocks each at first
    r.add(TraceRequest(0.0, 30, 200), 1)
    r.add(TraceRequest(0.0, 30, 200), 2)
    t = 0.0
    while r.preemptions == 0 and t < 10:
        r.advance(t, 0.05)
        t += 0.05
    assert r.preemptions >= 1
    assert r.waiting[0].rid == 2  # the newest went back to the head of the queue
    assert r.waiting[0].to_prefill == pytest.approx(r.waiting[0].context)


def test_max_num_seqs_bounds_the_batch() -> None:
    r = SimReplica("r", model(max_num_seqs=2), 0.0, 0.0)
    for i in range(5):
        r.add(TraceRequest(0.0, 10, 10), i)
    r.advance(0.0, 0.001)
    assert len(r.running) == 2


TRACE = [TraceRequest(0.0, 100, 20)] + [TraceRequest(200.0 + i, 100, 20) for i in range(5)]


@pytest.mark.parametrize(
    "policy",
    [TorporPolicy("torpor", AutoscalingSpec(initial_scale=0)), KpaPolicy("kpa", KpaConfig())],
    ids=["torpor", "kpa"],
)
def test_a_gap_longer_than_window_and_grace_goes_to_zero_and_back(policy: object) -> None:
    run = simulate(policy, TRACE, model(), end_s=205.0)  # type: ignore[arg-type]
    assert run.unfinished == 0 and len(run.waits) == 6
    assert run.cold_starts == 2  # t=0 and t=200: zero in between
    assert run.at_zero == [True] * 6  # the later five arrive during the second cold start
    # A cold start is 10 s and a prompt 0.1 s here; later arrivals wait less of the start.
    assert run.waits[:2] == [pytest.approx(10.1, abs=0.06)] * 2
    assert run.waits[2:] == sorted(run.waits[2:], reverse=True)
    # Two stretches of one replica: each about cold start + window (60 s) + grace (30 s).
    assert 150 < run.replica_seconds < 250
