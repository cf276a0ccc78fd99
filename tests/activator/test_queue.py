from __future__ import annotations

import asyncio
import random

import pytest

from activator.balancer import Backend
from activator.errors import QueueFull, RevisionFailed, UpstreamUnavailable, WaitTimeout
from activator.queue import QueueLimits, RevisionQueue, failure_reason
from torpor.bus.base import Endpoint, RevisionEndpoints

KEY = "default/chat-00001"


class Pokes:
    """The poke seam's fake: records which revisions were poked."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    async def __call__(self, revision: str) -> None:
        self.calls.append(revision)


def make(depth: int = 8, timeout_s: float = 30.0, cc: int = 0) -> tuple[RevisionQueue, Pokes]:
    pokes = Pokes()
    return RevisionQueue(KEY, QueueLimits(depth, timeout_s, cc), pokes, random.Random(0)), pokes


def ready(*ids: str, draining: tuple[str, ...] = (), version: int = 0) -> RevisionEndpoints:
    return RevisionEndpoints(
        KEY, tuple(Endpoint(i, f"http://{i}", i in draining) for i in ids), version=version
    )


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_ready_replica_is_taken_at_once_without_a_poke() -> None:
    queue, pokes = make()
    queue.set_endpoints(ready("a"))
    backend = await queue.acquire()
    assert backend.replica_id == "a"
    assert (queue.in_flight, queue.queued, pokes.calls) == (1, 0, [])
    queue.release(backend)
    assert queue.in_flight == 0


async def test_first_waiter_at_zero_pokes_once_and_waiters_leave_in_arrival_order() -> None:
    queue, pokes = make(cc=1)
    order: list[int] = []

    async def request(i: int) -> None:
        backend = await queue.acquire()
        order.append(i)
        await asyncio.sleep(0)
        queue.release(backend)

    tasks = []
    for i in range(5):
        tasks.append(asyncio.create_task(request(i)))
        await settle()
    assert queue.queued == 5
    assert pokes.calls == [KEY]
    queue.set_endpoints(ready("a"))
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2, 3, 4]


async def test_release_respects_container_concurrency() -> None:
    queue, _ = make(cc=2)
    tasks = [asyncio.create_task(queue.acquire()) for _ in range(5)]
    await settle()
    queue.set_endpoints(ready("a"))
    await settle()
    done = [t for t in tasks if t.done()]
    assert len(done) == 2
    assert (queue.queued, queue.in_flight) == (3, 2)
    queue.release(done[0].result())
    await settle()
    assert (queue.queued, queue.in_flight) == (2, 2)
    queue.set_endpoints(ready("a", "b"))
    await settle()
    assert (queue.queued, queue.in_flight) == (0, 4)
    for t in tasks:
        if not t.done():
            t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def test_busy_replicas_name_those_with_requests_in_flight_draining_included() -> None:
    queue, _ = make()
    queue.set_endpoints(ready("a"))
    backend = await queue.acquire()
    queue.set_endpoints(ready("a", "b", draining=("a",), version=1))
    assert queue.busy_replicas == ("a",)  # a draining replica's requests still count
    queue.release(backend)
    assert queue.busy_replicas == ()


async def test_full_queue_refuses_at_once() -> None:
    queue, _ = make(depth=2)
    tasks = [asyncio.create_task(queue.acquire()) for _ in range(2)]
    await settle()
    with pytest.raises(QueueFull):
        await queue.acquire()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert queue.queued == 0


async def test_waiting_past_the_timeout_fails_and_leaves_the_queue() -> None:
    queue, _ = make(timeout_s=0.01)
    with pytest.raises(WaitTimeout, match=r"0\.01s"):
        await queue.acquire()
    assert queue.queued == 0


async def test_failure_answers_every_waiter_and_later_requests_with_its_short_reason() -> None:
    queue, pokes = make()
    tasks = [asyncio.create_task(queue.acquire()) for _ in range(3)]
    await settle()
    queue.set_endpoints(RevisionEndpoints(KEY, failure="CUDA out of memory\nTraceback: /opt/x.py"))
    for t in tasks:
        with pytest.raises(RevisionFailed, match=r"CUDA out of memory$"):
            await t
    with pytest.raises(RevisionFailed, match="CUDA out of memory"):
        await queue.acquire()
    # The waiters' poke plus one more so the autoscaler may try again.
    assert pokes.calls == [KEY, KEY]
    with pytest.raises(RevisionFailed):
        await queue.acquire()
    assert pokes.calls == [KEY, KEY]
    queue.set_endpoints(ready("a"))
    queue.release(await queue.acquire())


async def test_cancelled_waiter_is_removed_and_gets_nothing() -> None:
    queue, _ = make(cc=1)
    first = asyncio.create_task(queue.acquire())
    second = asyncio.create_task(queue.acquire())
    await settle()
    first.cancel()
    await settle()
    assert queue.queued == 1
    queue.set_endpoints(ready("a"))
    backend = await second
    assert queue.in_flight == 1
    queue.release(backend)
    assert first.cancelled()


async def test_slot_handed_to_a_waiter_cancelled_before_it_ran_goes_to_the_next() -> None:
    queue, _ = make(cc=1)
    first = asyncio.create_task(queue.acquire())
    second = asyncio.create_task(queue.acquire())
    await settle()
    queue.set_endpoints(ready("a"))  # hands the slot to `first`, which has not resumed yet
    first.cancel()
    backend = await second
    assert queue.in_flight == 1
    queue.release(backend)


async def test_draining_replicas_get_no_waiters_and_count_as_zero() -> None:
    queue, pokes = make()
    queue.set_endpoints(ready("a", draining=("a",)))
    task = asyncio.create_task(queue.acquire())
    await settle()
    assert pokes.calls == [KEY]
    assert queue.queued == 1
    queue.set_endpoints(ready("a", "b", draining=("a",)))
    backend = await task
    assert backend.replica_id == "b"
    queue.release(backend)


async def test_in_flight_survives_an_endpoint_update_of_the_same_replica() -> None:
    queue, _ = make(cc=1)
    queue.set_endpoints(ready("a", version=1))
    backend = await queue.acquire()
    queue.set_endpoints(ready("a", version=2))
    waiter = asyncio.create_task(queue.acquire())
    await settle()
    assert not waiter.done()
    queue.release(backend)
    queue.release(await waiter)


async def test_older_endpoint_versions_are_ignored() -> None:
    queue, _ = make()
    queue.set_endpoints(ready("a", version=3))
    queue.set_endpoints(ready("b", version=2))
    assert [b.replica_id for b in queue.backends] == ["a"]


async def test_retry_excludes_the_failed_replica_and_waits_when_none_is_left() -> None:
    queue, pokes = make()
    queue.set_endpoints(ready("a", "b"))
    first = await queue.acquire()
    queue.release(first)
    other = await queue.acquire(exclude=(first.replica_id,))
    assert other.replica_id != first.replica_id
    queue.release(other)
    # Both refused (died): the retry waits for a replacement and pokes the autoscaler at once.
    retry = asyncio.create_task(queue.acquire(exclude=("a", "b")))
    await settle()
    assert not retry.done()
    assert pokes.calls == [KEY]
    queue.set_endpoints(ready("c"))
    assert (await retry).replica_id == "c"


async def test_closing_answers_waiters() -> None:
    queue, _ = make()
    task = asyncio.create_task(queue.acquire())
    await settle()
    queue.close(UpstreamUnavailable("gone"))
    with pytest.raises(UpstreamUnavailable):
        await task


def test_backend_counts_are_plain_data() -> None:
    assert Backend("a", "http://a").in_flight == 0


async def test_a_failing_poke_does_not_fail_the_waiter() -> None:
    async def broken(revision: str) -> None:
        raise ConnectionError("bus down")

    queue = RevisionQueue(KEY, QueueLimits(), broken, random.Random(0))
    task = asyncio.create_task(queue.acquire())
    await settle()
    assert queue.queued == 1
    queue.set_endpoints(ready("a"))
    queue.release(await task)


async def test_a_deadline_shared_with_the_answer_bounds_the_wait_instead_of_timeout_s() -> None:
    queue, _ = make(timeout_s=30.0)
    deadline = asyncio.get_running_loop().time() + 0.05  # most of timeoutSeconds already spent
    with pytest.raises(WaitTimeout):
        await queue.acquire(deadline=deadline)
    assert queue.queued == 0


async def test_a_replica_taken_out_gets_no_requests_and_the_next_ones_wait_for_a_new_one() -> None:
    queue, pokes = make()
    queue.set_endpoints(ready("a", "b"))
    a = next(b for b in queue.backends if b.replica_id == "a")
    queue.take_out(a, "engine dead")
    picked = [await queue.acquire() for _ in range(4)]
    assert {b.replica_id for b in picked} == {"b"}
    for b in picked:
        queue.release(b)
    # The same endpoints published again keep it out (the autoscaler has not noticed yet).
    queue.set_endpoints(ready("a", "b", version=1))
    b = next(b for b in queue.backends if b.replica_id == "b")
    queue.take_out(b, "engine dead")
    assert not queue.has_serving()
    waiter = asyncio.create_task(queue.acquire())
    await settle()
    assert pokes.calls == [KEY]  # like a request at zero
    queue.set_endpoints(ready("c", version=2))
    assert (await waiter).replica_id == "c"


def test_a_failure_reason_is_the_first_line_bounded() -> None:
    assert failure_reason("exited with code 2\nTraceback\n  /etc/secret") == "exited with code 2"
    assert failure_reason("\n\n  not ready after 600s  \nlog") == "not ready after 600s"
    assert failure_reason("") == "no reason given"
    long = failure_reason("x" * 500)
    assert len(long) == 160 and long.endswith("...")
