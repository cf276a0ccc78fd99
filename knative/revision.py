"""Pure translations from Knative objects (wire JSON) to torpor's types.

A PodAutoscaler plus its Revision becomes a ``RevisionSpec`` (annotations and the container read
by the same ``torpor.manifest`` code that reads a Service manifest, so both platforms mean the same
thing by every annotation); PAs grouped by service plus their Route become ``ServiceSpec``s; a
revision's pods and EndpointSlices become ``Replica``s for the loop.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import replace
from datetime import datetime
from typing import Any

from autoscaler.actuator import Phase, Replica
from torpor.manifest import ManifestError
from torpor.manifest.annotations import parse_template_annotations
from torpor.manifest.container import parse_container
from torpor.manifest.lora import parse_lora
from torpor.manifest.parse import refuse_unhonoured_timeouts
from torpor.spec import (
    DEFAULT_AUTOSCALER_CLASS,
    DEFAULT_TIMEOUT_S,
    RevisionRef,
    RevisionSpec,
    ServiceSpec,
    TrafficTarget,
)

Json = dict[str, Any]
Obj = Mapping[str, Any]  # a cached object, read-only to whoever reads it

CLASS_ANNOTATION = "autoscaling.knative.dev/class"
SERVICE_LABEL = "serving.knative.dev/service"
CONFIGURATION_LABEL = "serving.knative.dev/configuration"
REVISION_LABEL = "serving.knative.dev/revision"
GENERATION_LABEL = "serving.knative.dev/configurationGeneration"
SLICE_SERVICE_LABEL = "kubernetes.io/service-name"
PRIVATE_SUFFIX = "-private"
SERVING_PORT_NAMES = ("http", "http2", "h2c")  # queue-proxy's serving port on the private service
# Waiting reasons that mean the container will not come up without someone changing something.
FATAL_WAITING = frozenset(
    {
        "CrashLoopBackOff",
        "ImagePullBackOff",
        "ErrImagePull",
        "InvalidImageName",
        "CreateContainerConfigError",
        "CreateContainerError",
    }
)
CRASH_LOOP = "CrashLoopBackOff"  # the kubelet's waiting reason between restarts of a container
USER_CONTAINER = "user-container"
PENDING = "-pending-"


def is_torpor_class(autoscaler_class: str | None, suffix: str = ".torpor.dev") -> bool:
    return bool(autoscaler_class) and str(autoscaler_class).endswith(suffix)


def pa_class(pa: Json) -> str:
    """The PA's class; Knative defaults a missing one to ``kpa.autoscaling.knative.dev``."""
    annotations = pa["metadata"].get("annotations") or {}
    return str(annotations.get(CLASS_ANNOTATION, "kpa.autoscaling.knative.dev"))


UNREACHABLE = "Unreachable"


def is_reachable(pa: Obj) -> bool:
    """Whether Knative may route to the PA's revision: ``spec.reachability`` is ``Reachable``
    or unknown (``""``). Knative's revision reconciler sets it (``reachability`` in
    ``pkg/reconciler/revision/resources/pa.go``) from the revision's routing state, which the
    labeler sets from the Routes (``markRoutingState``, ``pkg/reconciler/labeler/accessors.go``):
    ``active`` -> Reachable, ``reserve`` (no Route names it any more) -> Unreachable, ``pending``
    (just created, not yet routed) -> Unknown; and Unreachable too after an infrastructure
    failure with no ready replica. A new revision is *Unknown*: it must reach its initial scale
    and become Ready before the Route sends it anything (``addConfigurationTarget`` routes a
    Configuration's latest *ready* revision, ``pkg/reconciler/route/traffic/traffic.go``), so it
    has to be scaled as a routed one, not held at zero."""
    return bool((pa.get("spec") or {}).get("reachability") != UNREACHABLE)


def is_initialized(pa: Obj) -> bool:
    """The PA's ``ScaleTargetInitialized`` is True: the KPA's memory that the revision reached
    its initial scale once (``IsScaleTargetInitialized``, ``pa_lifecycle.go``); Knative's scaler
    then ignores initial-scale altogether (``scaler.scale``, ``pkg/reconciler/autoscaling/kpa/
    scaler.go``). It outlives the autoscaler process, so a restart or a new leader reads it."""
    conditions = ((pa.get("status") or {}).get("conditions")) or ()
    return any(
        c.get("type") == "ScaleTargetInitialized" and c.get("status") == "True" for c in conditions
    )


def ref_of(obj: Json) -> RevisionRef:
    return RevisionRef(obj["metadata"]["namespace"], obj["metadata"]["name"])


def revision_spec(pa: Json, revision: Json | None) -> RevisionSpec:
    """Build the autoscaler's view of one revision. Raises ``ValueError`` (``ManifestError``)
    when an annotation or the container is not something torpor can run."""
    meta = pa["metadata"]
    labels: Mapping[str, str] = meta.get("labels") or {}
    rev_meta: Json = (revision or {}).get("metadata") or {}
    rev_spec: Json = (revision or {}).get("spec") or {}
    # The revision carries the template's annotations; the PA has a copy of them.
    annotations = dict(meta.get("annotations") or {})
    annotations.update(rev_meta.get("annotations") or {})
    annotations = {
        k: v
        for k, v in annotations.items()
        if k.startswith(("autoscaling.knative.dev/", "torpor.dev/"))
    }
    annotations.setdefault(CLASS_ANNOTATION, DEFAULT_AUTOSCALER_CLASS)
    parsed = parse_template_annotations(annotations, f"revisions/{meta['name']}.annotations")
    if parsed.api_keys_secret is not None:
        # Issue 22, fix 4: on Kubernetes no key store is mounted in the activator and Knative's
        # URL checks no key, so a revision that asks for keys would be served without them.
        raise ManifestError(
            f'revisions/{meta["name"]}.annotations["torpor.dev/api-keys-secret"]',
            "is not supported on Kubernetes: torpor's activator has no key store there and"
            " Knative's URL checks no key; the revision is refused rather than served open",
        )
    # Refused as `torpor deploy` refuses them; on Knative, the PA's status carries the message.
    refuse_unhonoured_timeouts(rev_spec, f"revisions/{meta['name']}.spec")
    containers = rev_spec.get("containers") or []
    runtime = parse_container(
        [_plain_container(c) for c in containers], f"revisions/{meta['name']}.spec.containers"
    )
    # LoRA adapters (issue 16): the same annotation; the pod runs its args as written, so the
    # flags parse_lora would add are not added to what runs (the manifest must carry them).
    lora, _ = parse_lora(
        annotations,
        f"revisions/{meta['name']}.annotations",
        runtime.engine_args,
        f"revisions/{meta['name']}.spec.containers[0].args",
    )
    generation = int(labels.get(GENERATION_LABEL) or rev_meta.get("generation") or 1)
    autoscaling = parsed.autoscaling
    if is_initialized(pa) and autoscaling.initial_scale:
        # Initialization remembered (issue 22, fix 2): the loop's fresh state after a restart or
        # a change of leader would otherwise start every revision at zero to its initial scale.
        autoscaling = replace(autoscaling, initial_scale=0)
    return RevisionSpec(
        ref=ref_of(pa),
        service=labels.get(SERVICE_LABEL) or labels.get(CONFIGURATION_LABEL) or meta["name"],
        generation=generation,
        runtime=runtime,
        autoscaling=autoscaling,
        container_concurrency=int(
            rev_spec.get("containerConcurrency") or pa["spec"].get("containerConcurrency") or 0
        ),
        timeout_s=float(rev_spec.get("timeoutSeconds") or DEFAULT_TIMEOUT_S),
        queue_depth=parsed.queue_depth,
        template_digest=str(meta.get("uid", "")),
        api_keys_secret=parsed.api_keys_secret,
        lora=lora,
    )


def _plain_container(c: Any) -> Any:
    """The parts of a Revision's container the autoscaler reads.

    On Kubernetes the pod is Knative's to build, so what only matters to the process that starts
    it — ``command``, probes, resources, env taken from Secrets — is dropped rather than refused
    as the embedded platform (which starts the process itself) refuses it.
    """
    if not isinstance(c, dict):
        return c
    out = {k: c[k] for k in ("image", "args", "ports") if k in c}
    env = [e for e in c.get("env") or () if isinstance(e, dict) and "valueFrom" not in e]
    if env:
        out["env"] = env
    return out


def traffic_of(
    route: Json | None,
    revisions: Iterable[RevisionSpec],
    reachable: Collection[str] | None = None,
) -> tuple[TrafficTarget, ...]:
    """A Route's resolved ``status.traffic``; without one, all traffic to the newest revision.

    With ``reachable`` (revision keys whose PA is not Unreachable), a reachable revision the
    Route does not name yet gets a 0 % entry: no request goes to it, but the loop scales it as a
    routed revision (initial and min scale), so it can become Ready and Knative can move traffic
    to it."""
    revs = list(revisions)
    routed = _route_targets(route, revs)
    if reachable is None:
        return routed
    named = {t.revision for t in routed}
    extra = tuple(
        TrafficTarget(revision=r.ref.name, percent=0)
        for r in revs
        if r.ref.key in reachable and r.ref.name not in named
    )
    return routed + extra


def _route_targets(route: Json | None, revs: list[RevisionSpec]) -> tuple[TrafficTarget, ...]:
    entries = ((route or {}).get("status") or {}).get("traffic") or []
    targets = tuple(
        TrafficTarget(
            revision=str(e["revisionName"]),
            percent=int(e.get("percent") or 0),
            tag=e.get("tag"),
            latest_revision=bool(e.get("latestRevision", False)),
        )
        for e in entries
        if e.get("revisionName")
    )
    if targets:
        return targets
    if not revs:
        return ()
    latest = max(revs, key=lambda r: r.generation)
    return (TrafficTarget(latest.ref.name, 100, latest_revision=True),)


def group_services(
    revisions: Iterable[RevisionSpec],
    routes: Mapping[tuple[str, str], Json],
    reachable: Collection[str] | None = None,
) -> tuple[ServiceSpec, ...]:
    """Group revisions by (namespace, service); a service's Route has the service's name."""
    by_service: dict[tuple[str, str], list[RevisionSpec]] = {}
    for rev in revisions:
        by_service.setdefault((rev.ref.namespace, rev.service), []).append(rev)
    services = []
    for (namespace, name), revs in sorted(by_service.items()):
        revs.sort(key=lambda r: (r.generation, r.ref.name))
        route = routes.get((namespace, name))
        services.append(
            ServiceSpec(
                namespace=namespace,
                name=name,
                generation=max(r.generation for r in revs),
                revisions=tuple(revs),
                traffic=traffic_of(route, revs, reachable),
                domain=_domain(route, namespace, name),
            )
        )
    return tuple(services)


def _domain(route: Json | None, namespace: str, name: str) -> str:
    """The cluster domain, read back from the Route's URL (``http://name.ns.<domain>``)."""
    url = str(((route or {}).get("status") or {}).get("url") or "")
    host = url.split("://", 1)[-1].split("/", 1)[0]
    prefix = f"{name}.{namespace}."
    return host[len(prefix) :] if host.startswith(prefix) else "example.com"


def _time(text: str | None) -> float | None:
    if not text:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def pod_failure(pod: Obj) -> str | None:
    """The user container's own error, when the pod cannot serve without outside help."""
    status: Json = pod.get("status") or {}
    if status.get("phase") == "Failed":
        return str(status.get("message") or status.get("reason") or "pod failed")
    for cs in status.get("containerStatuses") or ():
        if cs.get("name") not in (USER_CONTAINER, None) and len(status["containerStatuses"]) > 1:
            continue
        state: Json = cs.get("state") or {}
        waiting = state.get("waiting") or {}
        if waiting.get("reason") in FATAL_WAITING:
            last = ((cs.get("lastState") or {}).get("terminated")) or {}
            detail = last.get("message") or waiting.get("message") or ""
            return f"{waiting['reason']}: {detail}".strip().rstrip(":")
        terminated = state.get("terminated") or {}
        if terminated and terminated.get("reason") not in (None, "Completed"):
            code = terminated.get("exitCode")
            detail = terminated.get("message") or ""
            return f"{terminated['reason']} (exit code {code}): {detail}".strip().rstrip(":")
    return None


def pod_error_line(pod: Obj) -> str | None:
    """The last line of the user container's termination message (its own last words: the
    exception, with ``terminationMessagePolicy: FallbackToLogsOnError`` the last log line), for
    ``torpor status``; None when it left none."""
    statuses = (pod.get("status") or {}).get("containerStatuses") or ()
    for cs in statuses:
        if cs.get("name") not in (USER_CONTAINER, None) and len(statuses) > 1:
            continue
        for state in (cs.get("state") or {}, cs.get("lastState") or {}):
            message = str((state.get("terminated") or {}).get("message") or "")
            lines = [x.strip() for x in message.splitlines() if x.strip()]
            if lines:
                return lines[-1]
    return None


def ready_addresses(slices: Iterable[Obj]) -> dict[str, str]:
    """Pod name -> ``http://IP:PORT`` for every ready endpoint of a revision's private service."""
    out: dict[str, str] = {}
    for s in slices:
        ports = s.get("ports") or []
        port = next((p for p in ports if p.get("name") in SERVING_PORT_NAMES), None)
        port = port or (ports[0] if ports else None)
        if port is None:
            continue
        for ep in s.get("endpoints") or ():
            target = ep.get("targetRef") or {}
            conditions = ep.get("conditions") or {}
            # An absent "ready" means ready (discovery.k8s.io/v1 semantics).
            if conditions.get("ready") is False or conditions.get("terminating"):
                continue
            if target.get("kind") == "Pod" and ep.get("addresses"):
                address = ep["addresses"][0]
                host = f"[{address}]" if ":" in address else address
                out[target["name"]] = f"http://{host}:{port['port']}"
    return out


def replicas_of(
    revision: str,
    pods: Iterable[Obj],
    slices: Iterable[Obj],
    *,
    desired: int,
    stopped: frozenset[str] = frozenset(),
    now: float = 0.0,
) -> list[Replica]:
    """Every replica of a revision the loop should count.

    Pods the loop stopped are left out even while they terminate. Pods the Deployment wants but
    the ReplicaSet has not created yet appear as STARTING placeholders (``<revision>-pending-N``),
    so the loop does not ask again for replicas it already asked for; stamped ``now``, they are
    the newest and so the first a scale-down takes back, at no cost.
    """
    addresses = ready_addresses(slices)
    out: list[Replica] = []
    for pod in sorted(pods, key=lambda p: str(p["metadata"]["name"])):
        meta = pod["metadata"]
        name = str(meta["name"])
        if name in stopped or meta.get("deletionTimestamp"):
            continue
        launched = _time(meta.get("creationTimestamp")) or 0.0
        failure = pod_failure(pod)
        if failure is not None:
            line = pod_error_line(pod)
            failed = Replica(name, revision, Phase.FAILED, None, launched, error=failure)
            out.append(replace(failed, error_line=line))
        elif name in addresses:
            ready_at = next(
                (
                    _time(c.get("lastTransitionTime"))
                    for c in (pod.get("status") or {}).get("conditions") or ()
                    if c.get("type") == "Ready" and c.get("status") == "True"
                ),
                None,
            )
            out.append(Replica(name, revision, Phase.READY, addresses[name], launched, ready_at))
        else:
            out.append(Replica(name, revision, Phase.STARTING, None, launched))
    name = revision.rpartition("/")[2]
    for i in range(max(0, desired - len(out))):
        out.append(Replica(f"{name}{PENDING}{i}", revision, Phase.STARTING, None, now))
    return out


def is_placeholder(replica_id: str) -> bool:
    return PENDING in replica_id
