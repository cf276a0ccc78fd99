"""Small builders and waits shared by the bus tests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

from torpor.bus import ActivatorStats, BusEvent, Endpoint, RevisionEndpoints
from torpor.spec import RevisionRef, RevisionSpec, RuntimeSpec, ServiceSpec, TrafficTarget

T = TypeVar("T")

# Bounds on waiting for something that should happen promptly; tests never assert how fast.
WAIT_S = 10.0

REV = "default/chat-00001"


def service(name: str = "chat", generation: int = 1) -> ServiceSpec:
    revision = RevisionSpec(
        ref=RevisionRef("default", f"{name}-{generation:05d}"),
        service=name,
        generation=generation,
        runtime=RuntimeSpec(image="torpor/runtime", model="tiny"),
    )
    return ServiceSpec(
        namespace="default",
        name=name,
        generation=generation,
        revisions=(revision,),
        traffic=(TrafficTarget(revision=revision.ref.name, percent=100),),
    )


def endpoints(revision: str = REV, *ports: int, failure: str | None = None) -> RevisionEndpoints:
    return RevisionEndpoints(
        revision,
        tuple(Endpoint(f"r{p}", f"http://127.0.0.1:{p}") for p in ports),
        failure,
    )


def stats(
    activator: str, revision: str = REV, queued: int = 0, in_flight: int = 0
) -> ActivatorStats:
    return ActivatorStats(activator, revision, queued, in_flight, at=time.time())


async def next_event(events: AsyncIterator[BusEvent]) -> BusEvent:
    return await asyncio.wait_for(anext(events), WAIT_S)


async def next_matching(
    events: AsyncIterator[BusEvent], accept: Callable[[BusEvent], bool]
) -> BusEvent:
    """The next event ``accept`` takes, skipping others (duplicates after a reconnect, say)."""

    async def scan() -> BusEvent:
        async for event in events:
            if accept(event):
                return event
        raise AssertionError("event stream ended")

    return await asyncio.wait_for(scan(), WAIT_S)


async def eventually(check: Callable[[], Awaitable[T | None]], what: str) -> T:
    """Poll ``check`` until it returns something other than None (or False)."""
    deadline = time.monotonic() + WAIT_S
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        await asyncio.sleep(0.02)


async def holds(value: bool) -> bool:
    """``eventually(lambda: holds(cond), ...)`` for a condition that needs no I/O."""
    return value
