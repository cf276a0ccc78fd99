"""Tiny fakes for the autoscaler's seams: an in-memory actuator, a scripted scraper, specs."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace

from autoscaler.actuator import Phase, Replica, SuspendUnsupported
from autoscaler.decide import ReplicaLoad
from torpor.spec import (
    AutoscalingSpec,
    RevisionRef,
    RevisionSpec,
    RuntimeSpec,
    ServiceSpec,
    TrafficTarget,
)


def revision(
    name: str = "chat-00001", service: str = "chat", **autoscaling: object
) -> RevisionSpec:
    a = AutoscalingSpec(**{"initial_scale": 0, **autoscaling})  # type: ignore[arg-type]
    return RevisionSpec(
        ref=RevisionRef("default", name),
        service=service,
        generation=1,
        runtime=RuntimeSpec(image="torpor/runtime", model="/models/tiny"),
        autoscaling=a,
        timeout_s=30.0,
    )


def service(*revisions: RevisionSpec) -> ServiceSpec:
    first = revisions[0]
    return ServiceSpec(
        namespace=first.ref.namespace,
        name=first.service,
        generation=1,
        revisions=revisions,
        traffic=(TrafficTarget(first.ref.name, 100),),
    )


class FakeActuator:
    """Replicas are records; the test decides when they become ready or fail."""

    def __init__(self) -> None:
        self.live: dict[str, dict[str, Replica]] = {}
        # ("start"|"stop"|"forget"|"suspend"|"resume", revision or id)
        self.calls: list[tuple[str, str]] = []
        self._ids = itertools.count(1)
        self.now = 0.0  # what ``suspended_at`` reads: the test's clock
        self.suspend_unsupported = False
        self.wake_fails = False

    async def start(self, revision: RevisionSpec, count: int) -> None:
        for _ in range(count):
            rid = f"{revision.ref.name}-r{next(self._ids)}"
            self.live.setdefault(revision.ref.key, {})[rid] = Replica(
                rid, revision.ref.key, Phase.STARTING, url=None, launched_at=0.0
            )
            self.calls.append(("start", rid))

    async def stop(self, revision: RevisionSpec, replica_id: str) -> None:
        self.live.get(revision.ref.key, {}).pop(replica_id, None)
        self.calls.append(("stop", replica_id))

    async def suspend(self, revision: RevisionSpec, replica_id: str) -> None:
        if self.suspend_unsupported:
            raise SuspendUnsupported("fake: no suspended state")
        replicas = self.live[revision.ref.key]
        replicas[replica_id] = replace(
            replicas[replica_id], phase=Phase.SUSPENDED, suspended_at=self.now
        )
        self.calls.append(("suspend", replica_id))

    async def resume(self, revision: RevisionSpec, replica_id: str) -> None:
        replicas = self.live[revision.ref.key]
        if self.wake_fails:
            replicas[replica_id] = replace(
                replicas[replica_id], phase=Phase.FAILED, error="did not wake"
            )
        else:
            replicas[replica_id] = replace(
                replicas[replica_id], phase=Phase.READY, suspended_at=None
            )
        self.calls.append(("resume", replica_id))

    def replicas(self, revision: str) -> Sequence[Replica]:
        return list(self.live.get(revision, {}).values())

    async def forget(self, revision: str) -> None:
        self.live.pop(revision, None)
        self.calls.append(("forget", revision))

    async def aclose(self) -> None:
        self.live.clear()

    # test controls
    def make_ready(self, revision: str, replica_id: str | None = None) -> Replica:
        replicas = self.live[revision]
        rid = replica_id or next(r for r, x in replicas.items() if x.phase is Phase.STARTING)
        r = replace(replicas[rid], phase=Phase.READY, url=f"http://{rid}.test", ready_at=1.0)
        replicas[rid] = r
        return r

    def fail(self, revision: str, replica_id: str, error: str) -> None:
        replicas = self.live[revision]
        replicas[replica_id] = replace(replicas[replica_id], phase=Phase.FAILED, error=error)

    def started(self) -> list[str]:
        return [x for op, x in self.calls if op == "start"]


class FakeScraper:
    """Loads by replica id; ``block`` makes a replica's scrape hang until released."""

    def __init__(self) -> None:
        self.loads: dict[str, ReplicaLoad | None] = {}
        self.blocked: dict[str, asyncio.Event] = {}

    def set(
        self,
        replica_id: str,
        running: float,
        waiting: float = 0,
        kv: float = 0.0,
        completed: float | None = None,
    ) -> None:
        self.loads[replica_id] = ReplicaLoad(replica_id, running, waiting, kv, completed)

    def block(self, replica_id: str) -> asyncio.Event:
        self.blocked[replica_id] = asyncio.Event()
        return self.blocked[replica_id]

    async def scrape(self, replica_id: str, url: str) -> ReplicaLoad | None:
        gate = self.blocked.get(replica_id)
        if gate is not None:
            await gate.wait()
        return self.loads.get(replica_id, ReplicaLoad(replica_id, 0, 0, 0.0))


async def eventually(check: Callable[[], bool | Awaitable[bool]], bound_s: float = 5.0) -> None:
    """Wait until ``check`` holds; fail after a generous bound (a hang guard, not a timing)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + bound_s
    while True:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if loop.time() > deadline:
            raise AssertionError("condition never held")
        await asyncio.sleep(0.005)
