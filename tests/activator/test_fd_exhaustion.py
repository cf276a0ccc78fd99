"""Slow-loris connections cannot exhaust an activator with few file descriptors (issue 13 item 2).

A real ``python -m activator`` child with ``RLIMIT_NOFILE`` lowered to 256 (so its default
connection cap is (256 - 64) / 2 = 96, with a reserve of 9: ``activator.http.http1``), over a real
redis-server, in front of a fake replica. Three times its cap in connections that never finish a
request (idle ones, heads sent a few bytes at a time and left unfinished) are held open; a normal
request still gets its answer, every time, and the activator never holds more descriptors than its
limit allows.
"""

from __future__ import annotations

import asyncio
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from harness.ports import free_port
from harness.redis_server import RedisServer
from tests.activator.conftest import Upstream, endpoints, serve, service
from torpor.bus.redis import RedisBus

pytestmark = pytest.mark.redis

NOFILE = 256
KEY = "default/chat-00001"


def _low_nofile() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, NOFILE))


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _nofile_limit(pid: int) -> int:
    limits = Path(f"/proc/{pid}/limits").read_text()
    return int(limits.split("Max open files")[1].split()[0])


def _start_activator(bus_url: str, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    """``python -m activator`` with the low limit, once it answers /healthz (blocking)."""
    port = free_port()
    command = [sys.executable, "-m", "activator", "--bus", bus_url, "--host", "127.0.0.1"]
    command += ["--port", str(port), "--id", "lowfd", "--head-timeout", "60"]
    with log.open("wb") as f:
        proc = subprocess.Popen(command, stdout=f, stderr=subprocess.STDOUT, preexec_fn=_low_nofile)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        assert proc.poll() is None, log.read_text()
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)


async def test_held_connections_leave_room_for_a_real_request(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    upstream = Upstream()
    bus = await RedisBus.connect(redis_server.url)
    held: list[asyncio.StreamWriter] = []
    try:
        async with serve(upstream) as replica:
            await bus.publish_services([service()])
            await bus.publish_endpoints(endpoints(KEY, replica))
            proc, url = await asyncio.to_thread(
                _start_activator, redis_server.url, tmp_path / "activator.log"
            )
            try:
                assert _nofile_limit(proc.pid) == NOFILE
                port = int(url.rsplit(":", 1)[1])
                async with httpx.AsyncClient(base_url=url, timeout=10) as client:
                    for i in range(3 * 96):
                        _, writer = await asyncio.open_connection("127.0.0.1", port)
                        if i % 2:  # half a head, the slow-loris way
                            writer.write(b"POST /default/chat/score HTTP/1.1\r\nHost: a\r\nX-")
                        held.append(writer)
                        if i % 48 == 47:
                            answer = await client.post("/default/chat/score", json={"i": i})
                            assert answer.status_code == 200, answer.text
                            assert answer.json()["replica"] == "replica"
                    await asyncio.sleep(0.5)
                    for i in range(5):
                        answer = await client.post("/default/chat/v1/responses/x", json={"n": i})
                        assert answer.status_code == 200, answer.text
                    # Well inside the limit: the cap, not the kernel, said no to the flood.
                    assert _fds(proc.pid) < NOFILE
                    assert proc.poll() is None
                assert len(upstream.seen) == 3 * 96 // 48 + 5
            finally:
                proc.terminate()
                await asyncio.to_thread(proc.wait, 30)
    finally:
        for writer in held:
            writer.close()
        await bus.aclose()
