"""The suspended tier's seams outside the loop: the Knative actuator refuses it with a typed
error, and the autoscaler's metrics count suspended replica-seconds apart from serving ones."""

from __future__ import annotations

from typing import Any, cast

import pytest

from autoscaler.actuator import SuspendUnsupported
from autoscaler.decide import Decision
from autoscaler.metrics import AutoscalerMetrics
from knative.actuator import ClusterView, KnativeActuator, ScaleApi
from tests.autoscaler.fakes import revision

LABELS = {"namespace": "default", "revision": "chat-00001"}


async def test_knative_actuator_refuses_to_suspend_or_resume() -> None:
    # Neither call may touch the cluster: objects that fail on any use.
    a = KnativeActuator(cast(ScaleApi, object()), cast(ClusterView, object()), leader=lambda: True)
    with pytest.raises(SuspendUnsupported, match="cannot suspend"):
        await a.suspend(revision(), "chat-00001-abc")
    with pytest.raises(SuspendUnsupported):
        await a.resume(revision(), "chat-00001-abc")


def sample(m: AutoscalerMetrics, name: str) -> Any:
    return m.registry.get_sample_value(f"torpor_autoscaler_{name}", LABELS)


def test_suspended_replica_seconds_are_counted_apart_from_serving_ones() -> None:
    m = AutoscalerMetrics()
    d = Decision(desired=2, reason="test")
    key = "default/chat-00001"
    m.record(key, d, ready=1, starting=0, draining=0, suspended=1, now=100.0)
    m.record(key, d, ready=1, starting=0, draining=0, suspended=1, now=102.0)
    m.record(key, d, ready=0, starting=0, draining=0, suspended=2, now=105.0)
    assert sample(m, "serving_replica_seconds_total") == 2.0  # 1 replica x 2 s
    assert sample(m, "suspended_replica_seconds_total") == 2.0 + 6.0  # 1 x 2 s + 2 x 3 s
    assert sample(m, "suspended_replicas") == 2
    assert sample(m, "ready_replicas") == 0
    m.forget(key)
    assert sample(m, "suspended_replicas") is None
