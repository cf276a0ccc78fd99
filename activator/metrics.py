"""The activator's Prometheus metrics, in its own registry (never the process-global one).

Counts and gauges live in the activator's plain data (queues and a dict of counters) and are read
only when scraped, so the request path pays a dict increment instead of a labelled-metric lookup.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_LABELS = ["namespace", "service", "revision"]
# Waits range from nothing (a ready replica) to a full cold start (tens of seconds on CPU).
_WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300)


class _HasLabels(Protocol):
    @property
    def namespace(self) -> str: ...
    @property
    def service(self) -> str: ...
    @property
    def revision(self) -> str: ...


@dataclass(frozen=True, slots=True)
class RevisionGauges:
    namespace: str
    service: str
    revision: str
    queued: int
    in_flight: int


class _Live(Collector):
    def __init__(
        self,
        requests: dict[tuple[str, str, str, str], int],
        gauges: Callable[[], Iterable[RevisionGauges]],
    ) -> None:
        self._requests = requests
        self._gauges = gauges

    def collect(self) -> Iterator[Metric]:
        total = CounterMetricFamily(
            "torpor_activator_requests",
            "Requests answered by the activator, by revision and status code.",
            labels=[*_LABELS, "code"],
        )
        for labels, count in list(self._requests.items()):
            total.add_metric(list(labels), count)
        queued = GaugeMetricFamily(
            "torpor_activator_queue_depth",
            "Requests held waiting for a replica with room.",
            labels=_LABELS,
        )
        in_flight = GaugeMetricFamily(
            "torpor_activator_in_flight",
            "Requests forwarded to a replica and not yet finished.",
            labels=_LABELS,
        )
        for g in self._gauges():
            queued.add_metric([g.namespace, g.service, g.revision], g.queued)
            in_flight.add_metric([g.namespace, g.service, g.revision], g.in_flight)
        yield total
        yield queued
        yield in_flight


class ActivatorMetrics:
    def __init__(self, gauges: Callable[[], Iterable[RevisionGauges]]) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self._requests: dict[tuple[str, str, str, str], int] = {}
        self.registry.register(_Live(self._requests, gauges))
        self.wait_seconds = Histogram(
            "torpor_activator_wait_seconds",
            "Time a request waited in the activator for a replica with room.",
            _LABELS,
            buckets=_WAIT_BUCKETS,
            registry=self.registry,
        )
        # Labelled children cached per revision: ``labels()`` costs a lock and a dict build.
        self._wait_children: dict[str, Histogram] = {}

    def observe_wait(self, key: str, labels: _HasLabels, seconds: float) -> None:
        child = self._wait_children.get(key)
        if child is None:
            child = self.wait_seconds.labels(labels.namespace, labels.service, labels.revision)
            self._wait_children[key] = child
        child.observe(seconds)

    def count(self, namespace: str, service: str, revision: str, code: int) -> None:
        key = (namespace, service, revision, str(code))
        self._requests[key] = self._requests.get(key, 0) + 1

    def render(self) -> bytes:
        return generate_latest(self.registry)
