"""The autoscaler's own Prometheus metrics, one series per revision, in a registry it owns."""

from __future__ import annotations

import contextlib

from prometheus_client import CollectorRegistry, Gauge

from autoscaler.decide import Decision

_LABELS = ("namespace", "revision")


class AutoscalerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(f"torpor_autoscaler_{name}", doc, _LABELS, registry=self.registry)

        self.desired = gauge("desired_replicas", "Replicas the autoscaler wants")
        self.ready = gauge("ready_replicas", "Replicas serving requests")
        self.starting = gauge("starting_replicas", "Replicas launched and not yet ready")
        self.draining = gauge("draining_replicas", "Replicas finishing their requests before stop")
        self.panic = gauge("panic_mode", "1 while the revision is in panic mode")
        self.concurrency = gauge(
            "observed_concurrency", "Load averaged over the stable window, in the spec's metric"
        )
        self.kv_cache = gauge("kv_cache_usage_ratio", "Mean vLLM KV-cache usage over replicas")
        self._all = (
            self.desired,
            self.ready,
            self.starting,
            self.draining,
            self.panic,
            self.concurrency,
            self.kv_cache,
        )

    def record(
        self, key: str, decision: Decision, *, ready: int, starting: int, draining: int
    ) -> None:
        labels = key.split("/", 1)
        self.desired.labels(*labels).set(decision.desired)
        self.ready.labels(*labels).set(ready)
        self.starting.labels(*labels).set(starting)
        self.draining.labels(*labels).set(draining)
        self.panic.labels(*labels).set(1 if decision.panic else 0)
        self.concurrency.labels(*labels).set(decision.observed)
        if decision.kv_cache_usage is not None:
            self.kv_cache.labels(*labels).set(decision.kv_cache_usage)

    def forget(self, key: str) -> None:
        labels = tuple(key.split("/", 1))
        for g in self._all:
            with contextlib.suppress(KeyError):
                g.remove(*labels)
