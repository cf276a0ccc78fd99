"""Which revisions an activator reports on: those with traffic, and each once more after.

An activator used to publish stats for every revision it knows, every second: with 10,000
revisions at zero that was 10,000 stats per activator per second on the bus (75,000 Redis
commands a second with two activators, benchmarks/results/control_plane_scale.md) to say that
nothing happened. Now a revision is reported while it has requests held or in flight, or accepted
any since the last report; and once more when that ends, so the autoscaler reads a zero rather
than the last non-zero until it goes stale. A quiet revision costs the bus nothing.

The per-activator limit shares (``activator.limits``) count the activators that report on a
revision, so an activator now counts only while it has traffic there (and for the stats TTL
after): when a revision quiet for longer wakes on several activators at once, each enforces the
whole limit for up to one stats interval, until it reads the others' reports.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from torpor.bus import ActivatorStats


class Counts(Protocol):
    """A revision's queue as this activator sees it (``activator.queue.RevisionQueue``)."""

    @property
    def queued(self) -> int: ...

    @property
    def in_flight(self) -> int: ...

    @property
    def requests_total(self) -> int: ...

    @property
    def busy_replicas(self) -> tuple[str, ...]: ...


class TrafficReport:
    """``select`` once per publication; it remembers what it reported."""

    def __init__(self, activator_id: str) -> None:
        self._id = activator_id
        self._totals: dict[str, int] = {}  # requests_total as last reported, revisions with any
        self._busy: set[str] = set()  # had traffic at the last report: owed a report now

    def select(self, queues: Mapping[str, Counts], now: float) -> list[ActivatorStats]:
        """The stats to publish now (``at`` = ``now``, wall-clock seconds)."""
        out: list[ActivatorStats] = []
        busy: set[str] = set()
        for key, q in queues.items():
            total = q.requests_total
            queued, in_flight = q.queued, q.in_flight
            if queued or in_flight or total != self._totals.get(key, 0):
                busy.add(key)
                self._totals[key] = total
            elif key not in self._busy:
                continue  # quiet, and said so already (or never had traffic)
            busy_replicas = q.busy_replicas if in_flight else ()
            out.append(ActivatorStats(self._id, key, queued, in_flight, now, total, busy_replicas))
        self._busy = busy
        if len(self._totals) > len(queues):  # revisions deleted since
            self._totals = {k: v for k, v in self._totals.items() if k in queues}
        return out
