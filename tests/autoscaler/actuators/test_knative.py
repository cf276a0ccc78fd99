"""The Knative controller and actuator against an API server emulator speaking the real wire format.

The official ``kubernetes`` client talks HTTP to ``KubeEmulator`` (tests/autoscaler/actuators/
kube_emulator.py); nothing in the controller is patched. The emulator plays Knative's and
Kubernetes' other controllers by hand: the test creates the PA, Revision and Deployment Knative
would create, and the pods and EndpointSlices the ReplicaSet and endpoint controllers would.
"""

from __future__ import annotations

import asyncio
import copy
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from autoscaler.actuator import Phase
from autoscaler.actuators.knative import DELETION_COST, FIRST_TO_GO, KnativeActuator
from autoscaler.actuators.knative_config import KnativeConfig
from autoscaler.actuators.knative_controller import KnativeController
from autoscaler.actuators.knative_errors import NotLeader
from autoscaler.actuators.knative_kube import Kube
from autoscaler.actuators.knative_lease import LeaseConfig, micro_time
from autoscaler.actuators.knative_status import condition
from autoscaler.actuators.knative_watch import Backoff
from autoscaler.decide import ReplicaLoad
from autoscaler.loop import Autoscaler
from torpor.bus.base import ActivatorStats
from torpor.bus.memory import MemoryBus
from torpor.spec import RevisionSpec, ServiceSpec

from .kube_emulator import KubeEmulator

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
) -> None:
    """What Knative's revision reconciler creates for one revision."""
    annotations = {
        "autoscaling.knative.dev/class": autoscaler_class,
        "autoscaling.knative.dev/max-scale": "3",
    }
    kube.put(
        SERVING,
        "revisions",
        {
            "apiVersion": "serving.knative.dev/v1",
            "kind": "Revision",
            "metadata": {
                "name": revision,
                "namespace": NS,
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
                "namespace": NS,
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
                "namespace": NS,
                "labels": labels(service, revision),
            },
            "spec": {"replicas": replicas},
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
    """Wired as autoscaler/__main__.py wires it: the controller's caches, its Lease check."""
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


async def test_torpor_class_pa_is_published_scaled_and_given_knative_status(
    emulator: KubeEmulator, bus: MemoryBus, actuator: KnativeActuator
) -> None:
    seed_revision(emulator, "chat", "chat-00001")

    services = await eventually(published(bus))
    rev = spec_of(bus, "chat-00001")
    assert services[0].name == "chat"
    assert rev.ref.key == "default/chat-00001"
    assert rev.autoscaling.max_scale == 3
    assert rev.runtime.model == "hf://tiny/chat"
    assert rev.timeout_s == 600
    assert services[0].traffic[0].revision == "chat-00001"

    # At zero: a Proxy-mode SKS and the KPA's NoTraffic status.
    await eventually(lambda: cond(emulator, "chat-00001", "Active") == "False")
    sks = emulator.get(SKS, "serverlessservices", NS, "chat-00001")
    assert sks is not None
    assert sks["spec"]["mode"] == "Proxy"
    assert sks["spec"]["objectRef"]["name"] == "chat-00001-deployment"
    assert sks["metadata"]["ownerReferences"][0]["kind"] == "PodAutoscaler"
    status = pa_status(emulator, "chat-00001")
    assert status["desiredScale"] == 0
    assert status["serviceName"] == "chat-00001"
    assert status["metricsServiceName"] == "chat-00001-private"
    active = condition(status, "Active")
    assert active is not None and active["reason"] == "NoTraffic"
    assert condition(status, "Ready") is not None

    # The loop decides 2: the Deployment is scaled through its scale subresource.
    await actuator.start(rev, 2)
    deployment = emulator.get(APPS, "deployments", NS, "chat-00001-deployment")
    assert deployment is not None and deployment["spec"]["replicas"] == 2
    assert emulator.writes("/deployments/chat-00001-deployment/scale")
    # Until pods exist, the replicas asked for count as starting.
    replicas = actuator.replicas("default/chat-00001")
    assert [r.phase for r in replicas] == [Phase.STARTING, Phase.STARTING]
    await eventually(lambda: cond(emulator, "chat-00001", "Active") == "Unknown")

    # Pods come up; one is ready behind queue-proxy's port.
    seed_pod(emulator, "chat-00001", "chat-00001-deployment-a", "10.0.0.1", ready=True)
    seed_pod(emulator, "chat-00001", "chat-00001-deployment-b", "10.0.0.2", ready=False)
    await eventually(
        lambda: any(r.phase is Phase.READY for r in actuator.replicas("default/chat-00001"))
    )
    by_id = {r.replica_id: r for r in actuator.replicas("default/chat-00001")}
    assert by_id["chat-00001-deployment-a"].url == "http://10.0.0.1:8012"
    assert by_id["chat-00001-deployment-b"].phase is Phase.STARTING

    mark_sks_ready(emulator, "chat-00001")
    await eventually(lambda: cond(emulator, "chat-00001", "Ready") == "True")
    status = pa_status(emulator, "chat-00001")
    assert status["desiredScale"] == 2
    assert status["actualScale"] == 1
    assert {c["type"]: c["status"] for c in status["conditions"]} == {
        "Active": "True",
        "ScaleTargetInitialized": "True",
        "SKSReady": "True",
        "Ready": "True",
    }
    assert all("lastTransitionTime" in c for c in status["conditions"])
    sks = emulator.get(SKS, "serverlessservices", NS, "chat-00001")
    assert sks is not None and sks["spec"]["mode"] == "Serve"

    # Scale down the replica the loop chose: it is marked to go first, then scale 2 -> 1.
    await actuator.stop(rev, "chat-00001-deployment-b")
    pod = emulator.get(CORE, "pods", NS, "chat-00001-deployment-b")
    assert pod is not None
    assert pod["metadata"]["annotations"][DELETION_COST] == FIRST_TO_GO
    deployment = emulator.get(APPS, "deployments", NS, "chat-00001-deployment")
    assert deployment is not None and deployment["spec"]["replicas"] == 1
    ids = [r.replica_id for r in actuator.replicas("default/chat-00001")]
    assert ids == ["chat-00001-deployment-a"]


async def test_pod_in_crash_loop_is_a_failed_replica_with_its_message(
    emulator: KubeEmulator, bus: MemoryBus, actuator: KnativeActuator
) -> None:
    seed_revision(emulator, "chat", "chat-00001", replicas=1)
    emulator.put(
        CORE,
        "pods",
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": "chat-00001-deployment-x",
                "namespace": NS,
                "labels": labels("chat", "chat-00001"),
            },
            "status": {
                "phase": "Running",
                "containerStatuses": [
                    {
                        "name": "user-container",
                        "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                        "lastState": {
                            "terminated": {
                                "reason": "Error",
                                "exitCode": 1,
                                "message": "ValueError: model not found in cache",
                            }
                        },
                    }
                ],
            },
        },
    )
    replicas = await eventually(
        lambda: [
            r
            for r in actuator.replicas("default/chat-00001")
            if r.replica_id == "chat-00001-deployment-x"
        ]
    )
    assert replicas[0].phase is Phase.FAILED
    assert replicas[0].error is not None
    assert "CrashLoopBackOff" in replicas[0].error
    assert "model not found in cache" in replicas[0].error
    await eventually(lambda: cond(emulator, "chat-00001", "Active") == "False")
    active = condition(pa_status(emulator, "chat-00001"), "Active")
    assert active is not None and "model not found" in active["message"]


async def test_pa_of_another_class_is_left_alone(
    emulator: KubeEmulator, bus: MemoryBus, controller: KnativeController
) -> None:
    seed_revision(emulator, "other", "other-00001", autoscaler_class="kpa.autoscaling.knative.dev")
    seed_revision(emulator, "chat", "chat-00001")
    await eventually(published(bus))
    await eventually(lambda: cond(emulator, "chat-00001", "Active") is not None)
    await asyncio.wait_for(controller.reconcile(), 10)

    assert [s.name for s in bus._services] == ["chat"]
    assert emulator.get(SKS, "serverlessservices", NS, "other-00001") is None
    assert pa_status(emulator, "other-00001") == {}
    assert not emulator.writes("other-00001")


async def test_watch_410_gone_relists_and_catches_up(
    emulator: KubeEmulator, bus: MemoryBus, controller: KnativeController
) -> None:
    seed_revision(emulator, "chat", "chat-00001")
    await eventually(published(bus))
    lists_before = controller._pas.relists

    # History is compacted and every stream drops: resuming from the old version gets 410.
    emulator.compact()
    seed_revision(emulator, "chat", "chat-00002")
    emulator.compact()
    emulator.break_watches()

    await eventually(lambda: controller._pas.relists > lists_before)
    services = await eventually(lambda: [s for s in bus._services if len(s.revisions) == 2] or None)
    assert [r.ref.name for r in services[0].revisions] == ["chat-00001", "chat-00002"]
    # The stale resume was answered 410 before the relist.
    assert "podautoscalers" in emulator.gone_sent


async def test_watch_resumes_from_last_resource_version_without_relisting(
    emulator: KubeEmulator, bus: MemoryBus, controller: KnativeController
) -> None:
    seed_revision(emulator, "chat", "chat-00001")
    await eventually(published(bus))
    lists_before = controller._pas.relists
    seen_rv = controller._pas.resource_version
    emulator.break_watches()
    seed_revision(emulator, "chat", "chat-00002")
    await eventually(lambda: [s for s in bus._services if len(s.revisions) == 2] or None)
    assert controller._pas.relists == lists_before
    assert ("podautoscalers", seen_rv) in emulator.watch_starts


async def test_conflict_on_status_update_rereads_and_retries(
    emulator: KubeEmulator, bus: MemoryBus, actuator: KnativeActuator
) -> None:
    conflicts = []

    def someone_else_writes_first(method: str, key: Any, sub: str | None) -> None:
        # Another writer touches the PA between our read and our write, once.
        if key[1] == "podautoscalers" and sub == "status" and not conflicts:
            pa = copy.deepcopy(emulator.objects[key])
            pa["metadata"].setdefault("labels", {})["touched"] = "yes"
            emulator.put(key[0], key[1], pa)
            conflicts.append(key)

    emulator.before_write = someone_else_writes_first
    seed_revision(emulator, "chat", "chat-00001")
    await eventually(lambda: cond(emulator, "chat-00001", "Active") == "False")

    assert conflicts, "the conflict was never provoked"
    status_writes = [p for _, p in emulator.writes("/podautoscalers/chat-00001/status")]
    assert len(status_writes) >= 2  # the first answered 409, the retry succeeded
    pa = emulator.get(PA, "podautoscalers", NS, "chat-00001")
    assert pa is not None and pa["metadata"]["labels"]["touched"] == "yes"


async def test_conflict_on_scale_adds_to_the_new_number(
    emulator: KubeEmulator, bus: MemoryBus, actuator: KnativeActuator
) -> None:
    seed_revision(emulator, "chat", "chat-00001", replicas=1)
    await eventually(published(bus))
    rev = spec_of(bus, "chat-00001")
    raced = []

    def scaled_by_someone_else(method: str, key: Any, sub: str | None) -> None:
        if sub == "scale" and not raced:
            deployment = copy.deepcopy(emulator.objects[key])
            deployment["spec"]["replicas"] = 3
            emulator.put(key[0], key[1], deployment)
            raced.append(key)

    emulator.before_write = scaled_by_someone_else
    await actuator.start(rev, 1)
    deployment = emulator.get(APPS, "deployments", NS, "chat-00001-deployment")
    assert deployment is not None and deployment["spec"]["replicas"] == 4


async def test_losing_the_lease_stops_actuation_at_once(
    emulator: KubeEmulator, bus: MemoryBus, controller: KnativeController, actuator: KnativeActuator
) -> None:
    seed_revision(emulator, "chat", "chat-00001")
    await eventually(published(bus))
    rev = spec_of(bus, "chat-00001")
    await eventually(lambda: cond(emulator, "chat-00001", "Active") == "False")
    lease = emulator.get(COORD, "leases", "torpor-system", "torpor-autoscaler")
    assert lease is not None and lease["spec"]["holderIdentity"] == "autoscaler-0"

    # Another replica takes the Lease over (say after a network partition healed).
    taken = copy.deepcopy(lease)
    taken["spec"]["holderIdentity"] = "autoscaler-1"
    taken["spec"]["renewTime"] = micro_time(1e9)
    emulator.put(COORD, "leases", taken)
    await eventually(lambda: not controller.is_leader)
    writes_before = len(emulator.writes(""))

    # The standby refuses to act, with a typed error rather than silently.
    with pytest.raises(NotLeader, match="autoscaler-0"):
        await actuator.start(rev, 2)
    seed_pod(emulator, "chat-00001", "chat-00001-deployment-a", "10.0.0.1", ready=True)
    await eventually(lambda: actuator.replicas("default/chat-00001"))
    with pytest.raises(NotLeader):
        await actuator.stop(rev, "chat-00001-deployment-a")
    await asyncio.wait_for(controller.reconcile(), 10)

    deployment = emulator.get(APPS, "deployments", NS, "chat-00001-deployment")
    assert deployment is not None and deployment["spec"]["replicas"] == 0
    our_writes = [w for w in emulator.writes("")[writes_before:] if "/leases/" not in w[1]]
    assert our_writes == []
    lease = emulator.get(COORD, "leases", "torpor-system", "torpor-autoscaler")
    assert lease is not None and lease["spec"]["holderIdentity"] == "autoscaler-1"


async def test_a_second_replica_waits_while_the_lease_is_held(
    emulator: KubeEmulator, bus: MemoryBus, controller: KnativeController
) -> None:
    kube = Kube.for_host(emulator.url)
    follower = KnativeController(kube, bus, config("autoscaler-1"))
    await follower.start()
    try:
        await asyncio.wait_for(follower.synced(), 10)
        lease_reads = len([r for r in emulator.requests if "/leases/" in r[1]])
        await eventually(
            lambda: len([r for r in emulator.requests if "/leases/" in r[1]]) > lease_reads + 4
        )
        assert controller.is_leader
        assert not follower.is_leader
    finally:
        await follower.aclose()
        await kube.aclose()


class _NoScrape:
    async def scrape(self, replica_id: str, url: str) -> ReplicaLoad | None:
        return ReplicaLoad(replica_id)


async def test_the_same_autoscaler_loop_scales_a_knative_revision_from_zero(
    emulator: KubeEmulator, bus: MemoryBus, actuator: KnativeActuator
) -> None:
    """The loop that drives local processes drives the Deployment here, unchanged."""
    seed_revision(emulator, "chat", "chat-00001")
    scaler = Autoscaler(bus, actuator, tick_s=0.05, scrape=_NoScrape())
    async with scaler.running():
        await eventually(published(bus))
        await eventually(lambda: scaler.statuses())
        # A request waits in an activator while the revision is at zero: stats, then a poke.
        now = time.time()
        await bus.publish_stats([ActivatorStats("activator-0", "default/chat-00001", 1, 0, now)])
        await bus.poke("default/chat-00001")

        def scaled() -> bool:
            d = emulator.get(APPS, "deployments", NS, "chat-00001-deployment")
            return d is not None and d["spec"]["replicas"] >= 1

        await eventually(scaled)
        # Only one scale-up for one waiter, though the loop ticks many times before pods exist.
        await asyncio.sleep(0.3)
        deployment = emulator.get(APPS, "deployments", NS, "chat-00001-deployment")
        assert deployment is not None and deployment["spec"]["replicas"] == 1
        await eventually(lambda: cond(emulator, "chat-00001", "Active") == "Unknown")


async def test_api_errors_back_off_and_recover(emulator: KubeEmulator, bus: MemoryBus) -> None:
    emulator.fail_next("/podautoscalers", 500, times=3)
    emulator.fail_next("/leases/", 503, times=2)
    seed_revision(emulator, "chat", "chat-00001")
    kube = Kube.for_host(emulator.url)
    act = KnativeController(kube, bus, config())
    await act.start()
    try:
        await asyncio.wait_for(act.synced(), 10)
        await eventually(published(bus))
        failed = [p for m, p in emulator.requests if m == "GET" and p.endswith("/podautoscalers")]
        assert len(failed) >= 4  # three 500s, then the list that worked
        assert act.is_leader
    finally:
        await act.aclose()
        await kube.aclose()


def test_backoff_doubles_up_to_its_cap() -> None:
    b = Backoff(base_s=0.2, cap_s=30.0)
    assert [b.delay(n) for n in (1, 2, 3, 4)] == [0.2, 0.4, 0.8, 1.6]
    assert b.delay(50) == 30.0
