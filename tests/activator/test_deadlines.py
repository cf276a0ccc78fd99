from __future__ import annotations

import asyncio

import pytest

from activator.deadlines import Deadlines

SWEEP_S = 0.01


async def test_past_its_deadline_a_block_is_cancelled_and_leaves_as_timeout_error() -> None:
    deadlines = Deadlines(SWEEP_S)
    loop = asyncio.get_running_loop()
    deadline = deadlines.at(loop.time() + 0.05)
    with pytest.raises(TimeoutError):
        async with deadline:
            await asyncio.sleep(10)
    assert deadline.expired
    assert len(deadlines) == 0


async def test_a_block_that_ends_in_time_is_untouched_and_the_sweep_stops() -> None:
    deadlines = Deadlines(SWEEP_S)
    loop = asyncio.get_running_loop()
    async with deadlines.at(loop.time() + 10) as deadline:
        await asyncio.sleep(3 * SWEEP_S)  # several sweeps pass
    assert not deadline.expired
    assert len(deadlines) == 0
    await asyncio.sleep(3 * SWEEP_S)
    assert deadlines._timer is None  # nothing inside a deadline: no sweep scheduled


async def test_a_deadline_already_past_expires_at_the_first_await() -> None:
    deadlines = Deadlines(SWEEP_S)
    with pytest.raises(TimeoutError):
        async with deadlines.at(asyncio.get_running_loop().time() - 1):
            await asyncio.sleep(0)


async def test_someone_elses_cancellation_stays_a_cancellation() -> None:
    deadlines = Deadlines(SWEEP_S)
    loop = asyncio.get_running_loop()

    async def held() -> None:
        async with deadlines.at(loop.time() + 10):
            await asyncio.sleep(10)

    task = asyncio.create_task(held())
    await asyncio.sleep(SWEEP_S)
    task.cancel()  # e.g. the client went away
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(deadlines) == 0


async def test_many_requests_each_end_at_their_own_deadline() -> None:
    deadlines = Deadlines(SWEEP_S)
    loop = asyncio.get_running_loop()
    outcome: dict[int, str] = {}

    async def request(i: int, limit_s: float, work_s: float) -> None:
        try:
            async with deadlines.at(loop.time() + limit_s):
                await asyncio.sleep(work_s)
            outcome[i] = "done"
        except TimeoutError:
            outcome[i] = "timeout"

    await asyncio.gather(
        request(0, 0.05, 10), request(1, 10, 0.02), request(2, 0.05, 10), request(3, 10, 0)
    )
    assert outcome == {0: "timeout", 1: "done", 2: "timeout", 3: "done"}


def test_the_sweep_interval_must_be_positive() -> None:
    with pytest.raises(ValueError):
        Deadlines(0)
