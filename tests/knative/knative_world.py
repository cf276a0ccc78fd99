"""The world the Knative controller's tests run in: the API emulator, the bus, the controller and
actuator wired as ``python -m knative`` wires them, and what Knative's own controllers would
have created (revisions, pods, slices), seeded by hand.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from harness.kube_emulator import KubeEmulator
from knative.actuator import KnativeActuator
from knative.config import KnativeConfig
from knative.controller import KnativeController
from knative.kube import Kube
from knative.lease import LeaseConfig
from knative.status import condition
from knative.watch import Backoff
from torpor.bus.memory import MemoryBus
from torpor.spec import RevisionSpec, ServiceSpec

PA = "apis/autoscaling.internal.knative.dev/v1alpha1"
SKS = "apis/networking.internal.knative.dev/v1alpha1"
SERVING = "apis/serving.knative.dev/v1"
APPS = "apis/apps/v1"
CORE = "api/v1"
DISCOVERY = "apis/discovery.k8s.io/v1"
COORD = "apis/coordination.k8s.io/v1"
NS = "default"

Json = dict[str, Any]


def labels(service: str, revision: str) -> dict[str, str]:
    return {
        "serving.knative.dev/service": service,
        "serving.knative.dev/configuration": service,
        "serving.knative.dev/revision": revision,
        "serving.knative.dev/configurationGeneration": revision.rsplit("-", 1)[1].lstrip("0"),
    }


def seed_revision(
    kube: KubeEmulator,
    service: str,
    revision: str,
    *,
    autoscaler_class: str = "llm.torpor.dev",
    replicas: int = 0,
    namespace: str = NS,
    target: str | None = None,
) -> None:
    """What Knative's revision reconciler creates for one revision."""
    annotations = {
        "autoscaling.knative.dev/class": autoscaler_class,
        "autoscaling.knative.dev/max-scale": "3",
    }
    if target is not None:
        annotations["autoscaling.knative.dev/target"] = target
    kube.put(
        SERVING,
        "revisions",
        {
            "apiVersion": "serving.knative.dev/v1",
            "kind": "Revision",
            "metadata": {
                "name": revision,
                "namespace": namespace,
                "labels": labels(service, revision),
                "annotations": annotations,
            },
            "spec": {
                "containerConcurrency": 0,
                "timeoutSeconds": 600,
                "containers": [
                    {
                        "name": "user-container",
                        "image": "ghcr.io/torpor/runtime-cpu:0.1",
                        "args": ["--model=hf://tiny/chat", "--max-model-len=512"],
                        "ports": [{"containerPort": 8080, "protocol": "TCP"}],
                        "readinessProbe": {"successThreshold": 1, "tcpSocket": {"port": 0}},
                    }
                ],
            },
        },
    )
    kube.put(
        PA,
        "podautoscalers",
        {
            "apiVersion": "autoscaling.internal.knative.dev/v1alpha1",
            "kind": "PodAutoscaler",
            "metadata": {
                "name": revision,
                "namespace": namespace,
                "labels": labels(service, revision),
                "annotations": annotations,
            },
            "spec": {
                "protocolType": "http1",
                "reachability": "Reachable",
                "scaleTargetRef": {
                    "apiVersion": "apps/v1",
                    "kind": "Deployment",
                    "name": f"{revision}-deployment",
                },
            },
        },
    )
    kube.put(
        APPS,
        "deployments",
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {
                "name": f"{revision}-deployment",
                "namespace": namespace,
                "labels": labels(service, revision),
            },
            "spec": {
                "replicas": replicas,
                "template": {"metadata": {"labels": labels(service, revision)}},
            },
        },
    )


def seed_pod(kube: KubeEmulator, revision: str, name: str, ip: str, *, ready: bool) -> None:
    """A pod of the revision, and the private service's EndpointSlice listing it."""
    kube.put(
        CORE,
        "pods",
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "namespace": NS,
                "labels": labels("chat", revision),
            },
            "status": {
                "phase": "Running",
                "podIP": ip,
                "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
            },
        },
    )
    slice_name = f"{revision}-private-abcde"
    existing = kube.get(DISCOVERY, "endpointslices", NS, slice_name)
    endpoints = [e for e in (existing or {}).get("endpoints", []) if e["targetRef"]["name"] != name]
    endpoints.append(
        {
            "addresses": [ip],
            "conditions": {"ready": ready},
            "targetRef": {"kind": "Pod", "name": name, "namespace": NS},
        }
    )
    kube.put(
        DISCOVERY,
        "endpointslices",
        {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "addressType": "IPv4",
            "metadata": {
                "name": slice_name,
                "namespace": NS,
                "labels": labels("chat", revision)
                | {"kubernetes.io/service-name": f"{revision}-private"},
            },
            "endpoints": endpoints,
            "ports": [
                {"name": "http-queueadm", "port": 8022, "protocol": "TCP"},
                {"name": "http", "port": 8012, "protocol": "TCP"},
            ],
        },
    )


def mark_sks_ready(kube: KubeEmulator, name: str) -> None:
    """What Knative's ServerlessService reconciler reports once the services exist."""
    sks = copy.deepcopy(kube.get(SKS, "serverlessservices", NS, name))
    assert sks is not None
    sks["status"] = {
        "serviceName": name,
        "privateServiceName": f"{name}-private",
        "conditions": [{"type": "Ready", "status": "True"}],
    }
    kube.put(SKS, "serverlessservices", sks)


async def eventually(check: Callable[[], Any], *, within_s: float = 30.0) -> Any:
    """Poll until ``check()`` returns something truthy (a bound, not a timing assertion)."""
    async with asyncio.timeout(within_s):
        while True:
            result = check()
            if result:
                return result
            await asyncio.sleep(0.02)


def config(identity: str = "autoscaler-0") -> KnativeConfig:
    return KnativeConfig(
        identity=identity,
        lease=LeaseConfig(lease_duration_s=30, renew_deadline_s=20, retry_period_s=0.05),
        resync_s=0.5,
        backoff=Backoff(base_s=0.01, cap_s=0.1),
    )


@pytest.fixture
async def emulator() -> AsyncIterator[KubeEmulator]:
    kube = KubeEmulator()
    await kube.start()
    try:
        yield kube
    finally:
        await kube.stop()


@pytest.fixture
async def bus() -> AsyncIterator[MemoryBus]:
    b = MemoryBus()
    try:
        yield b
    finally:
        await b.aclose()


@pytest.fixture
async def controller(emulator: KubeEmulator, bus: MemoryBus) -> AsyncIterator[KnativeController]:
    kube = Kube.for_host(emulator.url)
    ctl = KnativeController(kube, bus, config())
    await ctl.start()
    try:
        await asyncio.wait_for(ctl.synced(), 10)
        await eventually(lambda: ctl.is_leader)
        yield ctl
    finally:
        await ctl.aclose()
        await kube.aclose()


@pytest.fixture
async def actuator(
    emulator: KubeEmulator, controller: KnativeController
) -> AsyncIterator[KnativeActuator]:
    """Wired as knative/__main__.py wires it: the controller's caches, its Lease check."""
    kube = Kube.for_host(emulator.url)
    try:
        yield KnativeActuator(kube, controller, leader=controller.leader, identity="autoscaler-0")
    finally:
        await kube.aclose()


def published(bus: MemoryBus) -> Callable[[], tuple[ServiceSpec, ...]]:
    def check() -> tuple[ServiceSpec, ...]:
        return bus._services

    return check


def spec_of(bus: MemoryBus, revision: str) -> RevisionSpec:
    for service in bus._services:
        for rev in service.revisions:
            if rev.ref.name == revision:
                return rev
    raise AssertionError(f"{revision} not published")


def pa_status(emulator: KubeEmulator, name: str) -> Json:
    pa = emulator.get(PA, "podautoscalers", NS, name)
    assert pa is not None
    status: Json = pa.get("status") or {}
    return status


def cond(emulator: KubeEmulator, name: str, type_: str) -> str | None:
    c = condition(pa_status(emulator, name), type_)
    return None if c is None else str(c["status"])
