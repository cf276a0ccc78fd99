"""The in-process bus of the embedded platform: plain dicts and one queue per subscriber."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

from torpor.bus.base import (
    ActivatorStats,
    BusEvent,
    BusSnapshot,
    EndpointsChanged,
    Poked,
    RevisionEndpoints,
    ServicesChanged,
)
from torpor.spec import ServiceSpec

_SUBSCRIBER_QUEUE_BOUND = 10_000


class MemoryBus:
    def __init__(self) -> None:
        self._services: tuple[ServiceSpec, ...] = ()
        self._endpoints: dict[str, RevisionEndpoints] = {}
        self._stats: dict[tuple[str, str], ActivatorStats] = {}
        self._subscribers: set[asyncio.Queue[BusEvent | None]] = set()
        self._closed = False

    async def publish_services(self, services: Sequence[ServiceSpec]) -> None:
        self._services = tuple(services)
        self._emit(ServicesChanged(self._services))

    async def publish_endpoints(self, endpoints: RevisionEndpoints) -> None:
        previous = self._endpoints.get(endpoints.revision)
        version = (previous.version + 1) if previous else max(endpoints.version, 1)
        stamped = RevisionEndpoints(
            endpoints.revision, endpoints.endpoints, endpoints.failure, version
        )
        self._endpoints[endpoints.revision] = stamped
        self._emit(EndpointsChanged(stamped))

    async def publish_stats(self, stats: Sequence[ActivatorStats]) -> None:
        for s in stats:
            self._stats[(s.activator_id, s.revision)] = s

    async def poke(self, revision: str) -> None:
        self._emit(Poked(revision))

    async def snapshot(self) -> BusSnapshot:
        return BusSnapshot(self._services, dict(self._endpoints), tuple(self._stats.values()))

    async def events(self) -> AsyncIterator[BusEvent]:
        queue: asyncio.Queue[BusEvent | None] = asyncio.Queue(_SUBSCRIBER_QUEUE_BOUND)
        self._subscribers.add(queue)
        try:
            while not self._closed:
                event = await queue.get()
                if event is None:
                    return
                yield event
        finally:
            self._subscribers.discard(queue)

    async def aclose(self) -> None:
        self._closed = True
        for queue in self._subscribers:
            queue.put_nowait(None)

    def _emit(self, event: BusEvent) -> None:
        for queue in self._subscribers:
            if queue.full():
                # A subscriber that stopped reading must not stall the publisher; it resyncs
                # from snapshot() on its next full event.
                continue
            queue.put_nowait(event)
