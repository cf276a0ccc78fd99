"""Holding and routing by LoRA adapter (issue 16): a request for an adapter goes only to a replica
that lists it, waits (and pokes naming it, once) while none does, and is counted per adapter."""

from __future__ import annotations

import asyncio
import random

from activator.queue import QueueLimits, RevisionQueue
from torpor.bus.base import Endpoint, RevisionEndpoints


class Pokes:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str | None]] = []

    async def __call__(self, revision: str, adapter: str | None = None) -> None:
        self.calls.append((revision, adapter))


def endpoints(version: int, *eps: Endpoint) -> RevisionEndpoints:
    return RevisionEndpoints("ns/r", eps, version=version)


async def test_an_adapter_request_waits_for_a_replica_listing_it_and_pokes_once() -> None:
    pokes = Pokes()
    q = RevisionQueue("ns/r", QueueLimits(timeout_s=5), pokes, random.Random(0))
    q.set_endpoints(endpoints(1, Endpoint("a", "http://a")))
    base = await q.acquire()
    assert base.replica_id == "a"  # the base has a serving replica
    first = asyncio.create_task(q.acquire(adapter="x"))
    second = asyncio.create_task(q.acquire(adapter="x"))
    await asyncio.sleep(0.01)
    assert not first.done() and not second.done()
    assert pokes.calls == [("ns/r", "x")]  # single poke for the adapter, naming it
    loaded = Endpoint("b", "http://b", adapters=("x",))
    q.set_endpoints(endpoints(2, Endpoint("a", "http://a"), loaded))
    assert (await first).replica_id == "b" and (await second).replica_id == "b"


async def test_base_requests_are_not_held_behind_adapter_waiters() -> None:
    q = RevisionQueue("ns/r", QueueLimits(timeout_s=5), Pokes(), random.Random(0))
    q.set_endpoints(endpoints(1, Endpoint("a", "http://a")))
    waiting = asyncio.create_task(q.acquire(adapter="x"))
    await asyncio.sleep(0.01)
    assert (await asyncio.wait_for(q.acquire(), 1)).replica_id == "a"
    waiting.cancel()


async def test_per_adapter_traffic_is_counted() -> None:
    q = RevisionQueue("ns/r", QueueLimits(), Pokes(), random.Random(0))
    q.adapter_started("x")
    q.adapter_started("x")
    q.adapter_finished("x")
    [t] = q.adapter_traffic
    assert (t.name, t.active, t.requests_total) == ("x", 1, 2)
