"""Delivery of bus events to every subscriber, shared by both bus implementations.

The emitter never waits for a subscriber. A subscriber that falls more than ``bound`` events behind
loses its backlog and is handed the latest whole state instead (every ``ServicesChanged`` and
``EndpointsChanged`` the fanout has seen), which is all a subscriber needs because events are whole
sets, not deltas. Pokes that arrive while it is behind are kept (they are hints that something is
waiting); pokes in the dropped backlog are lost, and the next stats tick covers them.
"""

from __future__ import annotations

import asyncio
from collections import deque

from torpor.bus.base import BusEvent, EndpointsChanged, Poked, ServicesChanged

DEFAULT_SUBSCRIBER_BOUND = 10_000


class Subscription:
    """One subscriber's stream of events. Registered when created, so nothing emitted after
    ``Fanout.subscribe()`` returns is missed. Ends when the fanout closes or on ``aclose()``."""

    def __init__(self, fanout: Fanout, bound: int) -> None:
        self._fanout = fanout
        self._bound = bound
        self._pending: deque[BusEvent] = deque()
        self._wakeup = asyncio.Event()
        self._lagged = False
        self._closed = False

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> BusEvent:
        while True:
            if self._lagged:
                self._lagged = False
                # The latest state replaces the dropped backlog; pokes kept meanwhile follow it.
                self._pending.extendleft(reversed(self._fanout.latest()))
            if self._pending:
                return self._pending.popleft()
            if self._closed:
                raise StopAsyncIteration
            self._wakeup.clear()
            await self._wakeup.wait()

    async def aclose(self) -> None:
        self.close()

    def close(self) -> None:
        self._closed = True
        self._pending.clear()
        self._lagged = False
        self._fanout.discard(self)
        self._wakeup.set()

    def offer(self, event: BusEvent) -> None:
        if self._closed:
            return
        if self._lagged:
            if isinstance(event, Poked) and len(self._pending) < self._bound:
                self._pending.append(event)
        elif len(self._pending) >= self._bound:
            self._pending = deque(e for e in self._pending if isinstance(e, Poked))
            self._lagged = True
            if isinstance(event, Poked):
                self._pending.append(event)
        else:
            self._pending.append(event)
        self._wakeup.set()

    def end(self) -> None:
        """Let the subscriber drain what it has, then stop."""
        self._closed = True
        self._wakeup.set()


class Fanout:
    def __init__(self, bound: int = DEFAULT_SUBSCRIBER_BOUND) -> None:
        self._bound = bound
        self._subscriptions: set[Subscription] = set()
        self._services: ServicesChanged | None = None
        self._endpoints: dict[str, EndpointsChanged] = {}
        self._closed = False

    def subscribe(self) -> Subscription:
        subscription = Subscription(self, self._bound)
        if self._closed:
            subscription.end()
        else:
            self._subscriptions.add(subscription)
        return subscription

    def discard(self, subscription: Subscription) -> None:
        self._subscriptions.discard(subscription)

    def emit(self, event: BusEvent) -> None:
        if isinstance(event, ServicesChanged):
            self._services = event
        elif isinstance(event, EndpointsChanged):
            self._endpoints[event.endpoints.revision] = event
        for subscription in tuple(self._subscriptions):
            subscription.offer(event)

    def latest(self) -> list[BusEvent]:
        events: list[BusEvent] = [] if self._services is None else [self._services]
        events.extend(self._endpoints.values())
        return events

    @property
    def subscriber_count(self) -> int:
        return len(self._subscriptions)

    def close(self) -> None:
        """End every subscription: each stops after the events already delivered to it."""
        self._closed = True
        for subscription in tuple(self._subscriptions):
            subscription.end()
        self._subscriptions.clear()
