"""The in-process bus of the embedded platform: plain dicts, one bounded stream per subscriber."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from torpor.bus.base import (
    ActivatorStats,
    BusSnapshot,
    EndpointsChanged,
    Poked,
    RevisionEndpoints,
    ServicesChanged,
)
from torpor.bus.fanout import DEFAULT_SUBSCRIBER_BOUND, Fanout, Subscription
from torpor.spec import ServiceSpec

DEFAULT_STATS_TTL_S = 10.0


class MemoryBus:
    """``stats_ttl_s`` matches the Redis bus: stats an activator stopped sending drop out of
    ``snapshot()``, so a revision it no longer reports on can still scale to zero."""

    def __init__(
        self,
        *,
        stats_ttl_s: float = DEFAULT_STATS_TTL_S,
        subscriber_bound: int = DEFAULT_SUBSCRIBER_BOUND,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._services: tuple[ServiceSpec, ...] = ()
        self._endpoints: dict[str, RevisionEndpoints] = {}
        # (activator, revision) -> (stats, monotonic expiry)
        self._stats: dict[tuple[str, str], tuple[ActivatorStats, float]] = {}
        self._stats_ttl_s = stats_ttl_s
        self._clock = clock
        self._fanout = Fanout(subscriber_bound)

    async def publish_services(self, services: Sequence[ServiceSpec]) -> None:
        self._services = tuple(services)
        self._fanout.emit(ServicesChanged(self._services))

    async def publish_endpoints(self, endpoints: RevisionEndpoints) -> None:
        previous = self._endpoints.get(endpoints.revision)
        version = (previous.version + 1) if previous else max(endpoints.version, 1)
        stamped = RevisionEndpoints(
            endpoints.revision, endpoints.endpoints, endpoints.failure, version
        )
        self._endpoints[endpoints.revision] = stamped
        self._fanout.emit(EndpointsChanged(stamped))

    async def publish_stats(self, stats: Sequence[ActivatorStats]) -> None:
        expires = self._clock() + self._stats_ttl_s
        for s in stats:
            self._stats[(s.activator_id, s.revision)] = (s, expires)

    async def poke(self, revision: str) -> None:
        self._fanout.emit(Poked(revision))

    async def snapshot(self) -> BusSnapshot:
        now = self._clock()
        self._stats = {k: v for k, v in self._stats.items() if v[1] > now}
        return BusSnapshot(
            self._services, dict(self._endpoints), tuple(s for s, _ in self._stats.values())
        )

    async def revision_stats(self, revision: str) -> tuple[ActivatorStats, ...]:
        now = self._clock()
        return tuple(
            s for (_, rev), (s, expires) in self._stats.items() if rev == revision and expires > now
        )

    def events(self) -> Subscription:
        """Events published after this call; the stream ends when the bus closes."""
        return self._fanout.subscribe()

    async def aclose(self) -> None:
        self._fanout.close()
