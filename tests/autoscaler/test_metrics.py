"""The autoscaler's per-adapter gauge: one series per declared adapter, removed with it."""

from __future__ import annotations

from autoscaler.metrics import AutoscalerMetrics

KEY = "default/base-00001"


def holders(m: AutoscalerMetrics, adapter: str) -> float | None:
    labels = {"namespace": "default", "revision": "base-00001", "adapter": adapter}
    return m.registry.get_sample_value("torpor_autoscaler_adapter_replicas", labels)


def test_adapter_replicas_per_adapter_and_series_go_with_the_adapter() -> None:
    m = AutoscalerMetrics()
    m.record_adapters(KEY, {"sql": 1, "poet": 0})
    assert (holders(m, "sql"), holders(m, "poet")) == (1.0, 0.0)
    m.record_adapters(KEY, {"sql": 2})  # poet no longer declared
    assert (holders(m, "sql"), holders(m, "poet")) == (2.0, None)
    m.forget(KEY)
    assert holders(m, "sql") is None
