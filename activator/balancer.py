"""Which replica of a revision gets the next request: a pure choice over in-flight counts.

Follows Knative's activator (``pkg/activator/net/lb_policy.go``): with a hard per-replica limit
(containerConcurrency) of 1-3, the first replica with a free slot, which packs requests and
lets idle replicas drain; otherwise power-of-two choices on in-flight requests among those with
room. Draining replicas are never chosen, nor are replicas this activator took out of rotation
(``out``: their engine died while their API server still answered; see ``activator.proxy``).

Engine-aware (issue 14): when every candidate's vLLM load is fresh (scraped within
``MAX_LOAD_AGE_S`` by ``activator.engine_load``), the choice follows the engine's own signals
instead of power-of-two choices:

- load = this activator's in-flight requests on the replica + ``2 x`` vLLM's
  ``num_requests_waiting`` (a waiting request means the engine is already saturated); a replica
  whose ``kv_cache_usage_perc`` is at ``KV_FULL`` or more counts as overloaded;
- prefix affinity: a request with an ``affinity`` key (a hash of its prompt's first bytes,
  ``activator.models.prefix_key``) goes to the replica that key hashes to (rendezvous hashing:
  the same replica from every activator, and only 1/n of the keys move when a replica comes or
  goes), which likely holds that prefix in vLLM's prefix cache, unless that replica is
  overloaded: KV cache full, or its load more than ``AFFINITY_SLACK`` above the least loaded;
- otherwise the least loaded of the replicas with KV cache to spare (of all, when none has),
  ties broken at random.

Stale or missing load (a replica just started, a scrape failed) falls back to the in-flight
counts above, so a stuck scraper degrades to the old policy rather than to a wrong one.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Collection, Sequence
from dataclasses import dataclass

_FIRST_FREE_MAX_CC = 3
MAX_LOAD_AGE_S = 3.0  # scrapes come every second; three missed and the counts take over
KV_FULL = 0.9  # vLLM starts preempting requests as its KV cache fills up
# Load units a prefix's replica may carry above the least loaded one. 1: affinity only where
# it costs at most one request of imbalance. At 4 (more than the benchmark's concurrency, so
# pure affinity) benchmarks/routing.py measured 1.3-4.5x the TTFT of power of two choices on
# the 2-core machine, where a prefix hit on the tiny model saves little (benchmarks/results/
# routing.md); a larger slack pays where prefill is expensive, which has not run here.
AFFINITY_SLACK = 1


@dataclass(slots=True, eq=False)
class Backend:
    """One replica as the activator tracks it. Mutable: the in-flight count changes per request."""

    replica_id: str
    url: str
    draining: bool = False
    in_flight: int = 0
    adapters: frozenset[str] = frozenset()  # LoRA adapters loaded there (the endpoints say)
    # Taken out of rotation by this activator: the replica answered that its engine is dead
    # (unrecoverable in vLLM). It stays out until the published endpoints drop it or give its
    # id a new URL; the autoscaler replaces it once the process exits or its /health fails.
    out: bool = False
    # vLLM's own load, scraped (activator.engine_load); ``load_at`` is event-loop time, None
    # until the first scrape answered.
    waiting: int = 0
    kv_cache: float = 0.0
    load_at: float | None = None


def pick(
    backends: Sequence[Backend],
    container_concurrency: int,
    rng: random.Random,
    exclude: Collection[str] = (),
    *,
    affinity: int | None = None,
    now: float | None = None,
) -> Backend | None:
    """The replica to send to, or None when no serving replica has room.

    ``now`` (event-loop time) enables the engine-aware choice where loads are fresh;
    ``affinity`` is the request's prefix key, if it has one.
    """
    cc = container_concurrency
    if len(backends) == 1:  # the common case, without building a list
        only = backends[0]
        if (
            only.draining
            or only.out
            or 0 < cc <= only.in_flight
            or (exclude and only.replica_id in exclude)
        ):
            return None
        return only
    free = [
        b
        for b in backends
        if not b.draining
        and not b.out
        and (cc <= 0 or b.in_flight < cc)
        and (not exclude or b.replica_id not in exclude)
    ]
    if not free:
        return None
    if len(free) == 1 or 0 < cc <= _FIRST_FREE_MAX_CC:
        return free[0]
    if now is not None and all(
        b.load_at is not None and now - b.load_at <= MAX_LOAD_AGE_S for b in free
    ):
        return engine_aware(free, rng, affinity)
    a, b = rng.sample(free, 2)
    return a if a.in_flight <= b.in_flight else b


def load(b: Backend) -> int:
    return b.in_flight + 2 * b.waiting


def engine_aware(free: Sequence[Backend], rng: random.Random, affinity: int | None) -> Backend:
    """The choice among replicas with room and fresh engine load (see the module docstring)."""
    least = min(load(b) for b in free)
    if affinity is not None:
        preferred = max(free, key=lambda b: _rendezvous(affinity, b.replica_id))
        if preferred.kv_cache < KV_FULL and load(preferred) <= least + AFFINITY_SLACK:
            return preferred
    # The least loaded of those with KV cache to spare (of all, when every one is full).
    roomy = [b for b in free if b.kv_cache < KV_FULL] or list(free)
    least_roomy = min(load(b) for b in roomy)
    lightest = [b for b in roomy if load(b) == least_roomy]
    return lightest[0] if len(lightest) == 1 else rng.choice(lightest)


def _rendezvous(affinity: int, replica_id: str) -> int:
    # crc32, not hash(): every activator process must rank the replicas the same way.
    return zlib.crc32(replica_id.encode(), affinity)
