"""The Knative controller and actuator against an API server emulator speaking the real wire format.

The official ``kubernetes`` client talks HTTP to ``KubeEmulator`` (harness/
kube_emulator.py); nothing in the controller is patched. The emulator plays Knative's and
Kubernetes' other controllers by hand: the test creates the PA, Revision and Deployment Knative
would create, and the pods and EndpointSlices the ReplicaSet and endpoint controllers would.
"""

from __future__ import annotations

import asyncio
import copy
import time
from typing import Any

import pytest

from autoscaler.actuator import Phase
from autoscaler.decide import ReplicaLoad
from autoscaler.loop import Autoscaler
from harness.kube_emulator import KubeEmulator
from knative.actuator import DELETION_COST, FIRST_TO_GO, KnativeActuator
from knative.controller import KnativeController
from knative.errors import NotLeader
from knative.kube import Kube
from knative.lease import micro_time
from knative.status import condition
from knative.watch import Backoff
from torpor.bus.base import ActivatorStats
from torpor.bus.memory import MemoryBus

from .knative_world import (
    APPS,
    COORD,
    CORE,
    NS,
    PA,
    SKS,
    actuator,
    bus,
    cond,
    config,
    controller,
    emulator,
    eventually,
    labels,
    mark_sks_ready,
    pa_status,
    published,
    seed_pod,
    seed_revision,
    spec_of,
)

__all__ = ["actuator", "bus", "controller", "emulator"]  # fixtures


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
    # The KPA copies both names from the SKS's status (kpa.go ReconcileKind): empty until
    # Knative's SKS reconciler reports them.
    assert status["serviceName"] == "" and status["metricsServiceName"] == ""
    mark_sks_ready(emulator, "chat-00001")
    await eventually(lambda: pa_status(emulator, "chat-00001")["serviceName"] == "chat-00001")
    assert pa_status(emulator, "chat-00001")["metricsServiceName"] == "chat-00001-private"
    status = pa_status(emulator, "chat-00001")
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
    assert replicas[0].error_line == "ValueError: model not found in cache"
    await eventually(lambda: cond(emulator, "chat-00001", "Active") == "False")
    active = condition(pa_status(emulator, "chat-00001"), "Active")
    assert active is not None and "model not found" in active["message"]
    # The kubelet backs the pod's restarts off; the PodAutoscaler says so, as its reason.
    assert active["reason"] == "CrashLoopBackOff"
    initialized = condition(pa_status(emulator, "chat-00001"), "ScaleTargetInitialized")
    assert initialized is not None and initialized["reason"] == "CrashLoopBackOff"


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
    emulator: KubeEmulator, bus: MemoryBus, controller: KnativeController, actuator: KnativeActuator
) -> None:
    """The loop that drives local processes drives the Deployment here, unchanged."""
    seed_revision(emulator, "chat", "chat-00001")
    scaler = Autoscaler(bus, actuator, tick_s=0.05, scrape=_NoScrape(), leader=controller.leader)
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


def _crash_looping_pod(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "labels": labels("chat", "chat-00001")},
        "status": {
            "phase": "Running",
            "containerStatuses": [
                {
                    "name": "user-container",
                    "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off"}},
                    "lastState": {
                        "terminated": {
                            "reason": "Error",
                            "exitCode": 1,
                            "message": "IndexError: index out of range in self",
                        }
                    },
                }
            ],
        },
    }


async def test_crash_looping_pods_feed_the_loops_crash_loop(
    emulator: KubeEmulator, bus: MemoryBus, controller: KnativeController, actuator: KnativeActuator
) -> None:
    """A pod in CrashLoopBackOff is a FAILED replica: the loop counts it like a local replica
    that died, replaces the first at once, and on the second publishes the crash loop that the
    activators answer with."""
    seed_revision(emulator, "chat", "chat-00001")
    scaler = Autoscaler(bus, actuator, tick_s=0.05, scrape=_NoScrape(), leader=controller.leader)
    async with scaler.running():
        await eventually(published(bus))
        await bus.publish_stats([ActivatorStats("a0", "default/chat-00001", 1, 0, time.time())])
        await bus.poke("default/chat-00001")

        def replicas() -> int:
            d = emulator.get(APPS, "deployments", NS, "chat-00001-deployment")
            return int(d["spec"]["replicas"]) if d is not None else -1

        await eventually(lambda: replicas() == 1)
        emulator.put(CORE, "pods", _crash_looping_pod("chat-00001-deployment-a"))
        # Counted, stopped and replaced at once: nothing published for one death.
        await eventually(lambda: bool(emulator.writes("/pods/chat-00001-deployment-a")))
        emulator.put(CORE, "pods", _crash_looping_pod("chat-00001-deployment-b"))

        def looping() -> bool:
            e = bus._endpoints.get("default/chat-00001")
            return e is not None and e.crash_loop is not None

        await eventually(looping)
        e = (await bus.snapshot()).endpoints["default/chat-00001"]
        assert e.crash_loop is not None and e.crash_loop.restarts == 2
        assert e.crash_loop.reason == "CrashLoopBackOff: IndexError: index out of range in self"
        status = scaler.statuses()[0]
        assert status.state == "crash-loop" and status.crash_loop is not None
        assert status.crash_loop.last_error == "IndexError: index out of range in self"
        assert status.crash_loop.backing_off


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
