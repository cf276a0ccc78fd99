"""Which replica of a revision gets the next request: a pure choice over in-flight counts.

Follows Knative's activator (``pkg/activator/net/lb_policy.go``): with a hard per-replica limit
(containerConcurrency) of 1-3, the first replica with a free slot, which packs requests and
lets idle replicas drain; otherwise power-of-two choices on in-flight requests among those with
room. Draining replicas are never chosen, nor are replicas this activator took out of rotation
(``out``: their engine died while their API server still answered; see ``activator.proxy``).
"""

from __future__ import annotations

import random
from collections.abc import Collection, Sequence
from dataclasses import dataclass

_FIRST_FREE_MAX_CC = 3


@dataclass(slots=True, eq=False)
class Backend:
    """One replica as the activator tracks it. Mutable: the in-flight count changes per request."""

    replica_id: str
    url: str
    draining: bool = False
    in_flight: int = 0
    # Taken out of rotation by this activator: the replica answered that its engine is dead
    # (unrecoverable in vLLM). It stays out until the published endpoints drop it or give its
    # id a new URL; the autoscaler replaces it once the process exits or its /health fails.
    out: bool = False


def pick(
    backends: Sequence[Backend],
    container_concurrency: int,
    rng: random.Random,
    exclude: Collection[str] = (),
) -> Backend | None:
    """The replica to send to, or None when no serving replica has room."""
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
    a, b = rng.sample(free, 2)
    return a if a.in_flight <= b.in_flight else b
