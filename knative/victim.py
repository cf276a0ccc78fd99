"""Which pod a ReplicaSet deletes when its Deployment is scaled down by one (pure).

The ReplicaSet controller does not take the newest pod, nor the one with the lowest
``controller.kubernetes.io/pod-deletion-cost``: it sorts its active pods by
``controller.ActivePodsWithRanks`` (``pkg/controller/controller_utils.go``) and deletes the first:

1. not yet scheduled (no ``spec.nodeName``) before scheduled;
2. ``Pending`` before ``Unknown`` before ``Running``;
3. not ready before ready;
4. lower pod-deletion-cost before higher;
5. then co-location, time ready, restarts and age, which this module does not model.

So the cost only picks among pods equal on 1-3: marking a ready replica "first to go" while another
pod of the revision is still starting (pending or unready) makes the ReplicaSet delete the starting
one instead, and the replica the loop drained keeps running, unseen if the actuator hid it as
stopped. ``cost_decides`` tells the actuator when the cost is enough to hide it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"
_PHASE_RANK = {"Pending": 0, "Unknown": 1, "Running": 2}

Obj = Mapping[str, Any]


def is_active(pod: Obj) -> bool:
    """What the ReplicaSet counts (``FilterActivePods``): not terminating, not finished."""
    status = pod.get("status") or {}
    return not pod["metadata"].get("deletionTimestamp") and status.get("phase") not in (
        "Succeeded",
        "Failed",
    )


def _ready(pod: Obj) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or ()
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def deletion_cost(pod: Obj) -> int:
    annotations = pod["metadata"].get("annotations") or {}
    try:
        return int(annotations.get(DELETION_COST, 0))
    except ValueError:
        return 0  # the API server refuses a non-integer cost; never seen, counted as the default


def rank(pod: Obj, cost: int | None = None) -> tuple[int, int, int, int]:
    """Criteria 1-4 as a sort key: the lowest goes first."""
    scheduled = 1 if (pod.get("spec") or {}).get("nodeName") else 0
    phase = _PHASE_RANK.get(str((pod.get("status") or {}).get("phase") or "Pending"), 0)
    return (scheduled, phase, int(_ready(pod)), deletion_cost(pod) if cost is None else cost)


def cost_decides(pods: Iterable[Obj], chosen: str, cost: int) -> bool:
    """Whether giving ``chosen`` this deletion cost makes the ReplicaSet delete exactly it on a
    scale down by one. Ties are not enough: criteria 5+ would break them, unmodelled."""
    active = [p for p in pods if is_active(p)]
    mine = next((p for p in active if p["metadata"]["name"] == chosen), None)
    if mine is None:
        return False
    key = rank(mine, cost)
    return all(key < rank(p) for p in active if p is not mine)
