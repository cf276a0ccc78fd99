"""The fault run's Redis phase: two ``python -m activator`` processes over a real redis-server,
in front of the embedded platform's own replicas, while Redis and then one activator restart.

The harness plays the autoscaler's part on this bus: it publishes the service and the endpoints
of replicas the embedded platform already runs (their URLs from the control API), so the
activators forward real completions to real vLLM. Load alternates between the two activators.
Faults: redis-server killed and started again on its port (the activators keep serving from what
they hold, and resubscribe), then one activator stopped with SIGTERM (it drains what it has in
flight) and started again on the same port (connections refused meanwhile are retried by the
client after a pause, counted apart from requests).
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx

from harness.faults.loadgen import Load, Tally, Target
from harness.manifests import TINY_CHAT
from harness.ports import free_port
from harness.redis_server import RedisServer, find_redis_server
from torpor.bus.base import Endpoint, RevisionEndpoints
from torpor.bus.redis import RedisBus
from torpor.manifest import apply_manifest, parse_service
from torpor.spec import ServiceSpec

KEY = "default/tiny-chat-00001"


class ActivatorProcess:
    """``python -m activator`` on a fixed port; ``restart`` keeps the port."""

    def __init__(self, bus_url: str, ident: str, log: Path) -> None:
        self.bus_url, self.ident, self.log = bus_url, ident, log
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def _spawn(self) -> subprocess.Popen[bytes]:
        command = [sys.executable, "-m", "activator", "--bus", self.bus_url]
        command += ["--host", "127.0.0.1", "--port", str(self.port), "--id", self.ident]
        with self.log.open("ab") as f:
            return subprocess.Popen(command, stdout=f, stderr=subprocess.STDOUT)

    async def start(self) -> None:
        self.proc = await asyncio.to_thread(self._spawn)
        deadline = time.monotonic() + 60
        async with httpx.AsyncClient(timeout=1) as client:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"activator {self.ident} exited: {self.log.read_text()}")
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(f"{self.url}/healthz")).status_code == 200:
                        return
                await asyncio.sleep(0.1)
        raise RuntimeError(f"activator {self.ident} did not start: {self.log.read_text()}")

    async def stop(self) -> int:
        if self.proc is None:
            return 0
        self.proc.terminate()
        code = await asyncio.to_thread(self.proc.wait, 60)
        self.proc = None
        return code


async def _republish(bus: RedisBus, service: ServiceSpec, endpoints: tuple[Endpoint, ...]) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            await bus.publish_services([service])
            await bus.publish_endpoints(RevisionEndpoints(KEY, endpoints, version=2))
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


async def redis_phase(
    tally: Tally,
    replica_urls: list[str],
    workdir: Path,
    *,
    count: int,
    step_s: float,
    concurrency: int,
    max_tokens: int,
    timeout_s: float,
    fault: Callable[[str, str], None],
    keep_going: Callable[[], Awaitable[None]] | None = None,
) -> list[int]:
    """Run the phase; returns the activators' exit codes. Skipped (empty) without redis-server."""
    binary = find_redis_server()
    if binary is None or not replica_urls:
        return []
    await asyncio.to_thread(workdir.mkdir, parents=True, exist_ok=True)
    redis = RedisServer(binary, workdir)
    await asyncio.to_thread(redis.start)
    bus = await RedisBus.connect(redis.url)
    activators = [ActivatorProcess(redis.url, f"act-{i}", workdir / f"act-{i}.log") for i in (1, 2)]
    codes: list[int] = []
    try:
        service = apply_manifest(parse_service(TINY_CHAT.read_text()), None)
        await bus.publish_services([service])
        endpoints = tuple(Endpoint(f"embedded-{i}", u) for i, u in enumerate(replica_urls))
        await bus.publish_endpoints(RevisionEndpoints(KEY, endpoints, version=1))
        for a in activators:
            await a.start()
        targets = [
            Target("tiny-chat", f"{a.url}/default/tiny-chat/v1", "tiny-chat") for a in activators
        ]
        load = Load(
            targets,
            count,
            concurrency=concurrency,
            max_tokens=max_tokens,
            timeout_s=timeout_s,
            deadline_s=timeout_s * 4,
        )
        stop = asyncio.Event()
        tally.phase = "redis bus: two activators"
        running = asyncio.create_task(load.run(tally, stop))

        async def step(seconds: float) -> None:
            await asyncio.wait({running}, timeout=seconds)  # the load goes on meanwhile

        try:
            await step(step_s)
            tally.phase = "redis bus: redis-server restarted"
            fault("redis restarted", "redis-server SIGKILLed and started again, two activators up")
            await asyncio.to_thread(redis.restart, kill=True)
            # A restarted redis-server holds nothing: the control plane (here, the harness)
            # publishes its state again, as the autoscaler does when its bus comes back.
            await _republish(bus, service, endpoints)
            await step(step_s)
            tally.phase = "redis bus: activator restarted"
            fault("activator restarted", "python -m activator SIGTERM (drains), started again")
            codes.append(await activators[0].stop())
            await activators[0].start()
            tally.phase = "redis bus: after the restarts"
            await step(step_s)
        finally:
            stop.set()
            await running
    finally:
        for a in activators:
            with contextlib.suppress(Exception):
                codes.append(await a.stop())
        await bus.aclose()
        await asyncio.to_thread(redis.stop)
    return codes
