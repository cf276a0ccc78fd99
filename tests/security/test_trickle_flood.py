"""A trickle flood against the connection cap (issue 23, finding 4), measured.

A real ``python -m activator`` with ``RLIMIT_NOFILE`` 300 (cap (300 - 64) / 2 = 118) and a 3 s
whole-body deadline. 150 connections each send a request head and then one body byte every 2 s
(inside the 30 s idle timeout, which alone never ends them). Such connections are serving a
request, so the cap does not shed them: while they hold it, other clients get 503. The body
deadline ends every one of them with 408, and the cap is free again: a flood holds it for at most
``--body-timeout`` (60 s by default) per wave, where before it held it for as long as it trickled.
"""

from __future__ import annotations

import asyncio
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

NOFILE = 300
BODY_TIMEOUT_S = 3.0
FLOOD = 150
KEY = "default/chat-00001"


def _low_nofile() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, NOFILE))


def _start(bus_url: str, log: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    command = [sys.executable, "-m", "activator", "--bus", bus_url, "--host", "127.0.0.1",
               "--port", str(port), "--id", "flood", "--body-timeout", str(BODY_TIMEOUT_S)]
    with log.open("wb") as f:
        proc = subprocess.Popen(command, stdout=f, stderr=subprocess.STDOUT, preexec_fn=_low_nofile)
    deadline = time.monotonic() + 30
    while True:
        assert proc.poll() is None, log.read_text()
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc, port
        except httpx.HTTPError:
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)


async def _trickler(port: int, answers: list[tuple[float, bytes]], started: float) -> None:
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        answers.append((time.monotonic() - started, b"connect failed"))
        return
    writer.write(b"POST /default/chat/v1/completions HTTP/1.1\r\nHost: a\r\n"
                 b"Content-Length: 1000\r\n\r\n")

    async def trickle() -> None:
        for _ in range(1000):
            await asyncio.sleep(2.0)
            writer.write(b"x")

    task = asyncio.create_task(trickle())
    try:
        head = await asyncio.wait_for(reader.readline(), 30)
        answers.append((time.monotonic() - started, head[9:12]))
    except (OSError, TimeoutError):
        answers.append((time.monotonic() - started, b"no answer"))
    finally:
        task.cancel()
        writer.close()


async def test_a_trickle_flood_holds_the_cap_only_until_the_body_deadline(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    upstream = Upstream()
    bus = await RedisBus.connect(redis_server.url)
    try:
        async with serve(upstream) as replica:
            await bus.publish_services([service()])
            await bus.publish_endpoints(endpoints(KEY, replica))
            proc, port = await asyncio.to_thread(_start, redis_server.url, tmp_path / "a.log")
            try:
                started = time.monotonic()
                answers: list[tuple[float, bytes]] = []
                flood = [asyncio.create_task(_trickler(port, answers, started))
                         for _ in range(FLOOD)]
                await asyncio.sleep(0.5)
                normal: list[tuple[float, int]] = []
                async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
                    while time.monotonic() - started < BODY_TIMEOUT_S + 3:
                        try:
                            r = await client.post("/default/chat/v1/completions",
                                                  json={"model": "m"}, timeout=5)
                            normal.append((time.monotonic() - started, r.status_code))
                        except httpx.HTTPError:
                            normal.append((time.monotonic() - started, 0))
                        await asyncio.sleep(0.25)
                await asyncio.gather(*flood)
            finally:
                proc.terminate()
                await asyncio.to_thread(proc.wait, 30)
    finally:
        await bus.aclose()
    cut = [t for t, code in answers if code == b"408"]
    refused = [t for t, code in answers if code == b"503"]
    during = [code for t, code in normal if t < BODY_TIMEOUT_S - 0.2]
    after = [code for t, code in normal if t > BODY_TIMEOUT_S + 1.0]
    print(f"flood {FLOOD}: {len(cut)} cut with 408 at {min(cut):.2f}-{max(cut):.2f} s, "
          f"{len(refused)} refused 503 at once; normal requests during: {during}, after: {after}")
    others = [code for _, code in answers if code not in (b"408", b"503")]
    assert len(others) <= 2, others  # a connection the cap closed before its 503 was read
    assert cut and min(cut) >= BODY_TIMEOUT_S - 0.1 and max(cut) < BODY_TIMEOUT_S + 2.0
    assert after and all(code == 200 for code in after)
