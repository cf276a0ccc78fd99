"""The Knative actuator: the autoscaler loop's ``Actuator`` for revisions on Knative.

It scales a revision's Deployment (the PodAutoscaler's ``spec.scaleTargetRef``) through the scale
subresource, and reports the revision's replicas from pods and EndpointSlices. It reads those from
the controller's caches (``ClusterView``, implemented by ``knative.controller.KnativeController``)
and writes nothing but Deployment scales and pods; publishing specs, the Lease and the
PodAutoscaler status are the controller's.

Scaling down marks the pod the loop chose with the lowest ``pod-deletion-cost``, then scales the
Deployment down by one. The ReplicaSet looks at the cost only after it has put pending and unready
pods first (``knative.victim``), so where another pod of the revision would go before the chosen
one, the scale still happens (the loop wants one fewer) but the chosen pod is not hidden from the
loop: it will see which pod really went, and the one it drained serving again, rather than a
replica that keeps running uncounted. (The autoscaler may not delete pods: rbac.yaml.)

Only the Lease holder acts: ``start`` and ``stop`` raise ``NotLeader`` on a standby, so a loop
that forgot to check leadership fails loudly instead of racing the leader.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from autoscaler.actuator import Replica, SuspendUnsupported
from knative.errors import CONFLICT, NOT_FOUND, KubeError, NotLeader
from knative.revision import is_placeholder, replicas_of
from knative.victim import DELETION_COST, cost_decides, is_active
from torpor.spec import RevisionRef, RevisionSpec

log = logging.getLogger(__name__)
Json = dict[str, Any]
Obj = Mapping[str, Any]

__all__ = ["DELETION_COST", "FIRST_TO_GO", "ClusterView", "KnativeActuator", "ScaleApi"]

# Lowest int32: the ReplicaSet deletes the pods with the lowest cost first (among equals).
FIRST_TO_GO = str(-(2**31))
# A scale we wrote counts over what the watch shows for at most this long (a relist may skip
# the exact version we wrote).
EXPECTATION_TTL_S = 30.0


class ClusterView(Protocol):
    """The controller's caches, read-only."""

    def pa(self, namespace: str, name: str) -> Obj | None: ...

    def deployment(self, namespace: str, name: str) -> Obj | None: ...

    def pods(self, ref: RevisionRef) -> list[Obj]: ...

    def endpoint_slices(self, ref: RevisionRef) -> list[Obj]: ...


class ScaleApi(Protocol):
    """The writes the actuator makes; ``knative.kube.Kube`` implements them."""

    async def read_deployment_scale(self, namespace: str, name: str) -> Json: ...

    async def patch_deployment_scale(self, namespace: str, name: str, body: Json) -> Json: ...

    async def patch_pod(self, namespace: str, name: str, body: Json) -> Json: ...


def _at_or_after(current: str, written: str) -> bool:
    """Whether the cache has caught up with a write. resourceVersions are opaque by contract;
    they are etcd revisions (integers) in practice, and equality is the fallback."""
    try:
        return int(current) >= int(written)
    except ValueError:
        return current == written


class KnativeActuator:
    """``Actuator`` for revisions on Knative. Owns no task: ``aclose()`` changes nothing (on
    Kubernetes, replicas outlive the autoscaler process and the next leader takes them over)."""

    def __init__(
        self,
        kube: ScaleApi,
        view: ClusterView,
        *,
        leader: Callable[[], bool],
        identity: str = "",
        max_conflict_retries: int = 5,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._kube = kube
        self._view = view
        self._leader = leader
        self._identity = identity
        self._max_retries = max_conflict_retries
        self._clock = clock
        self._stopped: dict[str, set[str]] = {}  # revision key -> pod names the loop stopped
        self._locks: dict[str, asyncio.Lock] = {}
        # (namespace, deployment) -> (resourceVersion written, replicas, when): see _note_scale
        self._expected: dict[tuple[str, str], tuple[str, int, float]] = {}

    # -- the Actuator protocol --------------------------------------------------------------------

    async def start(self, revision: RevisionSpec, count: int) -> None:
        if count <= 0:
            return
        self._require_leader()
        await self._scale_by(revision.ref, count)

    async def stop(self, revision: RevisionSpec, replica_id: str) -> None:
        self._require_leader()
        ref = revision.ref
        if not is_placeholder(replica_id):
            pods = self._view.pods(ref)
            await self._mark(ref, replica_id)
            chosen = next((p for p in pods if p["metadata"]["name"] == replica_id), None)
            if (
                chosen is not None
                and is_active(chosen)
                and not cost_decides(pods, replica_id, int(FIRST_TO_GO))
            ):
                log.info(
                    "%s: the ReplicaSet will remove a pending or unready pod before %s",
                    ref.key,
                    replica_id,
                )
            else:
                self._stopped.setdefault(ref.key, set()).add(replica_id)
        await self._scale_by(ref, -1)

    async def suspend(self, revision: RevisionSpec, replica_id: str) -> None:
        """Unsupported: Kubernetes has no suspended pod. A pod's containers cannot be frozen
        through the API (the kubelet's cgroup freezer is not exposed; an ephemeral container
        could SIGSTOP the process, but the pod would stay Ready in its EndpointSlice and keep
        receiving Knative's probes, which would fail it). Even frozen, the pod keeps its node's
        scheduling: its GPU and memory requests stay allocated in Kubernetes' accounting, so a
        suspended pod saves compute, never capacity. The GPU form that fits is vLLM's sleep mode
        inside a running pod (``POST /sleep?level=1``, ``/wake_up``, with
        ``VLLM_SERVER_DEV_MODE=1``): the pod stays Ready and scheduled, its GPU memory is freed
        for nothing else Kubernetes knows of. Until that is wired in, the loop, told this,
        scales such revisions as without the tier: idle pods are drained and removed."""
        raise SuspendUnsupported("the Knative actuator cannot suspend a pod (see its docstring)")

    async def resume(self, revision: RevisionSpec, replica_id: str) -> None:
        """Unsupported, as ``suspend``: no replica of this actuator is ever suspended."""
        raise SuspendUnsupported("the Knative actuator has no suspended pods to resume")

    def replicas(self, revision: str) -> Sequence[Replica]:
        ref = RevisionRef.parse(revision)
        pods = self._view.pods(ref)
        stopped = self._stopped.get(revision)
        if stopped:
            stopped &= {str(p["metadata"]["name"]) for p in pods}  # forget pods that are gone
        # The Deployment's replicas already exclude the stopped pods (each stop scaled it down).
        return replicas_of(
            revision,
            pods,
            self._view.endpoint_slices(ref),
            desired=self._desired(ref),
            stopped=frozenset(stopped or ()),
            now=self._clock(),
        )

    async def forget(self, revision: str) -> None:
        # Knative deletes a revision's Deployment with the revision; nothing to scale here.
        self._stopped.pop(revision, None)
        self._locks.pop(revision, None)

    async def aclose(self) -> None:
        return None

    # -- scaling --------------------------------------------------------------------------------

    def _require_leader(self) -> None:
        """Called before every write: a replica that lost the Lease stops right there."""
        if not self._leader():
            raise NotLeader(f"{self._identity or 'this autoscaler'} does not hold the lease")

    async def _mark(self, ref: RevisionRef, pod: str) -> None:
        self._require_leader()
        try:
            await self._kube.patch_pod(
                ref.namespace, pod, {"metadata": {"annotations": {DELETION_COST: FIRST_TO_GO}}}
            )
        except KubeError as exc:
            if exc.status != NOT_FOUND:  # already gone is what we wanted
                raise

    def _deployment_name(self, ref: RevisionRef) -> str:
        pa = self._view.pa(ref.namespace, ref.name)
        if pa is not None:
            return str(pa["spec"]["scaleTargetRef"]["name"])
        return f"{ref.name}-deployment"

    def _desired(self, ref: RevisionRef) -> int:
        key = (ref.namespace, self._deployment_name(ref))
        deployment = self._view.deployment(*key)
        expected = self._expected.get(key)
        if expected is not None:
            rv, replicas, at = expected
            seen = deployment is not None and _at_or_after(
                str(deployment["metadata"].get("resourceVersion") or ""), rv
            )
            if not seen and self._clock() - at < EXPECTATION_TTL_S:
                return replicas
            del self._expected[key]
        return int(((deployment or {}).get("spec") or {}).get("replicas") or 0)

    async def _scale_by(self, ref: RevisionRef, delta: int) -> None:
        name = self._deployment_name(ref)
        lock = self._locks.setdefault(ref.key, asyncio.Lock())
        async with lock:
            for _ in range(self._max_retries):
                self._require_leader()
                scale = await self._kube.read_deployment_scale(ref.namespace, name)
                current = int((scale.get("spec") or {}).get("replicas") or 0)
                wanted = max(0, current + delta)
                self._require_leader()
                try:
                    # The resourceVersion makes the patch conditional: if someone scaled in
                    # between, we get 409 and add our delta to their number instead.
                    written = await self._kube.patch_deployment_scale(
                        ref.namespace,
                        name,
                        {
                            "metadata": {"resourceVersion": scale["metadata"]["resourceVersion"]},
                            "spec": {"replicas": wanted},
                        },
                    )
                except KubeError as exc:
                    if exc.status == CONFLICT:
                        continue
                    raise
                self._note_scale(ref.namespace, name, written, wanted)
                log.info("scaled %s/%s from %d to %d", ref.namespace, name, current, wanted)
                return
            raise KubeError(CONFLICT, "Conflict", f"scaling {name}: gave up after retries")

    def _note_scale(self, namespace: str, name: str, written: Json, replicas: int) -> None:
        """Remember a scale we wrote until the Deployment watch shows it (client-go's
        "expectations"): until then replicas() counts what was asked for, so the loop does not
        ask again, and an older event still in flight cannot undo it."""
        rv = str((written.get("metadata") or {}).get("resourceVersion") or "")
        self._expected[(namespace, name)] = (rv, replicas, self._clock())
