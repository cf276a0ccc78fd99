"""Holding and routing by LoRA adapter (issue 16): a request for an adapter goes only to a replica
that lists it, waits (and pokes naming it, once) while none does, and is counted per adapter."""

from __future__ import annotations

import asyncio
import random

import pytest

from activator.errors import AdapterFailed
from activator.queue import QueueLimits, RevisionQueue
from torpor.bus.base import AdapterFailure, Endpoint, RevisionEndpoints


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


async def test_a_failed_load_answers_only_that_adapter_s_waiters_and_the_next_request_pokes(
) -> None:
    pokes = Pokes()
    q = RevisionQueue("ns/r", QueueLimits(timeout_s=30), pokes, random.Random(0))
    q.set_endpoints(endpoints(1, Endpoint("a", "http://a", adapters=("y",))))
    held_x = asyncio.create_task(q.acquire(adapter="x"))
    held_z = asyncio.create_task(q.acquire(adapter="z"))
    await asyncio.sleep(0.01)
    reason = "400 No adapter found at /models/x\nTraceback (most recent call last): ..."
    failed = RevisionEndpoints(
        "ns/r",
        (Endpoint("a", "http://a", adapters=("y",)),),
        version=2,
        adapter_failures=(AdapterFailure("x", reason), AdapterFailure("y", "elsewhere")),
    )
    q.set_endpoints(failed)
    with pytest.raises(AdapterFailed) as caught:
        await asyncio.wait_for(held_x, 1)
    assert caught.value.code == "adapter_failed" and caught.value.status == 503
    assert caught.value.message.endswith("failed to load: 400 No adapter found at /models/x")
    assert not held_z.done()  # another adapter's waiters wait on
    assert (await q.acquire(adapter="y")).replica_id == "a"  # a replica lists it: served
    assert (await q.acquire()).replica_id == "a"
    # A new request fails fast too; the first one after the failure pokes (the retry), once.
    pokes.calls.clear()
    for _ in range(2):
        with pytest.raises(AdapterFailed):
            await asyncio.wait_for(q.acquire(adapter="x"), 1)
    assert pokes.calls == [("ns/r", "x")]
    # The retry worked: the republished endpoints list it and clear the failure.
    q.set_endpoints(endpoints(3, Endpoint("a", "http://a", adapters=("x", "y"))))
    assert (await asyncio.wait_for(q.acquire(adapter="x"), 1)).replica_id == "a"
    held_z.cancel()
