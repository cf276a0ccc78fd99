"""torpor's controller and loop against Knative Serving's own rules (harness/knative_serving.py):
what a cluster would show. A first revision at initial-scale 0 becomes Ready; a second one rolls
out only after its first ready pod, then takes the traffic; a rollback; a revision that fails to
start; a restart of the autoscaler with revisions at zero cold-starts none of them."""

from __future__ import annotations

import asyncio
import contextlib
import copy
from collections.abc import AsyncIterator
from typing import Any

import pytest

from autoscaler.decide import ReplicaLoad
from autoscaler.loop import Autoscaler
from harness.knative_serving import (
    Cond,
    KnativeServing,
    propagate_autoscaler_status,
)
from harness.kube_emulator import KubeEmulator
from knative.actuator import KnativeActuator
from knative.controller import KnativeController
from knative.kube import Kube
from torpor.bus.memory import MemoryBus

from .knative_world import APPS, CORE, NS, actuator, bus, config, controller, emulator, eventually

__all__ = ["actuator", "bus", "controller", "emulator"]  # fixtures

Json = dict[str, Any]


def manifest(
    *, initial_scale: str | None = None, args: str = "--max-model-len=512", traffic: Any = None
) -> Json:
    annotations = {
        "autoscaling.knative.dev/class": "llm.torpor.dev",
        "autoscaling.knative.dev/max-scale": "3",
    }
    if initial_scale is not None:
        annotations["autoscaling.knative.dev/initial-scale"] = initial_scale
    spec: Json = {
        "template": {
            "metadata": {"annotations": annotations},
            "spec": {
                "containers": [
                    {
                        "image": "ghcr.io/torpor/runtime-cpu:0.1",
                        "args": ["--model=hf://tiny/chat", args],
                        "ports": [{"containerPort": 8080}],
                    }
                ]
            },
        }
    }
    if traffic is not None:
        spec["traffic"] = traffic
    return {"apiVersion": "serving.knative.dev/v1", "kind": "Service",
            "metadata": {"name": "chat", "namespace": NS}, "spec": spec}  # fmt: skip


class _NoScrape:
    async def scrape(self, replica_id: str, url: str) -> ReplicaLoad | None:
        return ReplicaLoad(replica_id)


@pytest.fixture
async def serving(emulator: KubeEmulator) -> AsyncIterator[KnativeServing]:
    emulator.replicasets = True
    world = KnativeServing(emulator)
    task = asyncio.create_task(world.run())
    try:
        yield world
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@contextlib.asynccontextmanager
async def loop_running(
    bus: MemoryBus, actuator: KnativeActuator, controller: KnativeController
) -> AsyncIterator[Autoscaler]:
    scaler = Autoscaler(bus, actuator, tick_s=0.05, scrape=_NoScrape(), leader=controller.leader)
    async with scaler.running():
        yield scaler


def replicas(emulator: KubeEmulator, revision: str) -> int:
    d = emulator.get(APPS, "deployments", NS, f"{revision}-deployment")
    return -1 if d is None else int(d["spec"]["replicas"])


def ready(serving: KnativeServing, revision: str) -> str | None:
    c = serving.revision_condition(NS, revision, "Ready")
    return None if c is None else c.status


async def first_pod_ready(emulator: KubeEmulator, revision: str, ip: str) -> str:
    pods = await eventually(lambda: emulator.pods_of(NS, f"{revision}-deployment"))
    name = str(pods[0]["metadata"]["name"])
    emulator.pod_ready(NS, name, ip)
    return name


async def stays(check: Any, seconds: float) -> None:
    """``check()`` holds on every look for ``seconds`` (the loop ticks every 0.05 s)."""
    end = asyncio.get_running_loop().time() + seconds
    while asyncio.get_running_loop().time() < end:
        assert check()
        await asyncio.sleep(0.05)


def test_propagate_autoscaler_status_fails_an_uninitialized_inactive_revision() -> None:
    """The rule that made torpor's old status fatal (revision_lifecycle.go): a PA with Ready
    False, a service name and ScaleTargetInitialized not True fails the Revision."""
    conds = {"ResourcesAvailable": Cond("Unknown"), "ContainerHealthy": Cond("Unknown")}
    pa: Json = {
        "serviceName": "chat-00001",
        "conditions": [
            {"type": "Ready", "status": "False", "reason": "NoTraffic"},
            {"type": "ScaleTargetInitialized", "status": "Unknown"},
        ],
    }
    propagate_autoscaler_status(conds, pa)
    assert conds["ResourcesAvailable"] == Cond(
        "False", "ProgressDeadlineExceeded", "Initial scale was never achieved"
    )
    initialized = copy.deepcopy(pa)
    initialized["conditions"][1]["status"] = "True"
    conds = {"ResourcesAvailable": Cond("Unknown"), "ContainerHealthy": Cond("Unknown")}
    propagate_autoscaler_status(conds, initialized)
    assert conds["ResourcesAvailable"].status == "True"
    assert conds["Active"].status == "False"  # inactive and Ready: Active is not in the set


async def test_a_first_revision_at_initial_scale_0_becomes_ready_at_zero(
    emulator: KubeEmulator,
    bus: MemoryBus,
    controller: KnativeController,
    actuator: KnativeActuator,
    serving: KnativeServing,
) -> None:
    async with loop_running(bus, actuator, controller):
        assert serving.apply(manifest(initial_scale="0")) == "chat-00001"
        await eventually(lambda: ready(serving, "chat-00001") == "True")
        await eventually(lambda: serving.traffic(NS, "chat") == {"chat-00001": 100})
        active = serving.revision_condition(NS, "chat-00001", "Active")
        assert active is not None and active.status == "False"  # Ready and inactive, at zero
        assert (
            replicas(emulator, "chat-00001") == 0
            and emulator.pods_of(NS, "chat-00001-deployment") == []
        )


async def test_a_second_revision_rolls_out_after_its_first_ready_pod_and_rolls_back(
    emulator: KubeEmulator,
    bus: MemoryBus,
    controller: KnativeController,
    actuator: KnativeActuator,
    serving: KnativeServing,
) -> None:
    async with loop_running(bus, actuator, controller):
        serving.apply(manifest(initial_scale="0"))
        await eventually(lambda: serving.traffic(NS, "chat") == {"chat-00001": 100})

        # A new template at Knative's default initial scale (1): the Deployment is made with
        # one replica; the labeler routes the latest created revision, so its PA is Reachable.
        assert serving.apply(manifest(args="--max-model-len=1024")) == "chat-00002"
        await eventually(lambda: serving.reachability_of(NS, "chat-00002") == "Reachable")
        # torpor keeps it at its initial scale (it used to hold it at zero: not in the Route),
        # and the traffic stays on the first revision until it is Ready.
        await stays(
            lambda: (
                replicas(emulator, "chat-00002") == 1
                and serving.traffic(NS, "chat") == {"chat-00001": 100}
            ),
            1.0,
        )
        assert ready(serving, "chat-00002") != "True"
        await first_pod_ready(emulator, "chat-00002", "10.0.0.2")
        await eventually(lambda: ready(serving, "chat-00002") == "True")
        await eventually(lambda: serving.traffic(NS, "chat") == {"chat-00002": 100})
        # The first revision is no longer routed: Unreachable (its min-scale would not count).
        await eventually(lambda: serving.reachability_of(NS, "chat-00001") == "Unreachable")

        # Rollback: the Route pins the first revision, Ready at zero; it takes the traffic at
        # once, and the second, unrouted, is Unreachable.
        pinned = [{"revisionName": "chat-00001", "percent": 100}]
        serving.apply(manifest(args="--max-model-len=1024", traffic=pinned))
        await eventually(lambda: serving.traffic(NS, "chat") == {"chat-00001": 100})
        await eventually(lambda: serving.reachability_of(NS, "chat-00002") == "Unreachable")
        await eventually(lambda: serving.reachability_of(NS, "chat-00001") == "Reachable")


async def test_a_revision_that_fails_to_start_never_takes_the_traffic(
    emulator: KubeEmulator,
    bus: MemoryBus,
    controller: KnativeController,
    actuator: KnativeActuator,
    serving: KnativeServing,
) -> None:
    async with loop_running(bus, actuator, controller):
        serving.apply(manifest(initial_scale="0"))
        await eventually(lambda: serving.traffic(NS, "chat") == {"chat-00001": 100})
        serving.apply(manifest(args="--max-model-len=99999"))
        pods = await eventually(lambda: emulator.pods_of(NS, "chat-00002-deployment"))
        pod = copy.deepcopy(pods[0])
        pod["status"] = {
            "phase": "Running",
            "containerStatuses": [
                {
                    "name": "user-container",
                    "ready": False,
                    "restartCount": 3,
                    "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                    "lastState": {
                        "terminated": {"exitCode": 1, "reason": "Error", "message": "OOM"}
                    },
                }
            ],
        }
        emulator.put(CORE, "pods", pod)
        # Knative's revision reconciler fails it (ContainerHealthy False, ExitCode1); torpor's
        # PA says why; the Route keeps the first revision; the failed one becomes Unreachable.
        await eventually(lambda: ready(serving, "chat-00002") == "False")
        healthy = serving.revision_condition(NS, "chat-00002", "ContainerHealthy")
        assert healthy is not None and healthy.reason == "ExitCode1"
        await eventually(lambda: serving.reachability_of(NS, "chat-00002") == "Unreachable")
        await stays(lambda: serving.traffic(NS, "chat") == {"chat-00001": 100}, 0.5)


async def test_a_restart_with_revisions_at_zero_cold_starts_none_of_them(
    emulator: KubeEmulator, bus: MemoryBus, serving: KnativeServing
) -> None:
    """Revisions at the default initial scale (1), once initialized and scaled to zero, stay at
    zero when a new autoscaler process starts: it reads ScaleTargetInitialized from the PAs."""
    services = ["chat", "code", "docs"]

    async def world(identity: str) -> tuple[Kube, KnativeController, KnativeActuator]:
        kube = Kube.for_host(emulator.url)
        ctl = KnativeController(kube, bus, config(identity))
        await ctl.start()
        await asyncio.wait_for(ctl.synced(), 10)
        await eventually(lambda: ctl.is_leader)
        act = KnativeActuator(kube, ctl, leader=ctl.leader, identity=identity)
        return kube, ctl, act

    kube, ctl, act = await world("autoscaler-0")
    async with loop_running(bus, act, ctl):
        for i, name in enumerate(services):
            m = manifest()
            m["metadata"]["name"] = name
            revision = serving.apply(m)
            await first_pod_ready(emulator, revision, f"10.0.1.{i}")
        for name in services:
            await eventually(lambda n=name: ready(serving, f"{n}-00001") == "True")  # type: ignore[misc]
    await ctl.aclose()
    await kube.aclose()
    # Between the two processes they went to zero (as the old leader's grace period would).
    for name in services:
        deployment = copy.deepcopy(
            emulator.get(APPS, "deployments", NS, f"{name}-00001-deployment")
        )
        assert deployment is not None
        deployment["spec"]["replicas"] = 0
        emulator.put(APPS, "deployments", deployment)
        for pod in emulator.pods_of(NS, f"{name}-00001-deployment"):
            emulator.finish_terminating(NS, pod["metadata"]["name"])

    kube, ctl, act = await world("autoscaler-0")  # the restarted process
    try:
        async with loop_running(bus, act, ctl):
            await stays(lambda: all(replicas(emulator, f"{n}-00001") == 0 for n in services), 1.5)
            assert all(emulator.pods_of(NS, f"{n}-00001-deployment") == [] for n in services)
            assert all(ready(serving, f"{n}-00001") == "True" for n in services)
    finally:
        await ctl.aclose()
        await kube.aclose()


async def test_a_revision_asking_for_api_keys_is_refused_with_the_reason_in_its_status(
    emulator: KubeEmulator,
    bus: MemoryBus,
    controller: KnativeController,
    actuator: KnativeActuator,
    serving: KnativeServing,
) -> None:
    """Issue 22, fix 4: keys cannot work on Kubernetes yet, so the revision is refused (its PA
    not Ready, the annotation named) rather than served without them; Knative's rules then keep
    it out of the Route."""
    m = manifest(initial_scale="0")
    m["spec"]["template"]["metadata"]["annotations"]["torpor.dev/api-keys-secret"] = "chat-keys"
    async with loop_running(bus, actuator, controller):
        serving.apply(m)
        await eventually(lambda: ready(serving, "chat-00001") == "False")
        pa = emulator.get(
            "apis/autoscaling.internal.knative.dev/v1alpha1", "podautoscalers", NS, "chat-00001"
        )
        assert pa is not None
        conditions = {c["type"]: c for c in pa["status"]["conditions"]}
        assert conditions["Ready"]["status"] == "False"
        assert "torpor.dev/api-keys-secret" in conditions["ScaleTargetInitialized"]["message"]
        assert serving.traffic(NS, "chat") == {}
