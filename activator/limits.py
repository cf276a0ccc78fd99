"""Per-revision limits across activators: each activator enforces its share (issue 14).

``containerConcurrency`` (requests in flight per replica) and ``torpor.dev/queue-depth``
(requests held per revision) are counted where requests pass, in each activator process; with
``--workers N`` or several activator pods, N activators each allowing the whole limit would
multiply it by N. Instead each activator enforces ``share(limit, n)``, where ``n`` is the number
of activators that report stats on the revision over the bus (itself included): the live
entries of ``Bus.revision_stats``, which expire with the bus's stats TTL (10 s).

The bound that holds, with ``n`` activators serving a revision:

- per replica, requests in flight <= ``n * max(1, cc // n)``, which is ``<= cc`` when
  ``cc >= n`` and ``n`` otherwise (every activator may always send one; a limit below the number
  of activators cannot be split without a shared counter on the request path);
- per revision, requests held <= ``n * max(1, depth // n)``: ``<= depth`` when ``depth >= n``.

It holds once every activator has read ``n``: each re-reads it every stats interval (1 s) for
the revisions it has traffic on, so for up to about one interval after an activator starts
serving a revision the others still enforce their older, larger share. A dead activator counts
until its stats expire, which only makes the shares smaller. Floors, not ceilings: a limit that
does not divide evenly leaves some of it unused (cc 3 over 2 activators: 1 each, 2 in all)
rather than exceed it.
"""

from __future__ import annotations

from collections.abc import Iterable

from activator.queue import QueueLimits
from torpor.bus.base import ActivatorStats
from torpor.spec import RevisionSpec


def share(limit: int, activators: int) -> int:
    """One activator's part of ``limit`` among ``activators``; 0 (no limit) stays 0."""
    if limit <= 0:
        return limit
    return max(1, limit // max(1, activators))


def shared_limits(spec: RevisionSpec, activators: int) -> QueueLimits:
    """``spec``'s limits as one of ``activators`` activators enforces them."""
    whole = QueueLimits.of(spec)
    return QueueLimits(
        share(whole.depth, activators),
        whole.timeout_s,
        share(whole.container_concurrency, activators),
    )


def live_activators(stats: Iterable[ActivatorStats], me: str) -> int:
    """Activators that report on a revision (its live bus stats), this one included."""
    return len({s.activator_id for s in stats} | {me})
