"""The suspended tier with real vLLM (issue 17): ready -> suspended, the replica's processes
(runtime, vLLM's API server, its engine core) use no CPU while suspended, a request wakes it and
is answered with no cold start, and it is stopped after its second window."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from openai import AsyncOpenAI

from harness.coldstart.suspended import (
    cpu_ticks,
    process_states,
    replica_group,
    row_of,
    suspended_tiny_chat,
    wait_for_state,
)
from harness.platform import Control, Platform

pytestmark = pytest.mark.e2e

SERVICE = "sleepy-chat"


async def test_ready_suspended_woken_then_stopped(platform: Platform, tmp_path: Path) -> None:
    client = AsyncOpenAI(base_url=f"{platform.url}/default/{SERVICE}/v1", api_key="unused")
    async with client, Control(platform) as control:
        await control.deploy(suspended_tiny_chat(tmp_path, SERVICE))
        # A cold start from zero.
        first = await client.completions.create(model=SERVICE, prompt="Hello", max_tokens=4)
        assert first.choices[0].text is not None
        row = await wait_for_state(control, SERVICE, "ready", 30)
        (url,) = row["replica_urls"]
        groups = replica_group(url)
        while (cold := row["last_cold_start"]) is None:  # reported a moment after ready
            await asyncio.sleep(0.2)
            row = row_of(await control.status(), SERVICE) or row
        assert len(process_states(groups)) >= 2, "the runtime and vLLM's engine core"

        # Idle for suspend-after (3 s): suspended, withdrawn from the endpoints.
        row = await wait_for_state(control, SERVICE, "suspended", 60)
        assert row["suspended_replicas"] == 1 and row["replica_urls"] == []
        # SIGSTOP reaches a process that is running on another core at its next scheduling
        # point: on a loaded machine the last ones show "T" a moment after the status does.
        deadline = time.monotonic() + 10
        while set(process_states(groups).values()) != {"T"} and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.1)
        states = process_states(groups)
        assert set(states.values()) == {"T"}, states  # every process of the group stopped
        before = cpu_ticks(groups)
        await asyncio.sleep(3)
        after = cpu_ticks(groups)
        assert before == after, (before, after)  # not one clock tick of CPU while suspended

        # A request at the suspended revision is held, wakes the replica, and is answered by it.
        t0 = time.monotonic()
        woken = await client.completions.create(model=SERVICE, prompt="Hi", max_tokens=4)
        wake_s = time.monotonic() - t0
        assert woken.choices[0].text is not None
        row = row_of(await control.status(), SERVICE)
        assert row is not None and row["replica_urls"] == [url]  # the same replica, no new one
        # No cold start happened: the last one is still the first request's.
        assert row["last_cold_start"]["replica_id"] == cold["replica_id"]
        assert set(process_states(groups).values()) <= {"R", "S", "D"}
        print(f"suspended -> answered in {wake_s:.3f} s")

        # Suspended again, then stopped after the second window (window 10 s + grace 10 s).
        await wait_for_state(control, SERVICE, "suspended", 60)
        await wait_for_state(control, SERVICE, "scaled-to-zero", 90)
        deadline = time.monotonic() + 20
        while process_states(groups) and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.2)
        assert process_states(groups) == {}, "the replica's processes are gone"
