"""Two activator processes and one autoscaler over a real redis-server.

The activators are the real entry point (``python -m activator``); the autoscaler drives the local
actuator with a stand-in runtime (no vLLM), so this checks the bus wiring: a poke from either
activator wakes the autoscaler, endpoint updates reach both, stats from both add up.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from autoscaler.actuators.local import LocalActuator
from autoscaler.loop import Autoscaler
from harness.ports import free_port
from harness.redis_server import RedisServer
from torpor.bus.redis import RedisBus
from torpor.manifest import apply_manifest, parse_service

REPO = Path(__file__).resolve().parents[2]
FAKE_RUNTIME = REPO / "tests/autoscaler/fake_runtime.py"
MANIFEST = (REPO / "manifests/examples/tiny-chat.yaml").read_text()
KEY = "default/tiny-chat-00001"

pytestmark = pytest.mark.redis


def _activator(url: str, ident: str, tmp_path: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    log = tmp_path / f"{ident}.log"
    with log.open("wb") as f:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "activator",
                "--bus",
                url,
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--id",
                ident,
            ],
            stdout=f,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            time.sleep(0.1)
    raise AssertionError(f"activator {ident} did not start: {log.read_text()}")


@pytest.fixture
def activators(redis_server: RedisServer, tmp_path: Path) -> Iterator[list[str]]:
    procs = [_activator(redis_server.url, f"act-{i}", tmp_path) for i in (1, 2)]
    try:
        yield [base for _, base in procs]
    finally:
        for proc, _ in procs:
            proc.terminate()
            proc.wait(timeout=30)


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
