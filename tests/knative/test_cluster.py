"""The Knative controller and actuator against what a real cluster does and a naive emulator hides.

Each test turns on one behaviour of ``KubeEmulator`` (a test harness imitating a cluster): pods
that stay listed while they terminate, the ReplicaSet's own choice of which pod to delete, a
watch refused with HTTP 410, BOOKMARK events, an object leaving a watch's label selector, and
namespaces. The official client talks real HTTP to it, as it would to an API server.
"""

from __future__ import annotations

import copy
import json

import httpx

from autoscaler.actuator import Phase
from harness.kube_emulator import KubeEmulator
from knative.actuator import KnativeActuator
from knative.controller import KnativeController
from torpor.bus.memory import MemoryBus

from .knative_world import (
    APPS,
    CORE,
    NS,
    actuator,
    bus,
    controller,
    emulator,
    eventually,
    pa_status,
    published,
    seed_revision,
    spec_of,
)

__all__ = ["actuator", "bus", "controller", "emulator"]  # fixtures

KEY = "default/chat-00001"
DEPLOYMENT = "chat-00001-deployment"


def phases(actuator: KnativeActuator) -> dict[str, Phase]:
    return {r.replica_id: r.phase for r in actuator.replicas(KEY)}


def replicas_wanted(emulator: KubeEmulator) -> int:
    deployment = emulator.get(APPS, "deployments", NS, DEPLOYMENT)
    assert deployment is not None
    return int(deployment["spec"]["replicas"])


async def two_pods(emulator: KubeEmulator, actuator: KnativeActuator, bus: MemoryBus) -> list[str]:
    """Scale the revision to two through the actuator; the ReplicaSet creates the pods."""
    emulator.replicasets = True
    seed_revision(emulator, "chat", "chat-00001")
    await eventually(published(bus))
    await actuator.start(spec_of(bus, "chat-00001"), 2)
    pods = await eventually(lambda: len(emulator.pods_of(NS, DEPLOYMENT)) == 2)
    assert pods
    names = [p["metadata"]["name"] for p in emulator.pods_of(NS, DEPLOYMENT)]
    # Created pending and unscheduled: starting replicas, not placeholders.
    await eventually(lambda: set(phases(actuator)) == set(names))
    assert set(phases(actuator).values()) == {Phase.STARTING}
    return names


async def test_a_terminating_pod_is_no_replica_while_still_listed(
    emulator: KubeEmulator, bus: MemoryBus, controller: KnativeController, actuator: KnativeActuator
) -> None:
    a, b = await two_pods(emulator, actuator, bus)
    emulator.pod_ready(NS, a, "10.0.0.1")
    emulator.pod_ready(NS, b, "10.0.0.2")
    await eventually(lambda: set(phases(actuator).values()) == {Phase.READY})
    await eventually(lambda: pa_status(emulator, "chat-00001").get("actualScale") == 2)

    # The loop drained b: it is marked cheapest, the ReplicaSet picks it and it terminates.
    await actuator.stop(spec_of(bus, "chat-00001"), b)
    assert replicas_wanted(emulator) == 1
    assert emulator.terminating(NS) == [b]
    await eventually(lambda: controller.pods(spec_of(bus, "chat-00001").ref)[1:] != [])
    assert phases(actuator) == {a: Phase.READY}
    # Knative's status counts only the pod that serves, while b is still listed.
    await eventually(lambda: pa_status(emulator, "chat-00001").get("actualScale") == 1)
    assert emulator.get(CORE, "pods", NS, b) is not None

    # A pod evicted from outside terminates too; the ReplicaSet replaces it at once, and the
    # replacement is the one starting replica (no placeholder on top of it).
    emulator.terminate(NS, a)
    await eventually(lambda: len(phases(actuator)) == 1 and a not in phases(actuator))
    (replacement,) = phases(actuator)
    assert replacement not in (a, b) and phases(actuator)[replacement] is Phase.STARTING
    await eventually(lambda: pa_status(emulator, "chat-00001").get("actualScale") == 0)

    emulator.finish_terminating(NS, a)
    emulator.finish_terminating(NS, b)
    await eventually(lambda: len(controller.pods(spec_of(bus, "chat-00001").ref)) == 1)
    assert phases(actuator) == {replacement: Phase.STARTING}


async def test_the_replicaset_removes_a_starting_pod_before_the_one_marked_cheapest(
    emulator: KubeEmulator, bus: MemoryBus, controller: KnativeController, actuator: KnativeActuator
) -> None:
    """Pending and unready pods go before pod-deletion-cost is even read. Stopping a ready pod
    while another still starts removes the starting one; the actuator must not then hide the
    ready one as stopped (it would run on, uncounted, holding its accelerator)."""
    ready, starting = await two_pods(emulator, actuator, bus)
    emulator.pod_ready(NS, ready, "10.0.0.1")
    await eventually(lambda: phases(actuator).get(ready) is Phase.READY)

    await actuator.stop(spec_of(bus, "chat-00001"), ready)
    assert replicas_wanted(emulator) == 1
    assert emulator.terminating(NS) == [starting]
    await eventually(lambda: starting not in phases(actuator))
    # What the loop sees is what runs: the ready pod, still serving; nothing pending.
    assert phases(actuator) == {ready: Phase.READY}

    # With every pod alike (both ready), the cost decides and the chosen pod goes.
    await actuator.start(spec_of(bus, "chat-00001"), 1)
    await eventually(lambda: len(emulator.pods_of(NS, DEPLOYMENT)) == 3)
    (third,) = {p["metadata"]["name"] for p in emulator.pods_of(NS, DEPLOYMENT)} - {ready, starting}
    await eventually(lambda: third in phases(actuator))
    emulator.pod_ready(NS, third, "10.0.0.3")
    await eventually(lambda: phases(actuator).get(third) is Phase.READY)
    await actuator.stop(spec_of(bus, "chat-00001"), ready)
    assert emulator.terminating(NS) == sorted([starting, ready])
    assert phases(actuator) == {third: Phase.READY}


async def test_watch_answered_http_410_relists(
    emulator: KubeEmulator, bus: MemoryBus, controller: KnativeController
) -> None:
    seed_revision(emulator, "chat", "chat-00001")
    await eventually(published(bus))
    lists_before = controller._pas.relists
    emulator.gone_as_http = True
    emulator.compact()
    seed_revision(emulator, "chat", "chat-00002")
    emulator.compact()
    emulator.break_watches()

    await eventually(lambda: controller._pas.relists > lists_before)
    await eventually(lambda: [s for s in bus._services if len(s.revisions) == 2] or None)
    assert "podautoscalers" in emulator.gone_sent


async def test_bookmarks_let_a_quiet_watch_resume_after_compaction(
    emulator: KubeEmulator, bus: MemoryBus, controller: KnativeController
) -> None:
    """The pod watch selects revision pods only; other kinds move the resourceVersion on. Without
    a bookmark its version falls behind compaction and a restart costs a relist."""
    seed_revision(emulator, "chat", "chat-00001")
    await eventually(published(bus))
    pods = controller._pods
    relists = pods.relists
    for n in range(2, 5):
        seed_revision(emulator, "chat", f"chat-0000{n}")
    await eventually(lambda: len(bus._services[0].revisions) == 4)
    behind = pods.resource_version
    assert behind is not None and int(behind) < emulator._current_rv

    # Leases are renewed all the while (and move the version on): compact at the bookmark.
    at = emulator._current_rv
    emulator.bookmark()
    await eventually(lambda: pods.resource_version == str(at))
    emulator.compact(at)
    emulator.break_watches()
    await eventually(lambda: ("pods", str(at)) in emulator.watch_starts)
    assert pods.relists == relists
    assert "pods" not in emulator.gone_sent
    assert emulator.bookmarks_sent >= 7  # every reflector asked for them


async def test_a_pod_relabelled_out_of_the_revision_leaves_the_cache(
    emulator: KubeEmulator, bus: MemoryBus, controller: KnativeController, actuator: KnativeActuator
) -> None:
    """An operator takes a pod out of service by removing its revision label: the pod watch's
    selector no longer matches it, and the API server sends DELETED."""
    a, b = await two_pods(emulator, actuator, bus)
    emulator.pod_ready(NS, a, "10.0.0.1")
    await eventually(lambda: phases(actuator).get(a) is Phase.READY)

    pod = copy.deepcopy(emulator.get(CORE, "pods", NS, a))
    assert pod is not None
    del pod["metadata"]["labels"]["serving.knative.dev/revision"]
    emulator.put(CORE, "pods", pod)
    await eventually(lambda: a not in phases(actuator))
    assert b in phases(actuator)
    assert a not in {p["metadata"]["name"] for p in controller.pods(spec_of(bus, "chat-00001").ref)}

    # Labelled back, it is ADDED again.
    pod = copy.deepcopy(emulator.get(CORE, "pods", NS, a))
    assert pod is not None
    pod["metadata"]["labels"]["serving.knative.dev/revision"] = "chat-00001"
    emulator.put(CORE, "pods", pod)
    await eventually(lambda: a in phases(actuator))


async def test_same_names_in_two_namespaces_stay_apart(
    emulator: KubeEmulator, bus: MemoryBus, controller: KnativeController, actuator: KnativeActuator
) -> None:
    emulator.replicasets = True
    seed_revision(emulator, "chat", "chat-00001", namespace="team-a")
    seed_revision(emulator, "chat", "chat-00001", namespace="team-b")
    services = await eventually(lambda: len(bus._services) == 2 and bus._services)
    assert [(s.namespace, s.name) for s in services] == [("team-a", "chat"), ("team-b", "chat")]
    rev_a = services[0].revisions[0]
    assert rev_a.ref.key == "team-a/chat-00001"

    await actuator.start(rev_a, 1)
    assert [p["metadata"]["namespace"] for p in emulator.pods_of("team-a", DEPLOYMENT)] == [
        "team-a"
    ]
    assert emulator.pods_of("team-b", DEPLOYMENT) == []
    await eventually(lambda: len(actuator.replicas("team-a/chat-00001")) == 1)
    (pod,) = emulator.pods_of("team-a", DEPLOYMENT)
    emulator.pod_ready("team-a", pod["metadata"]["name"], "10.0.0.1")
    await eventually(lambda: actuator.replicas("team-a/chat-00001")[0].phase is Phase.READY)
    assert actuator.replicas("team-b/chat-00001") == []
    deployment_b = emulator.get(APPS, "deployments", "team-b", DEPLOYMENT)
    assert deployment_b is not None and deployment_b["spec"]["replicas"] == 0

    # The emulator's namespaced watch sees its namespace only, as the API server's does.
    url = f"{emulator.url}/api/v1/namespaces/team-b/pods"
    async with httpx.AsyncClient() as client:
        listing = (await client.get(url)).json()
        assert listing["items"] == []
        params = {"watch": "true", "resourceVersion": "0", "timeoutSeconds": "1"}
        async with client.stream("GET", url, params=params) as response:
            events = [json.loads(line) async for line in response.aiter_lines() if line]
    assert events == []
