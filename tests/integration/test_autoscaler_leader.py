"""Two ``python -m knative`` processes, one Lease: exactly one acts.

Real parts: both autoscalers are the real entry point in their own processes, reaching the
Kubernetes API emulator (harness/kube_emulator.py, a test harness imitating a
cluster) over HTTP through a kubeconfig, and a real ``redis-server`` as the bus. Each process has
its own address on the emulator and its own TCP tap in front of redis, so what each one writes
to either is known. The test plays Knative (it creates the revision's objects), the kubelet (it
marks the ReplicaSet's pods ready) and an activator (it publishes stats and pokes).

It shows: while the leader acts, the standby neither publishes on the bus nor writes to the API;
when the leader is killed, the standby, with requests waiting, still does neither until the Lease
has gone unrenewed for its duration; then it takes the Lease, republishes and scales.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from harness.kube_emulator import KubeEmulator
from harness.redis_server import RedisServer
from tests.integration.autoscaler_process import AutoscalerProcess
from tests.knative.knative_world import APPS, COORD, NS, eventually, seed_revision
from torpor.bus import EndpointsChanged, ServicesChanged
from torpor.bus.base import ActivatorStats, BusEvent
from torpor.bus.redis import _PUBLISH_ENDPOINTS, _PUBLISH_SERVICES, RedisBus

pytestmark = pytest.mark.redis

KEY = "default/chat-00001"
DEPLOYMENT = "chat-00001-deployment"


# The bus publishes through these Lua scripts, which redis-py sends as EVALSHA <sha1 of the text>.
PUBLICATIONS = {
    hashlib.sha1(script.encode()).hexdigest().encode(): name
    for name, script in (("services", _PUBLISH_SERVICES), ("endpoints", _PUBLISH_ENDPOINTS))
}


class BusTap:
    """A TCP proxy in front of redis-server for one process: notes each publication it sends."""

    def __init__(self, redis_port: int) -> None:
        self._port = redis_port
        self.published: list[tuple[float, str]] = []  # (monotonic, "services" | "endpoints")
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._connection, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        return f"redis://127.0.0.1:{port}/0"

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._port)
        pipes = [
            asyncio.create_task(self._pipe(reader, up_writer, scan=True)),
            asyncio.create_task(self._pipe(up_reader, writer, scan=False)),
        ]
        self._tasks.update(pipes)
        try:
            await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in pipes:
                task.cancel()
                self._tasks.discard(task)
            for w in (writer, up_writer):
                w.close()

    async def _pipe(
        self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, *, scan: bool
    ) -> None:
        tail = b""  # shorter than a sha, so a sha split across reads is counted once
        while data := await src.read(65536):
            if scan:
                window = tail + data
                for sha, name in PUBLICATIONS.items():
                    for _ in range(window.count(sha)):
                        self.published.append((time.monotonic(), name))
                tail = window[-39:]
            dst.write(data)
            await dst.drain()


def holder(emulator: KubeEmulator) -> str | None:
    lease = emulator.get(COORD, "leases", "torpor-system", "torpor-autoscaler")
    return None if lease is None else str(lease["spec"].get("holderIdentity") or "")


def wanted(emulator: KubeEmulator) -> int:
    deployment = emulator.get(APPS, "deployments", NS, DEPLOYMENT)
    assert deployment is not None
    return int(deployment["spec"]["replicas"])


def writes(emulator: KubeEmulator, api: str) -> list[tuple[str, str]]:
    return [(m, p) for m, p in emulator.requests_from(api) if m != "GET"]


class Activator:
    """Plays an activator holding ``queued`` requests: fresh stats every half second."""

    def __init__(self, bus: RedisBus) -> None:
        self.bus = bus
        self.queued = 0

    async def run(self) -> None:
        while True:
            stats = ActivatorStats("activator-0", KEY, self.queued, 0, time.time())
            await self.bus.publish_stats([stats])
            if self.queued:
                await self.bus.poke(KEY)
            await asyncio.sleep(0.5)


@contextlib.asynccontextmanager
async def background(coro: Any) -> AsyncIterator[None]:
    task = asyncio.create_task(coro)
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


class Autoscaler(AutoscalerProcess):
    def __init__(self, identity: str, api: str, tap: BusTap, bus_url: str, tmp_path: Path) -> None:
        super().__init__(identity, api, bus_url, tmp_path)
        self.tap = tap


async def start(
    identity: str, emulator: KubeEmulator, redis_server: RedisServer, tmp_path: Path
) -> Autoscaler:
    tap = BusTap(redis_server.port)
    proc = Autoscaler(identity, await emulator.listen(), tap, await tap.start(), tmp_path)
    await proc.healthy()
    return proc


async def test_one_autoscaler_acts_and_the_standby_takes_over_when_it_dies(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    emulator = KubeEmulator()
    await emulator.start()
    emulator.replicasets = True
    # Target 10 in flight per replica (at 70%): one waiter wants one replica, twenty want the
    # revision's max-scale, 3.
    seed_revision(emulator, "chat", "chat-00001", target="10")
    lease_writes: list[float] = []  # monotonic time of every Lease write

    def on_write(method: str, key: Any, sub: str | None) -> None:
        if key[1] == "leases":
            lease_writes.append(time.monotonic())

    emulator.before_write = on_write
    bus = await RedisBus.connect(redis_server.url)
    seen: list[tuple[float, BusEvent]] = []

    async def record() -> None:
        async for event in bus.events():
            seen.append((time.monotonic(), event))

    activator = Activator(bus)
    procs: list[Autoscaler] = []
    try:
        async with background(record()), background(activator.run()):
            leader = await start("autoscaler-a", emulator, redis_server, tmp_path)
            procs.append(leader)
            await eventually(lambda: holder(emulator) == "autoscaler-a")
            await eventually(lambda: published_services(seen))
            standby = await start("autoscaler-b", emulator, redis_server, tmp_path)
            procs.append(standby)

            # A request waits: the leader scales, the ReplicaSet creates a pod, the kubelet
            # reports it ready, the leader publishes its endpoint.
            activator.queued = 1
            await eventually(lambda: wanted(emulator) == 1)
            (pod,) = emulator.pods_of(NS, DEPLOYMENT)
            emulator.pod_ready(NS, pod["metadata"]["name"], "127.0.0.1")
            await eventually(lambda: endpoint_ids(seen) == {pod["metadata"]["name"]})
            assert holder(emulator) == "autoscaler-a"
            assert any("/scale" in p for _, p in writes(emulator, leader.api))
            assert {name for _, name in leader.tap.published} == {"services", "endpoints"}
            # The standby listed, watched and read the Lease; it wrote and published nothing.
            assert any("/leases/" in p for _, p in emulator.requests_from(standby.api))
            assert writes(emulator, standby.api) == []
            assert standby.tap.published == []

            # The leader dies with twenty requests waiting for more replicas.
            leader.process.send_signal(signal.SIGKILL)
            leader.process.wait()
            killed_at = time.monotonic()
            activator.queued = 20
            await eventually(lambda: holder(emulator) == "autoscaler-b", within_s=30)
            taken_at = next(t for t in lease_writes if t > killed_at)
            await eventually(lambda: wanted(emulator) == 3, within_s=30)
            await eventually(
                lambda: {n for _, n in standby.tap.published} >= {"services", "endpoints"}
            )
    finally:
        for proc in procs:
            proc.stop()
            await proc.tap.stop()
        await bus.aclose()
        await emulator.stop()

    logs = "\n".join(p.log.read_text() for p in procs)
    # The standby waited out the Lease (3 s unrenewed, on its own clock) before acting.
    assert taken_at - killed_at >= 2.5, logs
    # It published nothing before it held the Lease, though requests were waiting...
    assert [t for t, _ in standby.tap.published if t < taken_at] == [], logs
    # ...and its first write of anything but the Lease came after it took the Lease.
    own = writes(emulator, standby.api)
    first_lease = next(i for i, (_, p) in enumerate(own) if "/leases/" in p)
    assert all("/leases/" in p for _, p in own[:first_lease]), own
    assert any("/deployments/chat-00001-deployment/scale" in p for _, p in own[first_lease:])
    # Taking over, it republished the services and the endpoint it found serving.
    after = [e for t, e in seen if t > taken_at]
    assert any(isinstance(e, ServicesChanged) for e in after), logs
    assert any(isinstance(e, EndpointsChanged) and e.endpoints.revision == KEY for e in after), logs


def published_services(seen: list[tuple[float, BusEvent]]) -> bool:
    return any(isinstance(e, ServicesChanged) and e.services for _, e in seen)


def endpoint_ids(seen: list[tuple[float, BusEvent]]) -> set[str]:
    last = [e for _, e in seen if isinstance(e, EndpointsChanged) and e.endpoints.revision == KEY]
    return {ep.replica_id for ep in last[-1].endpoints.endpoints} if last else set()
