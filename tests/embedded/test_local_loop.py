"""The autoscaler loop driving the real local actuator and fake runtime processes, end to end."""

from __future__ import annotations

import sys
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from autoscaler.loop import Autoscaler
from embedded.local_actuator import LocalActuator
from tests.autoscaler.fakes import eventually, revision, service
from torpor.bus import ActivatorStats, MemoryBus, RevisionEndpoints
from torpor.spec import RevisionSpec

FAKE_RUNTIME = Path(__file__).resolve().parent / "fake_runtime.py"
KEY = "default/chat-00001"


def spec(model: str, running: str) -> RevisionSpec:
    rev = revision(metric="llm", window_s=0.2, scale_to_zero_grace_s=0.3)
    runtime = replace(rev.runtime, model=model, env=(("FAKE_RUNNING", running),))
    return replace(rev, runtime=runtime)


@pytest.fixture
async def platform(tmp_path: Path) -> AsyncIterator[tuple[MemoryBus, LocalActuator, Autoscaler]]:
    bus = MemoryBus()
    actuator = LocalActuator(home=tmp_path, command=(sys.executable, str(FAKE_RUNTIME)))
    scaler = Autoscaler(bus, actuator, tick_s=0.05)
    try:
        async with scaler.running():
            yield bus, actuator, scaler
    finally:
        await actuator.aclose()
        await bus.aclose()


async def endpoints(bus: MemoryBus) -> RevisionEndpoints | None:
    return (await bus.snapshot()).endpoints.get(KEY)


async def test_poke_cold_start_serve_then_back_to_zero(
    platform: tuple[MemoryBus, LocalActuator, Autoscaler],
) -> None:
    bus, actuator, scaler = platform
    await bus.publish_services([service(spec("m", running="0"))])
    await eventually(lambda: len(scaler.statuses()) == 1)
    assert scaler.statuses()[0].state == "scaled-to-zero"
    await bus.poke(KEY)

    async def serving() -> bool:
        # The activator reports the held request until a replica serves it.
        await bus.publish_stats([ActivatorStats("a1", KEY, queued=1, in_flight=0, at=time.time())])
        e = await endpoints(bus)
        return e is not None and len(e.serving) == 1

    await eventually(serving, bound_s=30)
    await bus.publish_stats([ActivatorStats("a1", KEY, queued=0, in_flight=0, at=time.time())])
    e = await endpoints(bus)
    assert e is not None
    async with httpx.AsyncClient() as client:
        assert (await client.get(e.serving[0].url + "/health")).status_code == 200
    # Nothing runs on it: after the grace period it is drained, stopped and unpublished.

    async def emptied() -> bool:
        e = await endpoints(bus)
        return e is not None and e.endpoints == () and actuator.replicas(KEY) == []

    await eventually(emptied, bound_s=30)
    status = scaler.statuses()[0]
    assert (status.state, status.ready_replicas, status.desired_replicas) == (
        "scaled-to-zero",
        0,
        0,
    )
    assert status.last_cold_start is not None
    assert "engine_ready" in dict(status.last_cold_start.phases)


async def test_failing_runtime_answers_waiters_with_its_error(
    platform: tuple[MemoryBus, LocalActuator, Autoscaler],
) -> None:
    bus, _, scaler = platform
    await bus.publish_services([service(spec("fail", running="0"))])
    await eventually(lambda: len(scaler.statuses()) == 1)
    await bus.poke(KEY)

    async def failure() -> bool:
        await bus.publish_stats([ActivatorStats("a1", KEY, queued=1, in_flight=0, at=time.time())])
        e = await endpoints(bus)
        return e is not None and e.failure is not None and "no model weights" in e.failure

    await eventually(failure, bound_s=30)
    e = await endpoints(bus)
    assert e is not None and e.failure is not None and "exited with code 3" in e.failure
