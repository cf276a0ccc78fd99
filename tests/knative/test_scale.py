"""The controller with many PodAutoscalers: no change, no writes; one change, one revision's
work."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest

from harness.kube_emulator import KubeEmulator
from knative import controller
from knative.controller import KnativeController
from knative.kube import Kube
from torpor.bus.memory import MemoryBus

from .knative_world import (
    CORE,
    NS,
    bus,
    config,
    emulator,
    eventually,
    labels,
    published,
    seed_pod,
    seed_revision,
)

__all__ = ["bus", "emulator"]  # fixtures

N = 40


def names() -> list[str]:
    return [f"m{i:02d}-00001" for i in range(N)]


def our_writes(emulator: KubeEmulator) -> list[tuple[str, str]]:
    return [w for w in emulator.writes("") if "/leases/" not in w[1]]


@pytest.fixture
def reconciled(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """How many times each revision was reconciled (its replicas read from the caches)."""
    counts: Counter[str] = Counter()
    real = controller.replicas_of

    def counting(key: str, *args: Any, **kwargs: Any) -> Any:
        counts[key] += 1
        return real(key, *args, **kwargs)

    monkeypatch.setattr(controller, "replicas_of", counting)
    return counts


async def test_many_unchanged_pod_autoscalers_cost_no_writes_and_no_work(
    emulator: KubeEmulator, bus: MemoryBus, reconciled: Counter[str]
) -> None:
    for name in names():
        seed_revision(emulator, name.rsplit("-", 1)[0], name)
    kube = Kube.for_host(emulator.url)
    ctl = KnativeController(kube, bus, config())
    await ctl.start()
    try:
        await asyncio.wait_for(ctl.synced(), 10)
        # Every PA gets its SKS and first status, then the writes' own events come back.
        await eventually(lambda: len(published(bus)()) == N)
        await eventually(lambda: all(f"{NS}/{n}" in reconciled for n in names()))
        await asyncio.sleep(0.3)
        counts = reconciled.copy()
        # A pod of one revision changes: that revision is reconciled, no other.
        seed_pod(emulator, names()[7], "m07-pod", "10.0.0.7", ready=False)
        await eventually(lambda: reconciled[f"{NS}/{names()[7]}"] > counts[f"{NS}/{names()[7]}"])
        await asyncio.sleep(0.1)  # under the 0.5 s resync: only events drive passes here
        others = {k: v for k, v in reconciled.items() if k != f"{NS}/{names()[7]}"}
        assert others == {k: v for k, v in counts.items() if k != f"{NS}/{names()[7]}"}
        # Several resync periods with nothing changing: whole passes, and not one write.
        before = len(our_writes(emulator))
        await asyncio.sleep(1.6)
        assert len(our_writes(emulator)) == before
    finally:
        await ctl.aclose()
        await kube.aclose()


async def test_a_relabelled_pod_moves_between_revisions(
    emulator: KubeEmulator, bus: MemoryBus
) -> None:
    for name in ("a-00001", "b-00001"):
        seed_revision(emulator, name.rsplit("-", 1)[0], name)
    seed_pod(emulator, "a-00001", "p1", "10.0.0.1", ready=True)
    kube = Kube.for_host(emulator.url)
    ctl = KnativeController(kube, bus, config())
    await ctl.start()
    try:
        await asyncio.wait_for(ctl.synced(), 10)
        ref_a = controller.RevisionRef(NS, "a-00001")
        ref_b = controller.RevisionRef(NS, "b-00001")
        await eventually(lambda: [p["metadata"]["name"] for p in ctl.pods(ref_a)] == ["p1"])
        pod = emulator.get(CORE, "pods", NS, "p1")
        assert pod is not None
        pod = {**pod, "metadata": {**pod["metadata"], "labels": labels("b", "b-00001")}}
        emulator.put(CORE, "pods", pod)
        await eventually(lambda: [p["metadata"]["name"] for p in ctl.pods(ref_b)] == ["p1"])
        assert ctl.pods(ref_a) == []
        emulator.delete(CORE, "pods", NS, "p1")
        await eventually(lambda: ctl.pods(ref_b) == [])
    finally:
        await ctl.aclose()
        await kube.aclose()
