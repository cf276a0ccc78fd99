"""A revision in a crash loop (issue 21): held and new requests get a typed 503 at once, the next
request after the back-off starts the next try, and a request is not passed from one dying engine
to the next without end."""

from __future__ import annotations

import asyncio
import random
import time

import httpx
import pytest

from activator.errors import ReplicaCrashLoop, RevisionFailed
from activator.proxy import MAX_ENGINE_DEAD_RETRIES
from activator.queue import QueueLimits, RevisionQueue
from tests.activator.conftest import ActivatorFactory, endpoints, eventually, serve, service
from tests.activator.test_engine_dead import HOST, KEY, DeadEngine
from torpor.bus.base import CrashLoop, Endpoint, RevisionEndpoints

TAIL = 'exited with code 0\nTraceback...\n  File "/opt/secret/x.py"\nIndexError: at /opt/secret'


class Wall:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Pokes:
    def __init__(self) -> None:
        self.calls: list[str] = []

    async def __call__(self, revision: str, adapter: str | None = None) -> None:
        self.calls.append(revision)


def looping(retry_at: float, *, served: bool = True, restarts: int = 3) -> RevisionEndpoints:
    crash = CrashLoop(restarts, retry_at, "exited with code 0 (IndexError)", 20.0, served)
    return RevisionEndpoints(KEY, (), TAIL, crash_loop=crash)


def make(wall: Wall) -> tuple[RevisionQueue, Pokes]:
    pokes = Pokes()
    queue = RevisionQueue(KEY, QueueLimits(8, 30.0), pokes, random.Random(0), wall=wall)
    return queue, pokes


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_held_and_new_requests_get_the_crash_loop_at_once_until_the_next_try() -> None:
    wall = Wall()
    queue, pokes = make(wall)
    held = [asyncio.create_task(queue.acquire()) for _ in range(2)]
    await settle()
    assert pokes.calls == [KEY]  # the first waiter at zero poked
    queue.set_endpoints(looping(retry_at=1019.2))
    for task in held:
        with pytest.raises(ReplicaCrashLoop) as caught:
            await task
    error = caught.value
    assert (error.status, error.code, error.retry_after_s) == (503, "replica_crash_loop", 20)
    assert error.headers() == [(b"retry-after", b"20")]
    assert error.message == (
        f"revision {KEY} is in a crash loop: its replica died soon after it became ready "
        "3 times in a row (last: exited with code 0 (IndexError)); next try in 20s "
        "(at 00:16:59 UTC)"
    )
    assert "secret" not in error.message  # the log tail is the operator's
    # A new request meanwhile fails fast, and pokes nobody: no start comes before the time.
    wall.now = 1010.0
    with pytest.raises(ReplicaCrashLoop, match=r"next try in 10s"):
        await queue.acquire()
    assert pokes.calls == [KEY] and queue.queued == 0
    # The wait is over: a request is held and pokes, which starts the next try...
    wall.now = 1019.2
    waiting = asyncio.create_task(queue.acquire())
    await settle()
    assert pokes.calls == [KEY, KEY] and queue.queued == 1
    # ... which serves it, or dies too: then the next wait answers it.
    queue.set_endpoints(looping(retry_at=1059.2, restarts=4))
    with pytest.raises(ReplicaCrashLoop, match="4 times in a row"):
        await waiting


async def test_the_crash_loop_of_a_failing_start_says_so() -> None:
    queue, _ = make(Wall())
    queue.set_endpoints(looping(retry_at=1010.0, served=False, restarts=2))
    with pytest.raises(ReplicaCrashLoop, match="its replica failed to start 2 times in a row"):
        await queue.acquire()


async def test_a_crash_loop_is_no_answer_once_a_replica_serves() -> None:
    queue, _ = make(Wall())
    crash = looping(retry_at=1010.0).crash_loop
    queue.set_endpoints(RevisionEndpoints(KEY, (Endpoint("a", "http://a"),), crash_loop=crash))
    queue.release(await queue.acquire())
    assert queue.crash_loop_error() is None


async def test_an_old_autoscalers_failure_still_answers_as_before() -> None:
    queue, _ = make(Wall())
    queue.set_endpoints(RevisionEndpoints(KEY, (), "exited with code 2\ntail"))
    with pytest.raises(RevisionFailed, match=r"failed to start: exited with code 2$"):
        await queue.acquire()


async def test_a_served_activator_answers_a_crash_loop_in_the_openai_shape(
    running_activator: ActivatorFactory,
) -> None:
    async with (
        running_activator((service(),)) as running,
        httpx.AsyncClient(base_url=running.url, headers=HOST) as c,
    ):
        held = asyncio.create_task(c.post("/v1/completions", json={"prompt": "hi"}))
        await eventually(lambda: running.activator._queues[KEY].queued == 1)
        await running.bus.publish_endpoints(looping(retry_at=time.time() + 30))
        answer = await held
        again = await c.post("/v1/completions", json={"prompt": "hi"})
    for a in (answer, again):
        assert a.status_code == 503
        assert a.json()["error"]["code"] == "replica_crash_loop"
        assert a.json()["error"]["type"] == "server_error"
        assert 29 <= int(a.headers["retry-after"]) <= 30
        assert "died soon after it became ready 3 times in a row" in a.json()["error"]["message"]


async def test_engine_dead_retries_are_bounded(running_activator: ActivatorFactory) -> None:
    deads = [DeadEngine() for _ in range(4)]
    async with (
        serve(deads[0]) as a,
        serve(deads[1]) as b,
        serve(deads[2]) as c_,
        serve(deads[3]) as d,
        running_activator((service(),)) as running,
    ):
        await running.bus.publish_endpoints(endpoints(KEY, a, b, c_, d))
        async with httpx.AsyncClient(base_url=running.url, headers=HOST) as c:
            answer = await c.post("/v1/completions", json={})
    # Sent to 1 + MAX_ENGINE_DEAD_RETRIES dying engines, then answered (not the fourth).
    assert sum(x.seen for x in deads) == 1 + MAX_ENGINE_DEAD_RETRIES == 3
    assert answer.status_code == 502
    error = answer.json()["error"]
    assert error["code"] == "engine_dead"
    assert "the engine died under this request on 3 replicas in a row" in error["message"]


async def test_a_request_held_after_a_dead_engine_gets_the_crash_loop(
    running_activator: ActivatorFactory,
) -> None:
    dead = DeadEngine()
    async with serve(dead) as url, running_activator((service(),)) as running:
        await running.bus.publish_endpoints(endpoints(KEY, url))
        async with httpx.AsyncClient(base_url=running.url, headers=HOST) as c:
            pending = asyncio.create_task(c.post("/v1/completions", json={}))
            await eventually(lambda: dead.seen == 1)
            # Held for the next replica; the autoscaler then says the revision crash-loops.
            await eventually(lambda: running.activator._queues[KEY].queued == 1)
            await running.bus.publish_endpoints(looping(retry_at=time.time() + 20))
            answer = await pending
    assert answer.status_code == 503
    assert answer.json()["error"]["code"] == "replica_crash_loop"
    assert dead.seen == 1
