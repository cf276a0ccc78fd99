"""What torpor writes back to Knative, as pure functions of what it observed.

The PodAutoscaler status follows Knative's KPA (``pkg/reconciler/autoscaling/kpa``) and the
condition set of ``pkg/apis/autoscaling/v1alpha1/pa_lifecycle.go``: a *living* condition set whose
happy condition ``Ready`` is True only when ``Active``, ``ScaleTargetInitialized`` and ``SKSReady``
all are, False when any is False, Unknown otherwise. A condition's ``lastTransitionTime`` changes
only when its status does, so rewriting an unchanged status is a no-op.
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
    activation_scale: int = 1
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


def dependent_conditions(obs: ScaleObservation, previous: Json) -> list[Condition]:
    """Active / ScaleTargetInitialized / SKSReady, as Knative's KPA computes them."""
    was = {c.get("type"): c for c in previous.get("conditions") or ()}
    was_initialized = (was.get(SCALE_TARGET_INITIALIZED) or {}).get("status") == "True"
    was_inactive = (was.get(ACTIVE) or {}).get("status") == "False"
    min_ready = max(1, obs.activation_scale)

    if was_initialized or obs.ready >= min_ready:
        initialized = Condition(SCALE_TARGET_INITIALIZED, "True")
    elif obs.failure:
        why = CRASH_LOOP_BACK_OFF if obs.crash_loop else "ContainerMissing"
        initialized = Condition(SCALE_TARGET_INITIALIZED, "False", why, obs.failure)
    else:
        initialized = Condition(SCALE_TARGET_INITIALIZED, "Unknown", "Queued", "")

    if obs.desired == 0:
        active = Condition(ACTIVE, "False", "NoTraffic", "The target is not receiving traffic.")
    elif obs.ready < min_ready:
        if obs.failure:
            why = CRASH_LOOP_BACK_OFF if obs.crash_loop else "RevisionFailed"
            active = Condition(ACTIVE, "False", why, obs.failure)
        elif was_inactive or ACTIVE not in was or was[ACTIVE].get("status") != "True":
            active = Condition(
                ACTIVE,
                "Unknown",
                "Queued",
                "Requests to the target are being buffered as resources are provisioned.",
            )
        else:
            active = Condition(ACTIVE, "True")
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
    name = pa["metadata"]["name"]
    sks_status: Json = (obs.sks or {}).get("status") or {}
    status: Json = {
        # Names follow Knative's conventions until the SKS reconciler reports its own.
        "serviceName": sks_status.get("serviceName") or name,
        "metricsServiceName": sks_status.get("privateServiceName") or f"{name}-private",
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
