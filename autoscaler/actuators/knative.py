"""The Knative actuator: torpor as the controller of its own PodAutoscaler class.

Knative Serving hands every revision whose ``autoscaling.knative.dev/class`` is not its own to
whichever controller claims the class. This one claims classes ending in ``.torpor.dev``:

- it watches PodAutoscalers (all namespaces), their Revisions and Routes, turns the torpor-class
  ones into ``ServiceSpec``s and publishes them on the bus, so the same autoscaler loop that drives
  local processes decides here too (it never sees a Kubernetes type);
- as the loop's ``Actuator`` it scales the revision's Deployment (``spec.scaleTargetRef``) through
  the scale subresource, marking the pod the loop chose with ``pod-deletion-cost`` before a scale
  down so the ReplicaSet removes that one, and reports replicas from pods and EndpointSlices;
- it creates the ServerlessService and writes the PodAutoscaler status as Knative's KPA would
  (see ``knative_status``);
- only the holder of the ``coordination.k8s.io`` Lease writes anything; losing it stops writes at
  once (every write checks leadership first).

Writes with a stale resourceVersion get 409 Conflict; they are re-read and retried a bounded
number of times. ``aclose()`` stops watching but scales nothing: on Kubernetes, replicas outlive
the autoscaler process and the next leader takes them over.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from autoscaler.actuator import Phase, Replica
from autoscaler.actuators import knative_resources as res
from autoscaler.actuators.knative_errors import ALREADY_EXISTS, CONFLICT, NOT_FOUND, KubeError
from autoscaler.actuators.knative_lease import LeaderElector, LeaseApi, LeaseConfig
from autoscaler.actuators.knative_revision import (
    REVISION_LABEL,
    SLICE_SERVICE_LABEL,
    group_services,
    is_placeholder,
    is_torpor_class,
    pa_class,
    replicas_of,
    revision_spec,
)
from autoscaler.actuators.knative_status import (
    ScaleObservation,
    pa_status,
    sks_body,
    sks_mode,
    sks_needs_update,
)
from autoscaler.actuators.knative_watch import Backoff, Reflector, WatchApi
from torpor.bus.base import Bus
from torpor.spec import RevisionRef, RevisionSpec, ServiceSpec

log = logging.getLogger(__name__)
Json = dict[str, Any]

DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"
# Lowest int32: the ReplicaSet deletes the pods with the lowest cost first.
FIRST_TO_GO = str(-(2**31))
# A scale we wrote counts over what the watch shows for at most this long (a relist may skip
# the exact version we wrote).
EXPECTATION_TTL_S = 30.0


@dataclass(frozen=True, slots=True)
class KnativeConfig:
    identity: str  # this autoscaler replica's name in the Lease, e.g. the pod name
    class_suffix: str = ".torpor.dev"
    lease: LeaseConfig = field(default_factory=LeaseConfig)
    resync_s: float = 30.0  # reconcile everything at least this often, events or not
    max_conflict_retries: int = 5
    backoff: Backoff = field(default_factory=Backoff)


def config_from_env(env: Mapping[str, str]) -> KnativeConfig:
    """The settings manifests/platform/autoscaler.yaml passes (ConfigMap ``torpor-defaults``)."""
    identity = env.get("TORPOR_IDENTITY") or env.get("HOSTNAME") or ""
    if not identity:
        raise ValueError("TORPOR_IDENTITY (the pod name) is required for leader election")
    defaults = LeaseConfig()
    lease = LeaseConfig(
        namespace=env.get("TORPOR_LEASE_NAMESPACE", defaults.namespace),
        name=env.get("TORPOR_LEASE_NAME", defaults.name),
        lease_duration_s=float(env.get("TORPOR_LEASE_DURATION_S", defaults.lease_duration_s)),
        renew_deadline_s=float(env.get("TORPOR_LEASE_RENEW_DEADLINE_S", defaults.renew_deadline_s)),
        retry_period_s=float(env.get("TORPOR_LEASE_RETRY_PERIOD_S", defaults.retry_period_s)),
    )
    if not lease.retry_period_s < lease.renew_deadline_s < lease.lease_duration_s:
        # client-go's rule: a leader must give up before anyone else may take over.
        raise ValueError("lease settings need retry period < renew deadline < lease duration")
    suffix = env.get("TORPOR_CLASS_SUFFIX", ".torpor.dev")
    if not suffix.endswith(".torpor.dev"):
        raise ValueError(f"TORPOR_CLASS_SUFFIX must end in .torpor.dev, got {suffix!r}")
    return KnativeConfig(identity=identity, class_suffix=suffix, lease=lease)


@contextlib.asynccontextmanager
async def knative_actuator(
    bus: Bus, config: KnativeConfig, *, kubeconfig: str | None = None
) -> AsyncIterator[KnativeActuator]:
    """In-cluster (or ``kubeconfig``) client, controller started and caches synced."""
    from autoscaler.actuators.knative_kube import Kube

    kube = Kube.from_kubeconfig(kubeconfig) if kubeconfig else Kube.in_cluster()
    actuator = KnativeActuator(kube, bus, config)
    try:
        await actuator.start_controller()
        await actuator.synced()
        yield actuator
    finally:
        await actuator.aclose()
        await kube.aclose()


def _at_or_after(current: str, written: str) -> bool:
    """Whether the cache has caught up with a write. resourceVersions are opaque by contract;
    they are etcd revisions (integers) in practice, and equality is the fallback."""
    try:
        return int(current) >= int(written)
    except ValueError:
        return current == written


class KubeApi(WatchApi, LeaseApi, Protocol):
    """What this controller calls; ``knative_kube.Kube`` implements it."""

    async def get_custom(self, resource: Any, namespace: str, name: str) -> Json: ...

    async def create_custom(self, resource: Any, namespace: str, body: Json) -> Json: ...

    async def replace_custom(
        self, resource: Any, namespace: str, name: str, body: Json
    ) -> Json: ...

    async def replace_custom_status(
        self, resource: Any, namespace: str, name: str, body: Json
    ) -> Json: ...

    async def read_deployment_scale(self, namespace: str, name: str) -> Json: ...

    async def patch_deployment_scale(self, namespace: str, name: str, body: Json) -> Json: ...

    async def patch_pod(self, namespace: str, name: str, body: Json) -> Json: ...


class NotLeader(Exception):
    """This replica does not hold the Lease, so it must not write."""


class KnativeActuator:
    """``Actuator`` for revisions on Knative, and the controller of torpor's PA class.

    Use as ``async with KnativeActuator(kube, bus, config, resources=...) as actuator:`` or call
    ``start_controller()`` and ``aclose()``.
    """

    def __init__(
        self,
        kube: KubeApi,
        bus: Bus,
        config: KnativeConfig,
        *,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._kube = kube
        self._bus = bus
        self._config = config
        self._clock = clock
        self._dirty = asyncio.Event()
        mk = self._reflector
        self._pas = mk(res.PODAUTOSCALERS)
        self._revisions = mk(res.REVISIONS)
        self._routes = mk(res.ROUTES)
        self._sks = mk(res.SERVERLESSSERVICES)
        self._deployments = mk(res.DEPLOYMENTS, REVISION_LABEL)
        self._pods = mk(res.PODS, REVISION_LABEL)
        self._slices = mk(res.ENDPOINTSLICES, REVISION_LABEL)
        self._elector = LeaderElector(
            kube, config.identity, config.lease, clock=monotonic, on_change=self._leadership
        )
        self._tasks: list[asyncio.Task[None]] = []
        self._published: tuple[ServiceSpec, ...] | None = None
        self._stopped: dict[str, set[str]] = {}  # revision key -> pod names the loop stopped
        self._locks: dict[str, asyncio.Lock] = {}
        # (namespace, deployment) -> (resourceVersion written, replicas, when): see _note_scale
        self._expected: dict[tuple[str, str], tuple[str, int, float]] = {}
        self.failures: dict[str, str] = {}  # revision key -> why its spec could not be built

    def _reflector(self, resource: Any, selector: str | None = None) -> Reflector:
        return Reflector(
            self._kube,
            resource,
            on_change=self._dirty.set,
            label_selector=selector,
            backoff=self._config.backoff,
        )

    @property
    def _reflectors(self) -> tuple[Reflector, ...]:
        return (
            self._pas,
            self._revisions,
            self._routes,
            self._sks,
            self._deployments,
            self._pods,
            self._slices,
        )

    @property
    def is_leader(self) -> bool:
        return self._elector.is_leader

    # -- lifecycle ------------------------------------------------------------------------------

    async def __aenter__(self) -> KnativeActuator:
        await self.start_controller()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def start_controller(self) -> None:
        for r in self._reflectors:
            self._tasks.append(asyncio.create_task(r.run(), name=f"reflect {r.resource}"))
        self._tasks.append(asyncio.create_task(self._elector.run(), name="leader election"))
        self._tasks.append(asyncio.create_task(self._reconcile_loop(), name="reconcile"))

    async def synced(self) -> None:
        """Wait until every cache has listed once."""
        await asyncio.gather(*(r.synced.wait() for r in self._reflectors))

    async def aclose(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _leadership(self, leader: bool) -> None:
        if leader:
            self._published = None  # a new leader republishes what it sees
        self._dirty.set()

    # -- the Actuator protocol --------------------------------------------------------------------

    async def start(self, revision: RevisionSpec, count: int) -> None:
        if count <= 0:
            return
        try:
            await self._scale_by(revision.ref.key, count)
        except NotLeader:
            # Every autoscaler replica runs the loop and decides alike; only the leader acts.
            log.debug("not the leader: not starting %d of %s", count, revision.ref.key)

    async def stop(self, revision: RevisionSpec, replica_id: str) -> None:
        try:
            await self._stop(revision, replica_id)
        except NotLeader:
            log.debug("not the leader: not stopping %s", replica_id)

    async def _stop(self, revision: RevisionSpec, replica_id: str) -> None:
        key = revision.ref.key
        if not is_placeholder(replica_id):
            self._require_leader()
            try:
                await self._kube.patch_pod(
                    revision.ref.namespace,
                    replica_id,
                    {"metadata": {"annotations": {DELETION_COST: FIRST_TO_GO}}},
                )
            except KubeError as exc:
                if exc.status != NOT_FOUND:  # already gone is what we wanted
                    raise
            self._stopped.setdefault(key, set()).add(replica_id)
        await self._scale_by(key, -1)

    def replicas(self, revision: str) -> Sequence[Replica]:
        ref = RevisionRef.parse(revision)
        pods = [
            p
            for (ns, _), p in self._pods.objects.items()
            if ns == ref.namespace
            and (p["metadata"].get("labels") or {}).get(REVISION_LABEL) == ref.name
        ]
        private = f"{ref.name}-private"
        slices = [
            s
            for (ns, _), s in self._slices.objects.items()
            if ns == ref.namespace
            and (s["metadata"].get("labels") or {}).get(SLICE_SERVICE_LABEL) == private
        ]
        stopped = self._stopped.get(revision)
        if stopped:
            stopped &= {str(p["metadata"]["name"]) for p in pods}  # forget pods that are gone
        # The Deployment's replicas already exclude the stopped pods (each stop scaled it down).
        return replicas_of(
            revision,
            pods,
            slices,
            desired=self._desired(ref),
            stopped=frozenset(stopped or ()),
            now=self._clock(),
        )

    async def forget(self, revision: str) -> None:
        # Knative deletes a revision's Deployment with the revision; nothing to scale here.
        self._stopped.pop(revision, None)
        self._locks.pop(revision, None)

    # -- scaling --------------------------------------------------------------------------------

    def _require_leader(self) -> None:
        """Called before every write: a replica that lost the Lease stops right there."""
        if not self._elector.is_leader:
            raise NotLeader(f"{self._config.identity} does not hold the lease")

    def _pa(self, ref: RevisionRef) -> Json | None:
        return self._pas.objects.get((ref.namespace, ref.name))

    def _deployment_name(self, ref: RevisionRef) -> str:
        pa = self._pa(ref)
        if pa is not None:
            return str(pa["spec"]["scaleTargetRef"]["name"])
        return f"{ref.name}-deployment"

    def _desired(self, ref: RevisionRef) -> int:
        key = (ref.namespace, self._deployment_name(ref))
        deployment = self._deployments.objects.get(key)
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

    async def _scale_by(self, revision: str, delta: int) -> None:
        ref = RevisionRef.parse(revision)
        name = self._deployment_name(ref)
        lock = self._locks.setdefault(revision, asyncio.Lock())
        async with lock:
            for _ in range(self._config.max_conflict_retries):
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
                self._dirty.set()
                return
            raise KubeError(CONFLICT, "Conflict", f"scaling {name}: gave up after retries")

    def _note_scale(self, namespace: str, name: str, written: Json, replicas: int) -> None:
        """Remember a scale we wrote until the Deployment watch shows it (client-go's
        "expectations"): until then replicas() counts what was asked for, so the loop does not
        ask again, and an older event still in flight cannot undo it."""
        rv = str((written.get("metadata") or {}).get("resourceVersion") or "")
        self._expected[(namespace, name)] = (rv, replicas, self._clock())

    # -- reconciling ----------------------------------------------------------------------------

    async def _reconcile_loop(self) -> None:
        failures = 0
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._config.resync_s):
                    await self._dirty.wait()
            self._dirty.clear()
            try:
                await self.reconcile()
                failures = 0
            except NotLeader:
                continue
            except Exception:
                failures += 1
                log.exception("reconcile failed (%d in a row)", failures)
                await asyncio.sleep(self._config.backoff.delay(failures))
                self._dirty.set()

    def _ours(self) -> list[Json]:
        return [
            pa
            for pa in self._pas.objects.values()
            if is_torpor_class(pa_class(pa), self._config.class_suffix)
            and not pa["metadata"].get("deletionTimestamp")
        ]

    async def reconcile(self) -> None:
        """One pass: publish the services, then bring every PA's SKS and status up to date."""
        if not self.is_leader or not all(r.synced.is_set() for r in self._reflectors):
            return
        # A PA whose Revision this cache has not seen yet (separate watch streams) waits for the
        # next event rather than being judged on half the picture.
        ours = [
            pa
            for pa in self._ours()
            if (pa["metadata"]["namespace"], pa["metadata"]["name"]) in self._revisions.objects
        ]
        specs: list[RevisionSpec] = []
        failures: dict[str, str] = {}
        for pa in ours:
            meta = pa["metadata"]
            revision = self._revisions.objects[(meta["namespace"], meta["name"])]
            try:
                specs.append(revision_spec(pa, revision))
            except ValueError as exc:
                failures[f"{meta['namespace']}/{meta['name']}"] = str(exc)
        self.failures = failures
        routes = self._routes.objects
        services = group_services(specs, routes)
        if services != self._published:
            self._require_leader()
            await self._bus.publish_services(services)
            self._published = services
        for pa in ours:
            await self._reconcile_pa(pa)

    async def _reconcile_pa(self, pa: Json) -> None:
        meta = pa["metadata"]
        ref = RevisionRef(meta["namespace"], meta["name"])
        replicas = self.replicas(ref.key)
        ready = sum(1 for r in replicas if r.phase is Phase.READY)
        failure = self.failures.get(ref.key) or next(
            (r.error for r in replicas if r.phase is Phase.FAILED and r.error), None
        )
        sks = await self._reconcile_sks(pa, sks_mode(ready))
        obs = ScaleObservation(
            desired=self._desired(ref), ready=ready, sks=sks, failure=None if ready else failure
        )
        await self._write_status(pa, obs)

    async def _reconcile_sks(self, pa: Json, mode: str) -> Json | None:
        meta = pa["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        wanted = sks_body(pa, mode)
        current = self._sks.objects.get((namespace, name))
        for _ in range(self._config.max_conflict_retries):
            self._require_leader()
            try:
                if current is None:
                    created = await self._kube.create_custom(
                        res.SERVERLESSSERVICES, namespace, wanted
                    )
                    self._sks.put_local(created)
                    return created
                if not sks_needs_update(current, wanted):
                    return current
                body = copy.deepcopy(current)
                body["spec"] = wanted["spec"]
                body["metadata"]["labels"] = wanted["metadata"]["labels"]
                updated = await self._kube.replace_custom(
                    res.SERVERLESSSERVICES, namespace, name, body
                )
                self._sks.put_local(updated)
                return updated
            except KubeError as exc:
                if exc.status not in (CONFLICT, ALREADY_EXISTS):
                    raise
                current = await self._kube.get_custom(res.SERVERLESSSERVICES, namespace, name)
        raise KubeError(CONFLICT, "Conflict", f"updating ServerlessService {name}: gave up")

    async def _write_status(self, pa: Json, obs: ScaleObservation) -> None:
        meta = pa["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        for _ in range(self._config.max_conflict_retries):
            status = pa_status(pa, obs, self._clock())
            if status == pa.get("status"):
                return
            body = copy.deepcopy(pa)
            body["status"] = status
            self._require_leader()
            try:
                written = await self._kube.replace_custom_status(
                    res.PODAUTOSCALERS, namespace, name, body
                )
            except KubeError as exc:
                if exc.status != CONFLICT:
                    raise
                log.info("PodAutoscaler %s/%s changed under us; re-reading", namespace, name)
                pa = await self._kube.get_custom(res.PODAUTOSCALERS, namespace, name)
                continue
            self._pas.put_local(written)
            return
        raise KubeError(CONFLICT, "Conflict", f"updating PodAutoscaler {name} status: gave up")
