"""Two activator processes and one autoscaler over a real redis-server.

The activators are the real entry point (``python -m activator``); the autoscaler drives the local
actuator with a stand-in runtime (no vLLM), so this checks the bus wiring: a poke from either
activator wakes the autoscaler, endpoint updates reach both, stats from both add up.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from autoscaler.loop import Autoscaler
from embedded.local_actuator import LocalActuator
from harness.activators import activators as start_activators
from harness.redis_server import RedisServer
from torpor.bus.redis import RedisBus
from torpor.manifest import apply_manifest, parse_service

REPO = Path(__file__).resolve().parents[2]
FAKE_RUNTIME = REPO / "tests/embedded/fake_runtime.py"
MANIFEST = (REPO / "manifests/examples/tiny-chat.yaml").read_text()
KEY = "default/tiny-chat-00001"

pytestmark = pytest.mark.redis


@pytest.fixture
def activators(redis_server: RedisServer, tmp_path: Path) -> Iterator[list[str]]:
    with start_activators(redis_server.url, tmp_path) as bases:
        yield bases


@pytest.fixture
async def control(redis_server: RedisServer, tmp_path: Path) -> AsyncIterator[RedisBus]:
    scaler_bus = await RedisBus.connect(redis_server.url)
    control_bus = await RedisBus.connect(redis_server.url)
    actuator = LocalActuator(home=tmp_path, command=(sys.executable, str(FAKE_RUNTIME)))
    scaler = Autoscaler(scaler_bus, actuator, tick_s=0.2)
    try:
        async with scaler.running():
            yield control_bus
    finally:
        await actuator.aclose()
        await scaler_bus.aclose()
        await control_bus.aclose()


async def test_two_activators_one_autoscaler(activators: list[str], control: RedisBus) -> None:
    service = apply_manifest(parse_service(MANIFEST), None)
    await control.publish_services([service])
    first, second = activators
    body = {"model": "tiny-chat", "prompt": "hi", "max_tokens": 1}
    async with httpx.AsyncClient(timeout=60) as client:
        # At zero: the request is held by the second activator, whose poke starts a replica.
        held = await client.post(f"{second}/default/tiny-chat/v1/completions", json=body)
        assert held.status_code == 200, held.text
        replica = held.json()["replica_id"]
        assert held.json()["path"] == "/v1/completions"

        # The endpoint reached the first activator too: it forwards to the same replica at once.
        direct = await client.post(
            f"{first}/v1/completions",
            json=body,
            headers={"Host": "tiny-chat.default.example.com"},
        )
        assert direct.status_code == 200
        assert direct.json()["replica_id"] == replica

    # Both activators report stats for the revision on the shared bus, and they add up.
    deadline = time.monotonic() + 15
    reporters: set[str] = set()
    totals = 0
    while time.monotonic() < deadline and (len(reporters) < 2 or totals < 2):
        snapshot = await control.snapshot()
        mine = [s for s in snapshot.stats if s.revision == KEY]
        reporters = {s.activator_id for s in mine}
        totals = sum(s.requests_total for s in mine)
        await asyncio.sleep(0.2)
    assert reporters == {"act-1", "act-2"}
    assert totals == 2
