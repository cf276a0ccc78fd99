"""The in-process bus of the embedded platform: plain dicts, one bounded stream per subscriber."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import replace

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
        # revision -> activator -> (stats, monotonic expiry): ``revision_stats`` reads one
        # revision's entries, not every revision's (10,000 revisions made each read a scan).
        self._stats: dict[str, dict[str, tuple[ActivatorStats, float]]] = {}
        self._stats_ttl_s = stats_ttl_s
        self._clock = clock
        self._fanout = Fanout(subscriber_bound)

    async def publish_services(self, services: Sequence[ServiceSpec]) -> None:
        self._services = tuple(services)
        self._fanout.emit(ServicesChanged(self._services))

    async def publish_endpoints(self, endpoints: RevisionEndpoints) -> None:
        previous = self._endpoints.get(endpoints.revision)
        version = (previous.version + 1) if previous else max(endpoints.version, 1)
        stamped = replace(endpoints, version=version)
        self._endpoints[endpoints.revision] = stamped
        self._fanout.emit(EndpointsChanged(stamped))

    async def publish_stats(self, stats: Sequence[ActivatorStats]) -> None:
        expires = self._clock() + self._stats_ttl_s
        for s in stats:
            self._stats.setdefault(s.revision, {})[s.activator_id] = (s, expires)

    async def poke(self, revision: str, adapter: str | None = None) -> None:
        self._fanout.emit(Poked(revision, adapter))

    async def snapshot(self) -> BusSnapshot:
        now = self._clock()
        live: list[ActivatorStats] = []
        for revision in list(self._stats):
            live.extend(self._live(revision, now))
        return BusSnapshot(self._services, dict(self._endpoints), tuple(live))

    async def revision_stats(self, revision: str) -> tuple[ActivatorStats, ...]:
        return self._live(revision, self._clock())

    def _live(self, revision: str, now: float) -> tuple[ActivatorStats, ...]:
        """One revision's unexpired stats; expired ones are dropped as they are found, so a
        revision nobody reports on any more leaves nothing behind once read."""
        entries = self._stats.get(revision)
        if entries is None:
            return ()
        for activator in [a for a, (_, expires) in entries.items() if expires <= now]:
            del entries[activator]
        if not entries:
            del self._stats[revision]
            return ()
        return tuple(s for s, _ in entries.values())

    def events(self) -> Subscription:
        """Events published after this call; the stream ends when the bus closes."""
        return self._fanout.subscribe()

    async def aclose(self) -> None:
        self._fanout.close()
