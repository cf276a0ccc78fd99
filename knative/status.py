"""What torpor writes back to Knative, as pure functions of what it observed.

The PodAutoscaler status follows Knative's KPA (``pkg/reconciler/autoscaling/kpa``) and the
condition set of ``pkg/apis/autoscaling/v1alpha1/pa_lifecycle.go``: a *living* condition set whose
happy condition ``Ready`` is True only when ``Active``, ``ScaleTargetInitialized`` and ``SKSReady``
all are, False when any is False, Unknown otherwise. A condition's ``lastTransitionTime`` changes
only when its status does, so rewriting an unchanged status is a no-op.

``ScaleTargetInitialized`` and ``Active`` follow ``computeActiveCondition`` and ``activeThreshold``
in ``pkg/reconciler/autoscaling/kpa/kpa.go``: the threshold is ``max(min-scale, initial-scale)``
until the target is initialized, ``max(min-scale, 1)`` after, min-scale counting only while the PA's
``spec.reachability`` is not ``Unreachable`` (``PodAutoscaler.ScaleBounds``, ``pa_lifecycle.go``);
the target is initialized once that many pods are ready *and* the SKS has reported its service
name. So an initial-scale-0 revision is initialized at once, without a pod. This matters because
the Revision reads the PA (``PropagateAutoscalerStatus``, ``pkg/apis/serving/v1/
revision_lifecycle.go``): a PA whose ``Ready`` is False while ``ScaleTargetInitialized`` is not
True, with a service name, fails the Revision ("Initial scale was never achieved"), and a Revision
is Ready only once its PA was initialized (``ResourcesAvailable``). ``harness/knative_serving.py``
runs that rule against this module in the tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

Json = dict[str, Any]

PA_API_VERSION = "autoscaling.internal.knative.dev/v1alpha1"
SKS_API_VERSION = "networking.internal.knative.dev/v1alpha1"

ACTIVE = "Active"
SCALE_TARGET_INITIALIZED = "ScaleTargetInitialized"
SKS_READY = "SKSReady"
READY = "Ready"
DEPENDENTS = (ACTIVE, SCALE_TARGET_INITIALIZED, SKS_READY)

CRASH_LOOP_BACK_OFF = "CrashLoopBackOff"  # a condition's reason while the revision crash-loops

SERVE = "Serve"
PROXY = "Proxy"


@dataclass(frozen=True, slots=True)
class Condition:
    type: str
    status: str  # "True" | "False" | "Unknown"
    reason: str = ""
    message: str = ""


@dataclass(frozen=True, slots=True)
class ScaleObservation:
    """Everything the status of one PodAutoscaler depends on."""

    desired: int  # the Deployment's spec.replicas: what torpor decided
    ready: int  # pods of the revision with a ready address
    initial_scale: int = 1  # autoscaling.knative.dev/initial-scale (Knative's default: 1)
    min_scale: int = 0  # autoscaling.knative.dev/min-scale
    reachable: bool = True  # spec.reachability is not Unreachable (min-scale counts)
    sks: Json | None = None  # the ServerlessService as read back, None if not created yet
    failure: str | None = None  # a replica's own error when the revision cannot start
    # The failure is a crash loop: a pod the kubelet holds in CrashLoopBackOff (it backs off the
    # restarts itself; torpor reports it, and answers the requests held for the revision).
    crash_loop: bool = False


def rfc3339(now: float) -> str:
    return datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def sks_mode(ready: int) -> str:
    """Serve once some pod is ready to take requests directly; Proxy (through an activator)
    while there is none, exactly when the revision sits at zero or is still cold-starting."""
    return SERVE if ready > 0 else PROXY


def sks_body(pa: Json, mode: str) -> Json:
    """The ServerlessService Knative's networking controller expects for this PA."""
    meta = pa["metadata"]
    return {
        "apiVersion": SKS_API_VERSION,
        "kind": "ServerlessService",
        "metadata": {
            "name": meta["name"],
            "namespace": meta["namespace"],
            "labels": dict(meta.get("labels") or {}),
            "annotations": {
                k: v
                for k, v in (meta.get("annotations") or {}).items()
                if k.startswith("autoscaling.knative.dev/")
            },
            "ownerReferences": [
                {
                    "apiVersion": PA_API_VERSION,
                    "kind": "PodAutoscaler",
                    "name": meta["name"],
                    "uid": meta["uid"],
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": {
            "mode": mode,
            "numActivators": 0,
            "objectRef": dict(pa["spec"]["scaleTargetRef"]),
            "protocolType": pa["spec"].get("protocolType", "http1"),
        },
    }


def sks_needs_update(current: Json, wanted: Json) -> bool:
    return bool(
        current.get("spec") != wanted["spec"]
        or (current["metadata"].get("labels") or {}) != wanted["metadata"]["labels"]
    )


def _sks_ready(sks: Json | None) -> bool:
    if sks is None:
        return False
    for cond in (sks.get("status") or {}).get("conditions") or ():
        if cond.get("type") == READY:
            return bool(cond.get("status") == "True")
    return False


def _service_name(obs: ScaleObservation) -> str:
    """``pa.Status.ServiceName = sks.Status.ServiceName`` (kpa.go ``ReconcileKind``): empty
    until Knative's SKS reconciler has created the public service and said so."""
    return str(((obs.sks or {}).get("status") or {}).get("serviceName") or "")


def active_threshold(obs: ScaleObservation, initialized: bool) -> int:
    """``activeThreshold`` (kpa.go): the ready pods that make the PA Active (and, before that,
    initialized). min-scale is ignored for an Unreachable PA (``ScaleBounds``)."""
    low = obs.min_scale if obs.reachable else 0
    if not initialized:
        return max(low, obs.initial_scale)
    return max(low, 1)


def dependent_conditions(obs: ScaleObservation, previous: Json) -> list[Condition]:
    """Active / ScaleTargetInitialized / SKSReady, as Knative's KPA computes them
    (``computeActiveCondition`` in kpa.go), plus torpor's failure reasons (a replica's own error:
    Knative's KPA has none; its revision reconciler reads the pods instead)."""
    was = {c.get("type"): c for c in previous.get("conditions") or ()}
    was_initialized = (was.get(SCALE_TARGET_INITIALIZED) or {}).get("status") == "True"
    was_activating = ACTIVE in was and was[ACTIVE].get("status") == "Unknown"
    min_ready = active_threshold(obs, was_initialized)

    if was_initialized or (obs.ready >= min_ready and _service_name(obs)):
        initialized = Condition(SCALE_TARGET_INITIALIZED, "True")
    elif obs.failure:
        why = CRASH_LOOP_BACK_OFF if obs.crash_loop else "ContainerMissing"
        initialized = Condition(SCALE_TARGET_INITIALIZED, "False", why, obs.failure)
    else:
        initialized = Condition(SCALE_TARGET_INITIALIZED, "Unknown", "Queued", "")

    if obs.desired == 0 or min_ready == 0:
        if was_activating and min_ready > 0:
            # kpa.go: "We only ever scale to zero while activating if we fail to activate".
            active = Condition(ACTIVE, "False", "TimedOut", "The target could not be activated.")
        else:
            active = Condition(ACTIVE, "False", "NoTraffic", "The target is not receiving traffic.")
    elif obs.ready < min_ready:
        if obs.failure:
            why = CRASH_LOOP_BACK_OFF if obs.crash_loop else "RevisionFailed"
            active = Condition(ACTIVE, "False", why, obs.failure)
        else:
            active = Condition(
                ACTIVE,
                "Unknown",
                "Queued",
                "Requests to the target are being buffered as resources are provisioned.",
            )
    else:
        active = Condition(ACTIVE, "True")

    if _sks_ready(obs.sks):
        sks = Condition(SKS_READY, "True")
    else:
        sks = Condition(SKS_READY, "Unknown", "NotReady", "SKS Services are not ready yet")
    return [active, initialized, sks]


def ready_condition(dependents: list[Condition]) -> Condition:
    for cond in dependents:
        if cond.status == "False":
            return Condition(READY, "False", cond.reason, cond.message)
    for cond in dependents:
        if cond.status == "Unknown":
            return Condition(READY, "Unknown", cond.reason, cond.message)
    return Condition(READY, "True")


def _render(cond: Condition, previous: Json | None, now: float) -> Json:
    same = previous is not None and previous.get("status") == cond.status
    out: Json = {
        "type": cond.type,
        "status": cond.status,
        "lastTransitionTime": (previous or {}).get("lastTransitionTime") if same else rfc3339(now),
    }
    if cond.reason:
        out["reason"] = cond.reason
    if cond.message:
        out["message"] = cond.message
    return out


def pa_status(pa: Json, obs: ScaleObservation, now: float) -> Json:
    """The PodAutoscaler's whole ``status``: scales, service names, conditions."""
    previous: Json = pa.get("status") or {}
    was = {c.get("type"): c for c in previous.get("conditions") or ()}
    dependents = dependent_conditions(obs, previous)
    conditions = [*dependents, ready_condition(dependents)]
    sks_status: Json = (obs.sks or {}).get("status") or {}
    status: Json = {
        # As the KPA: both names are the SKS reconciler's, empty until it reports them.
        "serviceName": str(sks_status.get("serviceName") or ""),
        "metricsServiceName": str(sks_status.get("privateServiceName") or ""),
        "desiredScale": obs.desired,
        "actualScale": obs.ready,
        "observedGeneration": pa["metadata"].get("generation", 0),
        "conditions": sorted(
            (_render(c, was.get(c.type), now) for c in conditions), key=lambda c: str(c["type"])
        ),
    }
    if previous.get("annotations"):
        status["annotations"] = previous["annotations"]
    return status


def condition(status: Json, type_: str) -> Json | None:
    return next((c for c in status.get("conditions") or () if c.get("type") == type_), None)
