"""The controller of torpor's PodAutoscaler class on Knative: caches, Lease, reconcile, status.

Knative Serving hands every revision whose ``autoscaling.knative.dev/class`` is not its own to
whichever controller claims the class. This one claims classes ending in ``.torpor.dev``:

- it lists and watches PodAutoscalers (all namespaces), their Revisions and Routes, Deployments,
  pods and EndpointSlices into read-only caches (``knative.watch.Reflector``);
- it turns the torpor-class PAs into ``ServiceSpec``s and publishes them on the bus, so the same
  autoscaler loop that drives local processes decides here too (it never sees a Kubernetes type);
- it creates each PA's ServerlessService and writes the PodAutoscaler status as Knative's KPA
  would (see ``knative.status``), from what the caches show;
- only the holder of the ``coordination.k8s.io`` Lease writes anything; losing it stops writes at
  once (every write checks leadership first).

Scaling is not here: ``knative.KnativeActuator`` is the loop's actuator, reading these caches
(``ClusterView``) and writing only Deployment scales and pods. ``knative/__main__.py`` wires the
two. Writes with a stale resourceVersion get 409 Conflict; they are re-read and retried a bounded
number of times. ``aclose()`` stops watching but changes nothing: on Kubernetes, replicas outlive
the autoscaler process and the next leader takes them over.

Reconcile work follows changes (issue 18: 10,000 revisions, most at zero): every cache event names
the revision it concerns (a PA, Revision or SKS by name, a Deployment, pod or EndpointSlice by its
revision label), and a pass rebuilds the specs of and reconciles only those revisions. A Route
change regroups the services; a relist, a change of leadership, a failed pass and the
``resync_s`` timer make one pass over everything. Statuses and SKSs are written only when they
differ from what the cache holds, so a pass over unchanged revisions writes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

from autoscaler.actuator import Phase
from knative import resources as res
from knative.config import KnativeConfig
from knative.errors import (
    ALREADY_EXISTS,
    CONFLICT,
    KubeError,
    NotLeader,
)
from knative.lease import LeaderElector, LeaseApi
from knative.revision import (
    CRASH_LOOP,
    REVISION_LABEL,
    SLICE_SERVICE_LABEL,
    Obj,
    group_services,
    is_reachable,
    is_torpor_class,
    pa_class,
    replicas_of,
    revision_spec,
)
from knative.status import (
    ScaleObservation,
    pa_status,
    sks_body,
    sks_mode,
    sks_needs_update,
)
from knative.watch import ObjectKey, Reflector, WatchApi, key_of
from torpor.bus.base import Bus
from torpor.spec import RevisionRef, RevisionSpec, ServiceSpec

log = logging.getLogger(__name__)
Json = dict[str, Any]


class ControllerApi(WatchApi, LeaseApi, Protocol):
    """What the controller calls; ``knative.kube.Kube`` implements it."""

    async def get_custom(self, resource: Any, namespace: str, name: str) -> Json: ...

    async def create_custom(self, resource: Any, namespace: str, body: Json) -> Json: ...

    async def replace_custom(
        self, resource: Any, namespace: str, name: str, body: Json
    ) -> Json: ...

    async def replace_custom_status(
        self, resource: Any, namespace: str, name: str, body: Json
    ) -> Json: ...


class KnativeController:
    """Use as ``async with KnativeController(kube, bus, config):`` or ``start()`` / ``aclose()``.

    The caches are read through ``pa``, ``deployment``, ``pods`` and ``endpoint_slices``
    (``knative.ClusterView``); ``leader`` is the Lease check the actuator and the loop take.
    """

    def __init__(
        self,
        kube: ControllerApi,
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
        # What the next pass looks at: everything, or these revisions (their specs too).
        self._dirty_all = True
        self._dirty_keys: set[ObjectKey] = set()
        self._dirty_specs: set[ObjectKey] = set()
        self._routes_changed = False
        self._specs: dict[ObjectKey, RevisionSpec] = {}  # of our PAs, by (namespace, name)
        self._pas = self._reflector(res.PODAUTOSCALERS, self._named(spec=True))
        self._revisions = self._reflector(res.REVISIONS, self._named(spec=True))
        self._routes = self._reflector(res.ROUTES, self._route_changed)
        self._sks = self._reflector(res.SERVERLESSSERVICES, self._named(spec=False))
        by_revision = self._by_revision_label
        self._deployments = self._reflector(res.DEPLOYMENTS, by_revision, REVISION_LABEL)
        self._pods = self._reflector(res.PODS, by_revision, REVISION_LABEL)
        self._slices = self._reflector(res.ENDPOINTSLICES, by_revision, REVISION_LABEL)
        self._elector = LeaderElector(
            kube, config.identity, config.lease, clock=monotonic, on_change=self._leadership
        )
        self._tasks: list[asyncio.Task[None]] = []
        self._published: tuple[ServiceSpec, ...] | None = None
        self.failures: dict[str, str] = {}  # revision key -> why its spec could not be built

    def _reflector(
        self, resource: Any, note: Callable[[Json], None], selector: str | None = None
    ) -> Reflector:
        def on_change(obj: Json | None) -> None:
            if obj is None:
                self._dirty_all = True  # relisted: anything may have changed
            else:
                note(obj)
            self._dirty.set()

        return Reflector(
            self._kube,
            resource,
            on_change=on_change,
            label_selector=selector,
            backoff=self._config.backoff,
            index_label=selector,
        )

    def _named(self, *, spec: bool) -> Callable[[Json], None]:
        """A PA, Revision or SKS: named as its revision is."""

        def note(obj: Json) -> None:
            key = key_of(obj)
            self._dirty_keys.add(key)
            if spec:
                self._dirty_specs.add(key)

        return note

    def _by_revision_label(self, obj: Json) -> None:
        meta = obj["metadata"]
        revision = (meta.get("labels") or {}).get(REVISION_LABEL)
        if revision:
            self._dirty_keys.add((str(meta.get("namespace", "")), str(revision)))

    def _route_changed(self, obj: Json) -> None:
        self._routes_changed = True

    @property
    def reflectors(self) -> tuple[Reflector, ...]:
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

    def leader(self) -> bool:
        """Whether this replica holds the Lease right now (``Autoscaler(leader=...)``)."""
        return self._elector.is_leader

    # -- the read-only cluster view (knative.ClusterView) ----------------------------------------

    def pa(self, namespace: str, name: str) -> Obj | None:
        return self._pas.objects.get((namespace, name))

    def deployment(self, namespace: str, name: str) -> Obj | None:
        return self._deployments.objects.get((namespace, name))

    def pods(self, ref: RevisionRef) -> list[Obj]:
        """The revision's pods, terminating ones included (they are still listed)."""
        pods: list[Obj] = []
        pods.extend(self._pods.labelled(ref.namespace, ref.name))
        return pods

    def endpoint_slices(self, ref: RevisionRef) -> list[Obj]:
        """The EndpointSlices of the revision's private service (queue-proxy's addresses)."""
        private = f"{ref.name}-private"
        return [
            o
            for o in self._slices.labelled(ref.namespace, ref.name)
            if (o["metadata"].get("labels") or {}).get(SLICE_SERVICE_LABEL) == private
        ]

    # -- lifecycle ------------------------------------------------------------------------------

    async def __aenter__(self) -> KnativeController:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def start(self) -> None:
        for r in self.reflectors:
            self._tasks.append(asyncio.create_task(r.run(), name=f"reflect {r.resource}"))
        self._tasks.append(asyncio.create_task(self._elector.run(), name="leader election"))
        self._tasks.append(asyncio.create_task(self._reconcile_loop(), name="reconcile"))

    async def synced(self) -> None:
        """Wait until every cache has listed once."""
        await asyncio.gather(*(r.synced.wait() for r in self.reflectors))

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
        self._dirty_all = True
        self._dirty.set()

    def _require_leader(self) -> None:
        """Called before every write: a replica that lost the Lease stops right there."""
        if not self._elector.is_leader:
            raise NotLeader(f"{self._config.identity} does not hold the lease")

    # -- reconciling ----------------------------------------------------------------------------

    async def _reconcile_loop(self) -> None:
        failures = 0
        while True:
            try:
                async with asyncio.timeout(self._config.resync_s):
                    await self._dirty.wait()
            except TimeoutError:
                self._dirty_all = True  # the bounded resync: one pass over everything
            self._dirty.clear()
            try:
                await self.reconcile()
                failures = 0
            except NotLeader:
                continue
            except Exception:
                failures += 1
                self._dirty_all = True  # what the failed pass had taken on is not done
                log.exception("reconcile failed (%d in a row)", failures)
                await asyncio.sleep(self._config.backoff.delay(failures))
                self._dirty.set()

    def _ours(self, pa: Json | None) -> bool:
        return (
            pa is not None
            and is_torpor_class(pa_class(pa), self._config.class_suffix)
            and not pa["metadata"].get("deletionTimestamp")
        )

    async def reconcile(self) -> None:
        """One pass: publish the services, then bring the SKS and status of every PA that
        changed since the last pass (every PA after a relist, a failure or the resync timer) up
        to date."""
        if not self.is_leader or not all(r.synced.is_set() for r in self.reflectors):
            return
        full, self._dirty_all = self._dirty_all, False
        keys, self._dirty_keys = self._dirty_keys, set()
        spec_keys, self._dirty_specs = self._dirty_specs, set()
        routes, self._routes_changed = self._routes_changed, False
        try:
            await self._pass(full, keys, spec_keys, routes)
        except BaseException:
            self._dirty_all = True  # retried whole: a NotLeader or failure leaves no gap
            raise

    async def _pass(
        self, full: bool, keys: set[ObjectKey], spec_keys: set[ObjectKey], routes: bool
    ) -> None:
        if full:
            self._specs, self.failures = {}, {}
            spec_keys = set(self._pas.objects)
            keys = set(self._pas.objects)
        specs_changed = full or routes
        for key in spec_keys:
            specs_changed |= self._rebuild_spec(key)
        if specs_changed:
            services = group_services(
                (self._specs[k] for k in sorted(self._specs)),
                self._routes.objects,
                reachable={
                    f"{k[0]}/{k[1]}"
                    for k in self._specs
                    if (pa := self._pas.objects.get(k)) is not None and is_reachable(pa)
                },
            )
            if services != self._published:
                self._require_leader()
                await self._bus.publish_services(services)
                self._published = services
        for key in sorted(keys):
            pa = self._pas.objects.get(key)
            # A PA whose Revision this cache has not seen yet (separate watch streams) waits for
            # the Revision's event rather than being judged on half the picture.
            if pa is not None and self._ours(pa) and key in self._revisions.objects:
                await self._reconcile_pa(pa)

    def _rebuild_spec(self, key: ObjectKey) -> bool:
        """The spec of one PA from the caches; whether it (or its failure) changed."""
        name = f"{key[0]}/{key[1]}"
        before = (self._specs.get(key), self.failures.get(name))
        self._specs.pop(key, None)
        self.failures.pop(name, None)
        pa = self._pas.objects.get(key)
        revision = self._revisions.objects.get(key)
        if pa is not None and revision is not None and self._ours(pa):
            try:
                self._specs[key] = revision_spec(pa, revision)
            except ValueError as exc:
                self.failures[name] = str(exc)
        return (self._specs.get(key), self.failures.get(name)) != before

    def _desired(self, pa: Json) -> int:
        name = str(pa["spec"]["scaleTargetRef"]["name"])
        deployment = self._deployments.objects.get((pa["metadata"]["namespace"], name)) or {}
        return int((deployment.get("spec") or {}).get("replicas") or 0)

    async def _reconcile_pa(self, pa: Json) -> None:
        meta = pa["metadata"]
        ref = RevisionRef(meta["namespace"], meta["name"])
        desired = self._desired(pa)
        replicas = replicas_of(
            ref.key, self.pods(ref), self.endpoint_slices(ref), desired=desired, now=self._clock()
        )
        ready = sum(1 for r in replicas if r.phase is Phase.READY)
        failed = next((r for r in replicas if r.phase is Phase.FAILED and r.error), None)
        failure = self.failures.get(ref.key) or (failed.error if failed else None)
        crash_loop = failure is not None and failure.startswith(CRASH_LOOP)
        sks = await self._reconcile_sks(pa, sks_mode(ready))
        spec = self._specs.get((ref.namespace, ref.name))
        obs = ScaleObservation(
            desired=desired,
            ready=ready,
            # The template's own initial-scale (the published spec says 0 once initialized,
            # and then the KPA's threshold no longer reads it).
            initial_scale=spec.autoscaling.initial_scale if spec else 1,
            min_scale=spec.autoscaling.min_scale if spec else 0,
            reachable=is_reachable(pa),
            sks=sks,
            failure=None if ready else failure,
            crash_loop=crash_loop and not ready,
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
