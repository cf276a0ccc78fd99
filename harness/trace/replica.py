"""A simulated vLLM replica: chunked prefill, batch-dependent decode, KV cache in blocks with
preemption.

vLLM's scheduler runs engine steps; each step gives every decoding sequence one token and spends
what is left of the token budget (``max_num_batched_tokens``) on prompt chunks, oldest request
first. The model here advances that in slices of ``dt`` (a fluid approximation of whole steps):
a step with ``b`` decoding sequences and ``p`` prompt tokens takes ``b / decode_tps(b) +
p * prefill_s_per_token`` seconds, both measured on the real engine
(``benchmarks/results/replica_throughput*.json``). A request is admitted while ``max_num_seqs``
and the KV cache allow its blocks; a growing sequence that finds no free block preempts the
newest running one, which goes back to the head of the queue and recomputes its prompt and what
it had generated (vLLM V1's recompute preemption). Its first token is not taken back, so its
wait stands. Assumptions (stated in the results): decode cost does not grow with context length
beyond what the measured curve holds, one request's prompt is prefilled before the next one's.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from harness.trace.azure import TraceRequest


@dataclass(frozen=True, slots=True)
class ReplicaModel:
    decode: tuple[tuple[float, float], ...]  # (batch, aggregate decode tokens/s), measured
    prefill_s_per_token: float
    max_num_seqs: int
    kv_blocks: int
    block_tokens: int
    token_budget: int  # vLLM's max_num_batched_tokens
    cold_start_s: tuple[float, ...]  # measured cold starts, drawn in turn

    def __post_init__(self) -> None:
        if not self.decode or self.max_num_seqs < 1 or self.kv_blocks < 1:
            raise ValueError("a replica needs a decode curve, max_num_seqs and KV blocks")
        if self.block_tokens < 1 or self.token_budget < 1 or not self.cold_start_s:
            raise ValueError("block_tokens, token_budget and a cold start are required")

    def decode_tps(self, batch: int) -> float:
        """Aggregate decode tokens/s at ``batch``, interpolated from the measured points."""
        pts = sorted(self.decode)
        bs = [b for b, _ in pts]
        if batch <= 0:
            return 0.0
        if batch <= bs[0]:
            return pts[0][1] * batch / bs[0]
        if batch >= bs[-1]:
            return pts[-1][1]
        i = bisect.bisect_left(bs, batch)
        (b0, t0), (b1, t1) = pts[i - 1], pts[i]
        return t0 + (t1 - t0) * (batch - b0) / (b1 - b0)

    def blocks(self, tokens: float) -> int:
        return max(1, math.ceil(tokens / self.block_tokens))


@dataclass(slots=True)
class Seq:
    req: TraceRequest
    rid: int
    to_prefill: float  # prompt (and, after a preemption, generated) tokens still to compute
    generated: float = 0.0
    first_token: float | None = None

    @property
    def context(self) -> float:
        return self.req.prompt + self.generated


@dataclass(slots=True)
class SimReplica:
    name: str
    model: ReplicaModel
    launched: float
    ready_at: float
    waiting: deque[Seq] = field(default_factory=deque)
    running: list[Seq] = field(default_factory=list)
    draining: bool = False
    drain_began: float = 0.0
    preemptions: int = 0

    def ready(self, now: float) -> bool:
        return now >= self.ready_at

    @property
    def work(self) -> int:
        return len(self.running) + len(self.waiting)

    def used_blocks(self) -> int:
        return sum(self.model.blocks(s.context + 1) for s in self.running)

    def kv_usage(self) -> float:
        return min(1.0, self.used_blocks() / self.model.kv_blocks)

    def add(self, req: TraceRequest, rid: int) -> None:
        self.waiting.append(Seq(req, rid, float(max(1, req.prompt))))

    def _schedule(self) -> None:
        m = self.model
        used = self.used_blocks()
        # Grow: every running sequence needs room for its next token; preempt the newest.
        while used > m.kv_blocks and len(self.running) > 1:
            victim = self.running.pop()
            victim.to_prefill = victim.context
            self.waiting.appendleft(victim)
            self.preemptions += 1
            used = self.used_blocks()
        while self.waiting and len(self.running) < m.max_num_seqs:
            need = m.blocks(self.waiting[0].context + 1)
            if used + need > m.kv_blocks and self.running:
                break
            seq = self.waiting.popleft()
            self.running.append(seq)
            used += need

    def advance(self, now: float, dt: float) -> list[Seq]:
        """Run the engine from ``now`` for ``dt``; returns the sequences that got their first
        token in that time (``first_token`` set) and drops finished ones."""
        self._schedule()
        if not self.running:
            return []
        m = self.model
        decoding = [s for s in self.running if s.to_prefill <= 0]
        prefilling = [s for s in self.running if s.to_prefill > 0]
        b = len(decoding)
        pending = sum(s.to_prefill for s in prefilling)
        p = min(max(0, m.token_budget - b), pending)
        step = (b / m.decode_tps(b) if b else 0.0) + p * m.prefill_s_per_token
        if step <= 0:
            return []
        steps = dt / step
        for s in decoding:
            s.generated = min(float(s.req.output), s.generated + steps)
        firsts: list[Seq] = []
        budget = p * steps
        rate = p / step  # prompt tokens per second
        spent = 0.0
        for s in prefilling:
            if budget <= 0:
                break
            take = min(budget, s.to_prefill)
            s.to_prefill -= take
            budget -= take
            spent += take
            if s.to_prefill <= 1e-9:
                s.to_prefill = 0.0
                if s.first_token is None:
                    s.first_token = now + spent / rate
                    firsts.append(s)
                s.generated = max(s.generated, 1.0)
        self.running = [s for s in self.running if s.generated < s.req.output or s.to_prefill > 0]
        return firsts


def cold_starts(samples: Sequence[float]) -> tuple[float, ...]:
    if not samples:
        raise ValueError("no measured cold starts")
    return tuple(float(x) for x in samples)
