"""The platform's caps on replicas: per revision (checked when a manifest is parsed) and in total
(checked when it is applied to what is deployed).

Knative leaves both open by default (``max-scale-limit: 0``, no cluster-wide bound: the cluster's
capacity is the limit). On the embedded platform every replica is a vLLM process on one host,
holding a model and its KV cache, so ``min-scale: "1000000000"`` would ask for a billion of them.
The defaults sit above what one host can run (a GPU host runs one replica per GPU, a CPU host a
few) and far below what would exhaust its process or port tables; ``torpor up
--max-scale-per-revision`` and ``--max-replicas`` change them.

- **Per revision** (default ``DEFAULT_MAX_SCALE_PER_REVISION``): ``min-scale``, ``max-scale``,
  ``initial-scale`` and ``activation-scale`` above it are refused, naming the annotation. A
  ``max-scale`` of ``0`` (or none), Knative's "no upper bound", becomes the cap: the revision's spec
  carries it, so the autoscaler never runs more replicas of one revision, at any load.
- **In total** (default ``DEFAULT_MAX_REPLICAS_TOTAL``): the replicas the platform starts with no
  demand at all, the sum of ``min-scale`` over every revision that traffic reaches, plus for the
  service being deployed its ``initial-scale`` where higher (a deploy starts that many at once;
  issue 23: five services at an ``initial-scale`` of 16 passed a cap of 20), may not exceed it.
  A deploy that would raise that sum above the cap is refused, naming ``initial-scale`` when the
  deployed service's initial scale counts, else ``min-scale``; one that does not raise it (a lower
  cap after a restart) is not. Replicas started for demand are bounded per revision only: the
  total is not clamped at run time.

What the state directory kept from before a restart under a lower cap is clamped to the cap
when the control plane loads it (``clamp_service``), not refused.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

from torpor.manifest.errors import ManifestError
from torpor.spec import RevisionSpec, ServiceSpec

DEFAULT_MAX_SCALE_PER_REVISION = 16
DEFAULT_MAX_REPLICAS_TOTAL = 64
MIN_SCALE_FIELD = 'spec.template.metadata.annotations["autoscaling.knative.dev/min-scale"]'
INITIAL_SCALE_FIELD = (
    'spec.template.metadata.annotations["autoscaling.knative.dev/initial-scale"]'
)


@dataclass(frozen=True, slots=True)
class ScaleLimits:
    """How many replicas one revision may have, and how many all of them may hold at rest."""

    per_revision: int = DEFAULT_MAX_SCALE_PER_REVISION
    total: int = DEFAULT_MAX_REPLICAS_TOTAL

    def __post_init__(self) -> None:
        if self.per_revision < 1:
            raise ValueError(f"the per-revision cap must be at least 1, got {self.per_revision}")
        if self.total < self.per_revision:
            raise ValueError(
                f"the total cap ({self.total}) must be at least the per-revision cap "
                f"({self.per_revision})"
            )


def floor_replicas(services: Iterable[ServiceSpec]) -> int:
    """Replicas held with no demand: ``min-scale`` of every revision traffic reaches (the
    autoscaler scales an unrouted revision to zero whatever its ``min-scale``)."""
    return sum(r.autoscaling.min_scale for s in services for r in s.routed_revisions())


def check_total(
    before: Iterable[ServiceSpec], after: Iterable[ServiceSpec], limits: ScaleLimits
) -> None:
    """Refuse a change that raises the replicas started at rest above ``limits.total``: the held
    ones of every service, and for a service this change deploys, its ``initial-scale`` where that
    is higher (a deploy starts that many at once)."""
    before, after = list(before), list(after)
    old = {s.key: s for s in before}
    was = floor_replicas(before)
    now = 0
    initial = False
    for service in after:
        for r in service.routed_revisions():
            a = r.autoscaling
            if service != old.get(service.key) and a.initial_scale > a.min_scale:
                now += a.initial_scale
                initial = True
            else:
                now += a.min_scale
    if now > limits.total and now > was:
        raise ManifestError(
            INITIAL_SCALE_FIELD if initial else MIN_SCALE_FIELD,
            f"would start {now} replicas with no demand across all services (the sum of "
            f"min-scale over routed revisions, initial-scale where this deploy starts more; "
            f"{was} held now), above the platform's total of {limits.total} "
            "(torpor up --max-replicas)",
        )


def clamp_revision(revision: RevisionSpec, limits: ScaleLimits) -> RevisionSpec:
    """A revision deployed under other (or no) caps, brought within ``limits.per_revision``.

    For what the state directory kept from before a restart with a lower cap: it was checked
    against the caps of its day, and refusing it now would leave it deployed but unscaled.
    """
    a = revision.autoscaling
    cap = limits.per_revision
    clamped = replace(
        a,
        min_scale=min(a.min_scale, cap),
        max_scale=min(a.max_scale or cap, cap),
        initial_scale=min(a.initial_scale, cap),
        activation_scale=min(a.activation_scale, cap),
    )
    return revision if clamped == a else replace(revision, autoscaling=clamped)


def clamp_service(service: ServiceSpec, limits: ScaleLimits) -> ServiceSpec:
    revisions = tuple(clamp_revision(r, limits) for r in service.revisions)
    return service if revisions == service.revisions else replace(service, revisions=revisions)
