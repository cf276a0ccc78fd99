"""The autoscaler's own Prometheus metrics, one series per revision, in a registry it owns.

Replica-seconds are counted per tick, serving and suspended apart: a suspended replica holds its
memory (and on Kubernetes its GPU) but no CPU, so it costs something, and never the same thing
as one that serves (issue 17).
"""

from __future__ import annotations

import contextlib

from prometheus_client import CollectorRegistry, Counter, Gauge

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
        self.suspended = gauge(
            "suspended_replicas", "Replicas frozen in place: memory held, no CPU, no traffic"
        )

        def counter(name: str, doc: str) -> Counter:
            return Counter(f"torpor_autoscaler_{name}", doc, _LABELS, registry=self.registry)

        self.serving_seconds = counter(
            "serving_replica_seconds", "Seconds summed over replicas ready, starting or draining"
        )
        self.suspended_seconds = counter(
            "suspended_replica_seconds", "Seconds summed over suspended replicas"
        )
        self.adapter_replicas = Gauge(
            "torpor_autoscaler_adapter_replicas",
            "Replicas holding a LoRA adapter of the revision loaded (0: idle, nowhere loaded)",
            (*_LABELS, "adapter"),
            registry=self.registry,
        )
        self._adapters: dict[str, set[str]] = {}  # revision -> adapters with a series
        self._last: dict[str, float] = {}  # revision -> the previous record's ``now``
        self._all = (
            self.desired,
            self.ready,
            self.starting,
            self.draining,
            self.panic,
            self.concurrency,
            self.kv_cache,
            self.suspended,
            self.serving_seconds,
            self.suspended_seconds,
        )

    def record(
        self,
        key: str,
        decision: Decision,
        *,
        ready: int,
        starting: int,
        draining: int,
        suspended: int = 0,
        now: float | None = None,
    ) -> None:
        """One tick's counts. Given ``now``, the replicas of this tick are charged for the time
        since the previous tick (the counts held over it, as far as a tick can tell)."""
        labels = key.split("/", 1)
        if now is not None:
            before = self._last.get(key)
            self._last[key] = now
            if before is not None and now > before:
                dt = now - before
                self.serving_seconds.labels(*labels).inc((ready + starting + draining) * dt)
                self.suspended_seconds.labels(*labels).inc(suspended * dt)
        self.suspended.labels(*labels).set(suspended)
        self.desired.labels(*labels).set(decision.desired)
        self.ready.labels(*labels).set(ready)
        self.starting.labels(*labels).set(starting)
        self.draining.labels(*labels).set(draining)
        self.panic.labels(*labels).set(1 if decision.panic else 0)
        self.concurrency.labels(*labels).set(decision.observed)
        if decision.kv_cache_usage is not None:
            self.kv_cache.labels(*labels).set(decision.kv_cache_usage)

    def record_adapters(self, key: str, holders: dict[str, int]) -> None:
        """Per declared adapter, how many replicas hold it loaded; an adapter no longer declared
        loses its series."""
        labels = key.split("/", 1)
        for adapter in self._adapters.get(key, set()) - holders.keys():
            with contextlib.suppress(KeyError):
                self.adapter_replicas.remove(*labels, adapter)
        for adapter, n in holders.items():
            self.adapter_replicas.labels(*labels, adapter).set(n)
        self._adapters[key] = set(holders)

    def forget(self, key: str) -> None:
        self._last.pop(key, None)
        self.record_adapters(key, {})
        self._adapters.pop(key, None)
        labels = tuple(key.split("/", 1))
        for g in self._all:
            with contextlib.suppress(KeyError):
                g.remove(*labels)
