from __future__ import annotations

from activator.metrics import ActivatorMetrics, RevisionGauges


def test_counts_and_live_gauges_render_in_prometheus_text() -> None:
    gauges = [RevisionGauges("default", "chat", "chat-00001", queued=3, in_flight=2)]
    metrics = ActivatorMetrics(lambda: gauges)
    metrics.count("default", "chat", "chat-00001", 200)
    metrics.count("default", "chat", "chat-00001", 200)
    metrics.wait_seconds.labels("default", "chat", "chat-00001").observe(0.2)
    text = metrics.render().decode()
    labels = 'namespace="default",revision="chat-00001",service="chat"'
    assert f'torpor_activator_requests_total{{code="200",{labels}}} 2.0' in text
    assert f"torpor_activator_queue_depth{{{labels}}} 3.0" in text
    assert f"torpor_activator_in_flight{{{labels}}} 2.0" in text
    assert f'torpor_activator_wait_seconds_bucket{{le="0.5",{labels}}} 1.0' in text


def test_each_activator_has_its_own_registry() -> None:
    a, b = ActivatorMetrics(list), ActivatorMetrics(list)
    a.count("n", "s", "r", 200)
    assert b"requests_total{" not in b.render()
