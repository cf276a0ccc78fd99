"""The Knative controller's and actuator's pure parts: lease rule, PA status, replicas, config."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import time
from typing import Any

import pytest

from autoscaler.actuator import Phase
from knative.config import config_from_env
from knative.errors import KubeError
from knative.lease import Action, LeaderElector, LeaseConfig, Observed, decide, observe
from knative.revision import pod_error_line, pod_failure, replicas_of
from knative.status import ScaleObservation, condition, pa_status, sks_mode
from knative.victim import DELETION_COST, cost_decides

from .knative_world import eventually

HELD = {"holderIdentity": "b", "renewTime": "t1", "leaseDurationSeconds": 15}


@pytest.mark.parametrize(
    ("spec", "observed", "now", "action"),
    [
        (None, None, 0.0, Action.ACQUIRE),  # no lease yet
        ({"holderIdentity": "a"}, None, 0.0, Action.RENEW),  # ours
        ({"holderIdentity": ""}, None, 0.0, Action.ACQUIRE),  # released
        (HELD, Observed(("b", "t1", 0), 100.0), 110.0, Action.WAIT),  # live
        (HELD, Observed(("b", "t1", 0), 100.0), 115.0, Action.ACQUIRE),  # unchanged for 15 s
    ],
)
def test_lease_rule(spec: Any, observed: Observed | None, now: float, action: Action) -> None:
    assert decide("a", spec, observed, now) is action


def test_a_renewed_lease_restarts_the_expiry_clock_on_our_side() -> None:
    first = observe(HELD, None, 100.0)
    assert observe(HELD, first, 120.0) is first  # same record: still counted from 100
    renewed = observe(HELD | {"renewTime": "t2"}, first, 120.0)
    assert renewed is not None and renewed.changed_at == 120.0
    assert decide("a", HELD | {"renewTime": "t2"}, renewed, 130.0) is Action.WAIT


PA = {"metadata": {"name": "r-1", "namespace": "ns", "generation": 3}, "spec": {}}
SKS_READY = {"status": {"serviceName": "r-1", "conditions": [{"type": "Ready", "status": "True"}]}}


def statuses(status: dict[str, Any]) -> dict[str, str]:
    return {c["type"]: c["status"] for c in status["conditions"]}


@pytest.mark.parametrize(
    ("obs", "expected", "active_reason"),
    [
        (
            ScaleObservation(desired=0, ready=0),
            {"Active": "False", "ScaleTargetInitialized": "Unknown", "SKSReady": "Unknown"},
            "NoTraffic",
        ),
        (
            ScaleObservation(desired=1, ready=0, sks=SKS_READY),
            {"Active": "Unknown", "ScaleTargetInitialized": "Unknown", "SKSReady": "True"},
            "Queued",
        ),
        (
            ScaleObservation(desired=1, ready=1, sks=SKS_READY),
            {"Active": "True", "ScaleTargetInitialized": "True", "SKSReady": "True"},
            None,
        ),
        (
            ScaleObservation(desired=1, ready=0, failure="boom"),
            {"Active": "False", "ScaleTargetInitialized": "False", "SKSReady": "Unknown"},
            "RevisionFailed",
        ),
        (
            ScaleObservation(desired=1, ready=0, failure="CrashLoopBackOff: x", crash_loop=True),
            {"Active": "False", "ScaleTargetInitialized": "False", "SKSReady": "Unknown"},
            "CrashLoopBackOff",
        ),
    ],
)
def test_pa_conditions_follow_the_kpa(
    obs: ScaleObservation, expected: dict[str, str], active_reason: str | None
) -> None:
    status = pa_status(PA, obs, now=1000.0)
    got = statuses(status)
    ready = got.pop("Ready")
    assert got == expected
    # Ready is the living condition set's summary of the three.
    if "False" in expected.values():
        assert ready == "False"
    elif "Unknown" in expected.values():
        assert ready == "Unknown"
    else:
        assert ready == "True"
    active = condition(status, "Active")
    assert active is not None and active.get("reason") == active_reason
    assert status["desiredScale"] == obs.desired and status["actualScale"] == obs.ready
    assert status["observedGeneration"] == 3


def test_a_crash_loop_is_the_reason_of_both_conditions_with_the_pods_message() -> None:
    failure = "CrashLoopBackOff: IndexError: index out of range in self"
    status = pa_status(PA, ScaleObservation(1, 0, failure=failure, crash_loop=True), now=1.0)
    for type_ in ("Active", "ScaleTargetInitialized", "Ready"):
        c = condition(status, type_)
        assert c is not None and c["status"] == "False", c
        assert (c["reason"], c["message"]) == ("CrashLoopBackOff", failure)


def test_transition_time_moves_only_when_a_condition_changes() -> None:
    first = pa_status(PA, ScaleObservation(desired=0, ready=0), now=1000.0)
    again = pa_status(PA | {"status": first}, ScaleObservation(desired=0, ready=0), now=2000.0)
    assert again == first
    woke = pa_status(PA | {"status": first}, ScaleObservation(desired=1, ready=0), now=3000.0)
    times = {c["type"]: c["lastTransitionTime"] for c in woke["conditions"]}
    assert times["Active"] == "1970-01-01T00:50:00Z"
    assert times["SKSReady"] == "1970-01-01T00:16:40Z"
    # Once initialised, a scale target stays initialised (Knative never takes it back).
    up = pa_status(PA, ScaleObservation(desired=1, ready=1, sks=SKS_READY), now=1.0)
    down = pa_status(PA | {"status": up}, ScaleObservation(desired=0, ready=0), now=2.0)
    assert statuses(down)["ScaleTargetInitialized"] == "True"


def test_an_initial_scale_0_revision_is_initialized_at_once_as_the_kpa_does() -> None:
    """kpa.go activeThreshold: max(min, initial) = 0 before initialization, so 0 ready pods
    reach it; computeActiveCondition marks it initialized once the SKS gave a service name."""
    before_sks = pa_status(PA, ScaleObservation(desired=0, ready=0, initial_scale=0), now=1.0)
    assert statuses(before_sks)["ScaleTargetInitialized"] == "Unknown"  # no service name yet
    status = pa_status(
        PA, ScaleObservation(desired=0, ready=0, initial_scale=0, sks=SKS_READY), now=1.0
    )
    got = statuses(status)
    assert got["ScaleTargetInitialized"] == "True"
    assert got["Active"] == "False" and got["Ready"] == "False"  # inactive, as at zero
    # The default initial scale (1) is not reached at zero: not initialized.
    default = pa_status(PA, ScaleObservation(desired=0, ready=0, sks=SKS_READY), now=1.0)
    assert statuses(default)["ScaleTargetInitialized"] == "Unknown"


def test_min_scale_counts_only_while_the_pa_is_reachable() -> None:
    """PodAutoscaler.ScaleBounds (pa_lifecycle.go): no min for an Unreachable PA."""
    initialized = pa_status(PA, ScaleObservation(desired=2, ready=2, sks=SKS_READY), now=1.0)
    pa = PA | {"status": initialized}
    held = ScaleObservation(desired=2, ready=1, min_scale=2, sks=SKS_READY)
    assert statuses(pa_status(pa, held, now=2.0))["Active"] == "Unknown"  # 1 < min 2
    gone = ScaleObservation(desired=2, ready=1, min_scale=2, reachable=False, sks=SKS_READY)
    assert statuses(pa_status(pa, gone, now=2.0))["Active"] == "True"  # threshold max(0, 1)


def test_scaled_to_zero_while_activating_is_timed_out() -> None:
    """computeActiveCondition: want 0 while Active is Unknown and minReady > 0 -> TimedOut."""
    waking = pa_status(PA, ScaleObservation(desired=1, ready=0, sks=SKS_READY), now=1.0)
    gave_up = pa_status(PA | {"status": waking}, ScaleObservation(0, 0, sks=SKS_READY), now=2.0)
    active = condition(gave_up, "Active")
    assert active is not None and (active["status"], active["reason"]) == ("False", "TimedOut")


def test_sks_serves_only_with_a_ready_pod() -> None:
    assert sks_mode(0) == "Proxy"
    assert sks_mode(2) == "Serve"


def pod(name: str, **status: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "creationTimestamp": "2026-01-01T00:00:00Z"},
        "status": status,
    }


def test_pod_failures_carry_the_containers_message() -> None:
    oom = pod(
        "p",
        containerStatuses=[
            {
                "name": "user-container",
                "state": {"terminated": {"reason": "OOMKilled", "exitCode": 137}},
            }
        ],
    )
    failure = pod_failure(oom)
    assert failure is not None and failure.startswith("OOMKilled (exit code 137)")
    pulling = pod("p", containerStatuses=[{"state": {"waiting": {"reason": "ContainerCreating"}}}])
    assert pod_failure(pulling) is None
    assert pod_failure(pod("p", phase="Failed", message="evicted")) == "evicted"


def test_a_crash_looping_pod_is_failed_with_its_last_words() -> None:
    looping = pod(
        "p",
        containerStatuses=[
            {
                "name": "user-container",
                "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 20s"}},
                "lastState": {
                    "terminated": {
                        "reason": "Error",
                        "exitCode": 1,
                        "message": "Traceback ...\nIndexError: index out of range in self\n",
                    }
                },
            }
        ],
    )
    assert pod_error_line(looping) == "IndexError: index out of range in self"
    [replica] = replicas_of("ns/r-1", [looping], [], desired=1)
    assert replica.phase is Phase.FAILED
    assert replica.error is not None and replica.error.startswith("CrashLoopBackOff: Traceback")
    assert replica.error_line == "IndexError: index out of range in self"
    assert pod_error_line(pod("p", containerStatuses=[{"state": {"running": {}}}])) is None


def test_replicas_asked_for_but_not_created_count_as_starting() -> None:
    slices = [
        {
            "ports": [{"name": "http", "port": 8012}],
            "endpoints": [
                {
                    "addresses": ["10.1.2.3"],
                    "conditions": {"ready": True},
                    "targetRef": {"kind": "Pod", "name": "a"},
                }
            ],
        }
    ]
    got = replicas_of("ns/r-1", [pod("a"), pod("b")], slices, desired=3, stopped=frozenset({"b"}))
    assert [(r.replica_id, r.phase, r.url) for r in got] == [
        ("a", Phase.READY, "http://10.1.2.3:8012"),
        ("r-1-pending-0", Phase.STARTING, None),
        ("r-1-pending-1", Phase.STARTING, None),
    ]


def test_config_from_env_checks_the_lease_timing_rule() -> None:
    cfg = config_from_env({"TORPOR_IDENTITY": "pod-a", "TORPOR_LEASE_NAMESPACE": "x"})
    assert cfg.identity == "pod-a" and cfg.lease.namespace == "x"
    with pytest.raises(ValueError, match="renew deadline"):
        config_from_env({"TORPOR_IDENTITY": "a", "TORPOR_LEASE_RENEW_DEADLINE_S": "20"})
    with pytest.raises(ValueError, match="whole number"):
        config_from_env({"TORPOR_IDENTITY": "a", "TORPOR_LEASE_DURATION_S": "15.5"})
    with pytest.raises(ValueError, match="TORPOR_IDENTITY"):
        config_from_env({})
    with pytest.raises(ValueError, match=r"torpor\.dev"):
        config_from_env({"TORPOR_IDENTITY": "a", "TORPOR_CLASS_SUFFIX": ".knative.dev"})


def rs_pod(
    name: str, phase: str, *, ready: bool = False, node: str | None = "n", cost: int = 0
) -> Any:
    return {
        "metadata": {"name": name, "annotations": {DELETION_COST: str(cost)}},
        "spec": {"nodeName": node} if node else {},
        "status": {
            "phase": phase,
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


def test_the_deletion_cost_decides_only_among_pods_equally_far_along() -> None:
    low = -(2**31)
    a, b = rs_pod("a", "Running", ready=True), rs_pod("b", "Running", ready=True)
    assert cost_decides([a, b], "a", low)
    # A pod that is pending, unscheduled or unready goes first whatever a's cost.
    assert not cost_decides([a, rs_pod("b", "Pending")], "a", low)
    assert not cost_decides([a, rs_pod("b", "Running", ready=True, node=None)], "a", low)
    assert not cost_decides([a, rs_pod("b", "Running")], "a", low)
    # Equal cost is a tie broken by criteria not modelled: not decided.
    assert not cost_decides([a, rs_pod("b", "Running", ready=True, cost=low)], "a", low)
    # Terminating and finished pods are no longer the ReplicaSet's to choose from.
    gone = rs_pod("b", "Pending")
    gone["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    assert cost_decides([a, gone, rs_pod("c", "Failed")], "a", low)
    assert not cost_decides([gone], "b", low)


class _HangingLeaseApi:
    """A Lease API that answers until told to hang (an API server that stops answering)."""

    def __init__(self) -> None:
        self.lease: dict[str, Any] | None = None
        self.hang = False

    async def _maybe_hang(self) -> None:
        if self.hang:
            await asyncio.sleep(3600)

    async def read_lease(self, namespace: str, name: str) -> dict[str, Any]:
        await self._maybe_hang()
        if self.lease is None:
            raise KubeError(404, "NotFound", "no lease")
        return copy.deepcopy(self.lease)

    async def create_lease(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        await self._maybe_hang()
        self.lease = body | {"metadata": body["metadata"] | {"resourceVersion": "1"}}
        return body

    async def replace_lease(
        self, namespace: str, name: str, body: dict[str, Any]
    ) -> dict[str, Any]:
        await self._maybe_hang()
        self.lease = body
        return body


async def test_a_leader_whose_api_calls_hang_steps_down_by_its_renew_deadline() -> None:
    """Issue 22, fix 5: a hung Lease call cannot keep a leader acting past its renew deadline
    (before: 30 s API timeouts, judged on the time taken before the call, against a 15 s Lease).
    The step-down comes within the renew deadline of the last renewal, before the Lease could
    pass to anyone else."""
    api = _HangingLeaseApi()
    cfg = LeaseConfig(lease_duration_s=3, renew_deadline_s=1.0, retry_period_s=0.1)
    elector = LeaderElector(api, "a", cfg, clock=time.monotonic)
    task = asyncio.create_task(elector.run())
    try:
        await eventually(lambda: elector.is_leader, within_s=5)
        api.hang = True
        hung_at = time.monotonic()
        await eventually(lambda: not elector.is_leader, within_s=cfg.lease_duration_s)
        stepped_down_after = time.monotonic() - hung_at
        assert stepped_down_after < cfg.renew_deadline_s + 0.3, stepped_down_after
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    # Every other API call ends before the Lease can pass on: duration - renew deadline.
    assert LeaseConfig().call_timeout_s == 5.0
