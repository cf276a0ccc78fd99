"""Knative Serving's own reconcilers, as an executable specification over the API emulator.

torpor replaces one of Knative's controllers (the KPA: it writes the PodAutoscaler's status and
scales the Deployment); the others still decide what a cluster shows: whether a Revision is
Ready, where the Route sends traffic, whether the ServerlessService is ready, and whether the
PodAutoscaler is reachable. This module ports those rules from knative/serving's source (each
function names the file and function it follows) so the tests see what a cluster would: a
revision at initial-scale 0 becoming Ready, a second revision rolling out only once it is Ready,
a rollback, a revision that fails to start.

It is a specification, not Knative: one reconcile pass (``KnativeServing.reconcile``) runs every
rule over the emulator's objects and writes only what changed; ``run()`` repeats it. What is left
out, and so is not checked by the tests: the webhook's defaults beyond initial-scale, the
Deployment's own ``Progressing`` condition (``PropagateDeploymentStatus``) and the progress
deadline, tags' URLs, gradual rollout, the activator's endpoints (the SKS's Proxy mode has no
activator here), garbage collection of old revisions.

Sources read (knative/serving at 98e5ef9, August 2026):
- ``pkg/apis/serving/v1/revision_lifecycle.go``: ``revisionCondSet`` (Ready = ResourcesAvailable and
  ContainerHealthy; Active is not part of it: an inactive revision at zero is Ready),
  ``PropagateAutoscalerStatus``;
- ``pkg/reconciler/revision/reconcile_resources.go``: ``reconcileDeployment`` (a crashing
  container fails ContainerHealthy; a ready replica makes it healthy);
- ``pkg/reconciler/revision/resources/deploy.go``: ``MakeDeployment`` (replicas = initial scale);
- ``pkg/reconciler/revision/resources/pa.go``: ``MakePA``, ``reachability``;
- ``pkg/reconciler/configuration/configuration.go``: ``ReconcileKind`` (latest created failed),
  ``findAndSetLatestReadyRevision``;
- ``pkg/reconciler/route/traffic/traffic.go``: ``addConfigurationTarget``, ``addRevisionTarget``
  (a target must be Ready); ``pkg/reconciler/route/route.go``: ``configureTraffic`` (an unready
  target leaves ``status.traffic`` as it was);
- ``pkg/reconciler/labeler/metasync.go``: ``syncRoutingMeta`` (the latest *created* revision of a
  ``latestRevision`` target is labelled routed "so that there is a smooth transition");
  ``accessors.go``: ``markRoutingState``;
- ``pkg/reconciler/serverlessservice/serverlessservice.go`` and networking's
  ``serverlessservice_lifecycle.go``: the SKS is Ready (EndpointsPopulated) once the private
  service has a ready endpoint, and reports ``serviceName`` / ``privateServiceName``.
"""

from __future__ import annotations

import asyncio
import copy
from dataclasses import dataclass
from typing import Any

import yaml

from harness.kube_emulator import KubeEmulator

Json = dict[str, Any]
PA = "apis/autoscaling.internal.knative.dev/v1alpha1"
SKS = "apis/networking.internal.knative.dev/v1alpha1"
SERVING = "apis/serving.knative.dev/v1"
APPS = "apis/apps/v1"
CORE = "api/v1"
DISCOVERY = "apis/discovery.k8s.io/v1"

SERVICE_LABEL = "serving.knative.dev/service"
CONFIGURATION_LABEL = "serving.knative.dev/configuration"
REVISION_LABEL = "serving.knative.dev/revision"
GENERATION_LABEL = "serving.knative.dev/configurationGeneration"
ROUTING_STATE_LABEL = "serving.knative.dev/routingState"
INITIAL_SCALE = "autoscaling.knative.dev/initial-scale"
CLASS = "autoscaling.knative.dev/class"

RESOURCES_AVAILABLE = "ResourcesAvailable"
CONTAINER_HEALTHY = "ContainerHealthy"
ACTIVE = "Active"
READY = "Ready"


# -- conditions (knative.dev/pkg apis.ConditionSet, living) ------------------------------------


@dataclass(frozen=True, slots=True)
class Cond:
    status: str  # "True" | "False" | "Unknown"
    reason: str = ""
    message: str = ""


Conditions = dict[str, Cond]


def conditions_of(status: Json | None) -> Conditions:
    return {
        str(c["type"]): Cond(str(c.get("status")), str(c.get("reason") or ""), c.get("message", ""))
        for c in (status or {}).get("conditions") or ()
    }


def living_ready(conds: Conditions, dependents: tuple[str, ...]) -> Cond:
    """``NewLivingConditionSet``'s happy condition: False if a dependent is False (its reason),
    Unknown if one is Unknown or missing, else True."""
    for t in dependents:
        c = conds.get(t)
        if c is not None and c.status == "False":
            return c
    for t in dependents:
        c = conds.get(t)
        if c is None or c.status != "True":
            return c or Cond("Unknown")
    return Cond("True")


def render(conds: Conditions) -> list[Json]:
    out = []
    for t in sorted(conds):
        c = conds[t]
        item: Json = {"type": t, "status": c.status}
        if c.reason:
            item["reason"] = c.reason
        if c.message:
            item["message"] = c.message
        out.append(item)
    return out


def is_true(status: Json | None, type_: str) -> bool:
    c = conditions_of(status).get(type_)
    return c is not None and c.status == "True"


# -- the Revision ---------------------------------------------------------------------------


def propagate_deployment_pods(
    conds: Conditions, replicas: int, ready_pods: int, pods: list[Json]
) -> None:
    """``reconcileDeployment`` (reconcile_resources.go): with replicas wanted and none available,
    a user container that terminated fails ContainerHealthy (``ExitCodeReason``); a ready
    replica makes the container healthy."""
    if replicas > 0 and ready_pods == 0 and pods:
        for cs in (pods[0].get("status") or {}).get("containerStatuses") or ():
            if cs.get("name") == "queue-proxy":
                continue
            terminated = (cs.get("lastState") or {}).get("terminated")
            if terminated:
                code = int(terminated.get("exitCode") or 0)
                message = str(terminated.get("message") or "container exited with no error")
                conds[CONTAINER_HEALTHY] = Cond(
                    "False", f"ExitCode{code}", f"Container failed with: {message}"
                )
                break
    if ready_pods > 0:
        conds[CONTAINER_HEALTHY] = Cond("True")


def propagate_autoscaler_status(conds: Conditions, pa_status: Json | None) -> None:
    """``RevisionStatus.PropagateAutoscalerStatus`` (revision_lifecycle.go), line by line."""
    res_unavailable = any(
        (c := conds.get(t)) is not None and c.status == "False"
        for t in (RESOURCES_AVAILABLE, CONTAINER_HEALTHY)
    )
    ps = pa_status or {}
    pa_conds = conditions_of(ps)
    cond = pa_conds.get(READY)
    if cond is None:
        conds[ACTIVE] = Cond("Unknown", "Deploying")
        if not res_unavailable:
            conds[RESOURCES_AVAILABLE] = Cond("Unknown", "Deploying")
        return
    initialized = (c := pa_conds.get("ScaleTargetInitialized")) is not None and c.status == "True"
    service_name = str(ps.get("serviceName") or "")
    if initialized and not res_unavailable:
        conds[RESOURCES_AVAILABLE] = Cond("True")
        conds[CONTAINER_HEALTHY] = Cond("True")
    ra = conds.get(RESOURCES_AVAILABLE)
    if ra is not None and ra.status == "True" and (not service_name or not initialized):
        conds[RESOURCES_AVAILABLE] = Cond("Unknown", "Deploying")
    if cond.status == "Unknown":
        conds[ACTIVE] = Cond("Unknown", cond.reason, cond.message)
    elif cond.status == "False":
        if not initialized and not res_unavailable and service_name:
            conds[RESOURCES_AVAILABLE] = Cond(
                "False", "ProgressDeadlineExceeded", "Initial scale was never achieved"
            )
        conds[ACTIVE] = Cond("False", cond.reason, cond.message)
    else:
        conds[ACTIVE] = Cond("True")


def revision_conditions(
    previous: Json | None, pa_status: Json | None, replicas: int, ready_pods: int, pods: list[Json]
) -> Conditions:
    """The Revision's conditions after one reconcile, Ready included (``revisionCondSet``)."""
    conds = conditions_of(previous)
    conds.pop(READY, None)
    conds.setdefault(RESOURCES_AVAILABLE, Cond("Unknown", "Deploying"))
    conds.setdefault(CONTAINER_HEALTHY, Cond("Unknown", "Deploying"))
    propagate_deployment_pods(conds, replicas, ready_pods, pods)
    propagate_autoscaler_status(conds, pa_status)
    conds[READY] = living_ready(conds, (RESOURCES_AVAILABLE, CONTAINER_HEALTHY))
    return conds


def reachability(rev_status: Json | None, routing_state: str, replicas: int, ready: int) -> str:
    """``reachability`` (pkg/reconciler/revision/resources/pa.go)."""
    conds = conditions_of(rev_status)
    infra_failure = any(
        (c := conds.get(t)) is not None and c.status == "False"
        for t in (RESOURCES_AVAILABLE, CONTAINER_HEALTHY)
    )
    if infra_failure and replicas > 0 and ready == 0:
        return "Unreachable"
    if routing_state == "active":
        return "Reachable"
    if routing_state == "reserve":
        return "Unreachable"
    return ""


# -- the Configuration and the Route ------------------------------------------------------------


def latest_ready(revisions: list[Json], previous: str) -> str:
    """``findAndSetLatestReadyRevision`` (configuration.go): the newest Ready revision among
    those from the latest ready one's generation on; else the previous one stays."""
    by_name = {r["metadata"]["name"]: r for r in revisions}
    start = generation_of(by_name[previous]) if previous in by_name else 0
    for rev in sorted(revisions, key=generation_of, reverse=True):
        if generation_of(rev) >= start and is_true(rev.get("status"), READY):
            return str(rev["metadata"]["name"])
    return previous


def generation_of(rev: Json) -> int:
    return int((rev["metadata"].get("labels") or {}).get(GENERATION_LABEL) or 0)


class UnreadyTarget(Exception):
    """``errUnreadyConfiguration`` / ``errUnreadyRevision`` (traffic.go): a TargetError."""


def route_traffic(
    spec_traffic: list[Json], config_name: str, lrr: str, revisions: dict[str, Json]
) -> list[Json]:
    """``BuildTrafficConfiguration`` for one Configuration (traffic.go): a ``latestRevision``
    target resolves to the latest *ready* revision, a named one must be Ready; otherwise
    ``UnreadyTarget``, and ``configureTraffic`` (route.go) leaves ``status.traffic`` as it was."""
    out = []
    for tt in spec_traffic:
        if tt.get("latestRevision", not tt.get("revisionName")):
            if not lrr:
                raise UnreadyTarget(f"configuration {config_name} has no ready revision")
            name, latest = lrr, True
        else:
            name, latest = str(tt["revisionName"]), False
        rev = revisions.get(name)
        if rev is None or not is_true(rev.get("status"), READY):
            raise UnreadyTarget(f"revision {name} is not ready")
        entry: Json = {"revisionName": name, "latestRevision": latest, "percent": tt["percent"]}
        if tt.get("tag"):
            entry["tag"] = tt["tag"]
        out.append(entry)
    return out


def routed_revisions(route: Json, latest_created: str) -> set[str]:
    """``syncRoutingMeta`` (labeler/metasync.go): revisions named in the Route's status and spec
    traffic, and the latest *created* revision of a ``latestRevision`` target."""
    names: set[str] = set()
    entries = [*((route.get("status") or {}).get("traffic") or ()), *route["spec"]["traffic"]]
    for tt in entries:
        if tt.get("revisionName"):
            names.add(str(tt["revisionName"]))
        if tt.get("latestRevision", not tt.get("revisionName")) and latest_created:
            names.add(latest_created)
    return names


# -- the ServerlessService ----------------------------------------------------------------------


def sks_status(sks: Json, private_ready: int) -> Json:
    """The SKS reconciler's status (serverlessservice.go): service names at once; Ready
    (EndpointsPopulated) only while the private service has a ready endpoint."""
    name = sks["metadata"]["name"]
    populated = (
        Cond("True")
        if private_ready > 0
        else Cond("Unknown", "NoHealthyBackends", "K8s Service is not ready")
    )
    conds = {"EndpointsPopulated": populated, READY: populated}
    return {
        "serviceName": name,
        "privateServiceName": f"{name}-private",
        "observedGeneration": sks["metadata"].get("generation", 1),
        "conditions": render(conds),
    }


# -- the world ----------------------------------------------------------------------------------


class KnativeServing:
    """Knative Serving's controllers for the Services applied through it, over ``emulator``."""

    def __init__(self, emulator: KubeEmulator, *, domain: str = "example.com") -> None:
        self.emulator = emulator
        self.domain = domain
        # (namespace, service) -> {"latestCreated": name, "latestReady": name}
        self.configurations: dict[tuple[str, str], dict[str, str]] = {}
        self.writes = 0  # objects this harness wrote (a pass that writes none is at rest)
        self._templates: dict[tuple[str, str], Json] = {}  # (namespace, revision) -> template

    # -- what a user does -----------------------------------------------------------------------

    def apply(self, manifest: str | Json) -> str:
        """``kubectl apply`` of a ``serving.knative.dev/v1`` Service: a new template makes a new
        revision (the configuration's next generation); the Route's ``spec.traffic`` is the
        manifest's (default: 100 % to the latest revision). Returns the newest revision."""
        service = yaml.safe_load(manifest) if isinstance(manifest, str) else manifest
        name = service["metadata"]["name"]
        namespace = service["metadata"].get("namespace", "default")
        key = (namespace, name)
        config = self.configurations.setdefault(key, {"latestCreated": "", "latestReady": ""})
        template = service["spec"]["template"]
        latest = config["latestCreated"]
        if self._templates.get((namespace, latest)) != _normalize(template):
            latest = self._create_revision(namespace, name, template, config)
            self._templates[(namespace, latest)] = _normalize(template)
        traffic = service["spec"].get("traffic") or [{"latestRevision": True, "percent": 100}]
        route = self._get(SERVING, "routes", namespace, name)
        body = copy.deepcopy(route) if route else _route(namespace, name)
        body["spec"]["traffic"] = [
            (t | {"configurationName": name}) if t.get("latestRevision") else dict(t)
            for t in traffic
        ]
        self._put(SERVING, "routes", body)
        self.reconcile()
        return latest

    def _create_revision(
        self, namespace: str, service: str, template: Json, config: dict[str, str]
    ) -> str:
        """The configuration reconciler's Revision (``routingState: pending``) and the revision
        reconciler's PA (reachability unknown) and Deployment at the initial scale."""
        latest = config["latestCreated"]
        generation = 1 + (int(latest.rsplit("-", 1)[1]) if latest else 0)
        revision = f"{service}-{generation:05d}"
        config["latestCreated"] = revision
        annotations = dict((template.get("metadata") or {}).get("annotations") or {})
        annotations.setdefault(CLASS, "kpa.autoscaling.knative.dev")
        labels = {
            SERVICE_LABEL: service,
            CONFIGURATION_LABEL: service,
            REVISION_LABEL: revision,
            GENERATION_LABEL: str(generation),
        }
        spec = template["spec"]
        containers = [
            dict(c) | {"name": c.get("name") or "user-container"} for c in spec["containers"]
        ]

        def meta(name: str, **extra: str) -> Json:
            return {
                "name": name,
                "namespace": namespace,
                "labels": labels | extra,
                "annotations": dict(annotations),
            }

        self._put(
            SERVING,
            "revisions",
            {
                "apiVersion": "serving.knative.dev/v1",
                "kind": "Revision",
                "metadata": meta(revision, **{ROUTING_STATE_LABEL: "pending"}),
                "spec": {
                    "containerConcurrency": int(spec.get("containerConcurrency") or 0),
                    "timeoutSeconds": int(spec.get("timeoutSeconds") or 300),
                    "containers": containers,
                },
            },
        )
        self._put(
            PA,
            "podautoscalers",
            {
                "apiVersion": "autoscaling.internal.knative.dev/v1alpha1",
                "kind": "PodAutoscaler",
                "metadata": meta(revision),
                "spec": {
                    "protocolType": "http1",
                    "reachability": "",
                    "scaleTargetRef": {
                        "apiVersion": "apps/v1",
                        "kind": "Deployment",
                        "name": f"{revision}-deployment",
                    },
                },
            },
        )
        self._put(
            APPS,
            "deployments",
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": meta(f"{revision}-deployment"),
                "spec": {
                    # MakeDeployment (deploy.go): the initial scale, Knative's default 1.
                    "replicas": int(annotations.get(INITIAL_SCALE, "1")),
                    "template": {
                        "metadata": {"labels": dict(labels)},
                        "spec": {"containers": containers},
                    },
                },
            },
        )
        return revision

    # -- the reconcilers ------------------------------------------------------------------------

    def reconcile(self) -> int:
        """One pass of every rule over every applied service; returns the objects written."""
        before = self.writes
        for (namespace, service), config in sorted(self.configurations.items()):
            self._reconcile_sks(namespace, service)
            revisions = self._revisions(namespace, service)
            for rev in revisions.values():
                self._reconcile_revision(rev)
            revisions = self._revisions(namespace, service)
            self._reconcile_configuration(config, list(revisions.values()))
            self._reconcile_route(namespace, service, config, revisions)
        return self.writes - before

    async def run(self, interval_s: float = 0.02) -> None:
        """Reconcile until cancelled (as a task next to the controller under test)."""
        while True:
            self.reconcile()
            await asyncio.sleep(interval_s)

    def _revisions(self, namespace: str, service: str) -> dict[str, Json]:
        return {
            k[3]: o
            for k, o in sorted(self.emulator.objects.items())
            if k[:3] == (SERVING, "revisions", namespace)
            and (o["metadata"].get("labels") or {}).get(CONFIGURATION_LABEL) == service
        }

    def _ready_pods(self, namespace: str, revision: str) -> tuple[list[Json], int]:
        # Listed as the API lists them, by name, terminating ones included (``reconcileDeployment``
        # reads the first); only pods not terminating count as ready.
        pods = [
            o
            for k, o in sorted(self.emulator.objects.items())
            if k[:3] == (CORE, "pods", namespace)
            and (o["metadata"].get("labels") or {}).get(REVISION_LABEL) == revision
        ]
        ready = sum(
            1
            for p in pods
            if not p["metadata"].get("deletionTimestamp")
            and any(
                c.get("type") == "Ready" and c.get("status") == "True"
                for c in (p.get("status") or {}).get("conditions") or ()
            )
        )
        return pods, ready

    def _private_ready(self, namespace: str, revision: str) -> int:
        return sum(
            1
            for k, o in self.emulator.objects.items()
            if k[:3] == (DISCOVERY, "endpointslices", namespace)
            and (o["metadata"].get("labels") or {}).get("kubernetes.io/service-name")
            == f"{revision}-private"
            for e in o.get("endpoints") or ()
            if (e.get("conditions") or {}).get("ready") is not False
        )

    def _reconcile_sks(self, namespace: str, service: str) -> None:
        for k, sks in sorted(self.emulator.objects.items()):
            if k[:3] != (SKS, "serverlessservices", namespace):
                continue
            if (sks["metadata"].get("labels") or {}).get(CONFIGURATION_LABEL) != service:
                continue
            status = sks_status(sks, self._private_ready(namespace, k[3]))
            if sks.get("status") != status:
                self._put(SKS, "serverlessservices", copy.deepcopy(sks) | {"status": status})

    def _reconcile_revision(self, rev: Json) -> None:
        meta = rev["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        pa = self._get(PA, "podautoscalers", namespace, name)
        deployment = self._get(APPS, "deployments", namespace, f"{name}-deployment")
        replicas = int(((deployment or {}).get("spec") or {}).get("replicas") or 0)
        pods, ready = self._ready_pods(namespace, name)
        conds = revision_conditions(
            rev.get("status"), (pa or {}).get("status"), replicas, ready, pods
        )
        status = {"conditions": render(conds)}
        if rev.get("status") != status:
            self._put(SERVING, "revisions", copy.deepcopy(rev) | {"status": status})
        if pa is not None:
            state = str((meta.get("labels") or {}).get(ROUTING_STATE_LABEL) or "")
            wanted = reachability(status, state, replicas, ready)
            if pa["spec"].get("reachability") != wanted:
                body = copy.deepcopy(pa)
                body["spec"]["reachability"] = wanted
                self._put(PA, "podautoscalers", body)

    def _reconcile_configuration(self, config: dict[str, str], revisions: list[Json]) -> None:
        config["latestReady"] = latest_ready(revisions, config["latestReady"])

    def _reconcile_route(
        self, namespace: str, service: str, config: dict[str, str], revisions: dict[str, Json]
    ) -> None:
        route = self._get(SERVING, "routes", namespace, service)
        if route is None:
            return
        status = copy.deepcopy(route.get("status") or {})
        status["url"] = f"http://{service}.{namespace}.{self.domain}"
        try:
            status["traffic"] = route_traffic(
                route["spec"]["traffic"], service, config["latestReady"], revisions
            )
            status["conditions"] = [{"type": "AllTrafficAssigned", "status": "True"}]
        except UnreadyTarget as exc:
            status["conditions"] = [
                {"type": "AllTrafficAssigned", "status": "Unknown", "message": str(exc)}
            ]
        if route.get("status") != status:
            self._put(SERVING, "routes", copy.deepcopy(route) | {"status": status})
            route = self._get(SERVING, "routes", namespace, service) or route
        # The labeler: routed revisions active, the others reserve once the Route resolved.
        routed = routed_revisions(route, config["latestCreated"])
        # clearMetaForNotListed runs only once the Route is ready (or failed).
        resolved = any(
            c["type"] == "AllTrafficAssigned" and c["status"] == "True"
            for c in status["conditions"]
        )
        for name, rev in revisions.items():
            labels = rev["metadata"].get("labels") or {}
            state = labels.get(ROUTING_STATE_LABEL)
            wanted = "active" if name in routed else ("reserve" if resolved else state)
            if wanted and wanted != state:
                body = copy.deepcopy(rev)
                body["metadata"]["labels"][ROUTING_STATE_LABEL] = wanted
                self._put(SERVING, "revisions", body)

    # -- storage --------------------------------------------------------------------------------

    def _get(self, prefix: str, plural: str, namespace: str, name: str) -> Json | None:
        return self.emulator.get(prefix, plural, namespace, name)

    def _put(self, prefix: str, plural: str, obj: Json) -> None:
        self.writes += 1
        self.emulator.put(prefix, plural, obj)

    # -- what a test reads ----------------------------------------------------------------------

    def traffic(self, namespace: str, service: str) -> dict[str, int]:
        """The Route's resolved traffic: revision -> percent."""
        route = self._get(SERVING, "routes", namespace, service) or {}
        return {
            str(t["revisionName"]): int(t["percent"])
            for t in (route.get("status") or {}).get("traffic") or ()
        }

    def revision_condition(self, namespace: str, revision: str, type_: str) -> Cond | None:
        rev = self._get(SERVING, "revisions", namespace, revision) or {}
        return conditions_of(rev.get("status")).get(type_)

    def reachability_of(self, namespace: str, revision: str) -> str | None:
        pa = self._get(PA, "podautoscalers", namespace, revision)
        return None if pa is None else str(pa["spec"].get("reachability", ""))


def _normalize(template: Json) -> Json:
    return yaml.safe_load(yaml.safe_dump(template))  # type: ignore[no-any-return]


def _route(namespace: str, name: str) -> Json:
    return {
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Route",
        "metadata": {"name": name, "namespace": namespace, "labels": {SERVICE_LABEL: name}},
        "spec": {"traffic": []},
    }
