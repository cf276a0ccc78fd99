"""Settings of the Knative controller and actuator, read from the autoscaler pod's environment."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from knative.lease import LeaseConfig
from knative.watch import Backoff


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
    if lease.lease_duration_s < 1 or lease.lease_duration_s != int(lease.lease_duration_s):
        # The Lease stores leaseDurationSeconds as an integer; a fraction would be cut silently.
        raise ValueError("TORPOR_LEASE_DURATION_S must be a whole number of seconds, at least 1")
    suffix = env.get("TORPOR_CLASS_SUFFIX", ".torpor.dev")
    if not suffix.endswith(".torpor.dev"):
        raise ValueError(f"TORPOR_CLASS_SUFFIX must end in .torpor.dev, got {suffix!r}")
    return KnativeConfig(identity=identity, class_suffix=suffix, lease=lease)
