"""Knative's own front door: requests that Knative's activator holds for a torpor revision.

A revision of torpor's PodAutoscaler class that sits at zero is still reachable at the URL
``kubectl get ksvc`` prints: Knative's ingress sends its requests to Knative's activator, which
holds them. Knative's activator reports what it holds to Knative's autoscaler only (a websocket
stat stream the KPA reads; other classes get nothing), and as OpenTelemetry metrics that
``config-observability`` can expose for Prometheus on each activator pod (port 9090). This
module scrapes those metrics from every activator pod each ``interval_s`` and hands the held
demand of every torpor revision to a callback, which wakes the revision and counts the demand
as queued load (``bus_demand_sink``).

What Knative exports, by release (knative/serving, read 2026-11-30):

- >= 1.22: ``kn_revision_request_queued`` (requests waiting for capacity) and
  ``kn_revision_request_active`` (requests being proxied), OTel UpDownCounters moved the moment a
  request arrives or leaves (``pkg/activator/handler/metrics.go``, ``handler.go``). Exact.
- >= 1.19: ``kn_revision_request_concurrency``, an OTel gauge of the average concurrency over the
  activator's last 1 s report period (``concurrency_reporter.go``, ``reportInterval``): held *and*
  proxied requests, set at the next 1 s tick after the first request arrives.
- <= 1.18: ``activator_request_concurrency`` (OpenCensus), the same quantity with labels
  ``namespace_name``/``revision_name``, exported every 5 s by default.

OTel names reach Prometheus through ``otlptranslator.UnderscoreEscapingWithSuffixes`` (knative.dev
/pkg ``observability/metrics/prometheus_enabled.go``): dots become underscores, the ``{request}``
unit is an annotation and adds no suffix, and UpDownCounters are gauges (no ``_total``). Labels:
``k8s_namespace_name``, ``kn_revision_name`` (plus service, configuration and ``otel_scope_*``).

The delay from a request reaching Knative's activator to the callback is at most ``interval_s``
plus one scrape (``scrape_timeout_s`` bounds it) on >= 1.22; before 1.22 add up to 1 s for the
activator's own report tick (5 s on <= 1.18). Measured on loopback against the harness that
imitates Knative's activator (harness/knative_activator.py, 2 shared
cores), request arrival to callback at ``interval_s=1.0``: 0.53 s mean, 1.00 s worst of 20
requests; one scrape and parse: 2.4 ms median, 17 ms worst of 50.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import httpx
from prometheus_client.parser import text_string_to_metric_families

from knative.resources import ENDPOINTSLICES
from torpor.bus.base import ActivatorStats, Bus

log = logging.getLogger(__name__)
Json = dict[str, Any]

# Knative >= 1.22: exact, moved as requests arrive and leave.
QUEUED = "kn_revision_request_queued"
ACTIVE = "kn_revision_request_active"
# Knative >= 1.19: held + proxied, averaged over the activator's 1 s report period.
CONCURRENCY = "kn_revision_request_concurrency"
# Knative <= 1.18 (OpenCensus exporter, "activator" namespace prefix).
CONCURRENCY_OPENCENSUS = "activator_request_concurrency"

_OTEL_LABELS = ("k8s_namespace_name", "kn_revision_name")
_OPENCENSUS_LABELS = ("namespace_name", "revision_name")

SERVICE_NAME_LABEL = "kubernetes.io/service-name"  # set on every EndpointSlice of a Service


class ActivatorMetricsError(Exception):
    """An activator's metrics could not be read (unreachable, not 200, not Prometheus text)."""


@dataclass(frozen=True, slots=True)
class HeldDemand:
    """One revision's requests at Knative's activators.

    ``queued`` waits for a replica with room: this is what must wake the revision. ``in_flight``
    is being proxied to a replica. Before Knative 1.22 the two cannot be told apart and the whole
    concurrency is reported as ``queued`` (it is all held while the revision is at zero).
    """

    queued: float = 0.0
    in_flight: float = 0.0

    @property
    def total(self) -> float:
        return self.queued + self.in_flight

    def __add__(self, other: HeldDemand) -> HeldDemand:
        return HeldDemand(self.queued + other.queued, self.in_flight + other.in_flight)


def _key(labels: Mapping[str, str], names: tuple[str, str]) -> str | None:
    namespace, revision = (labels.get(n, "") for n in names)
    return f"{namespace}/{revision}" if namespace and revision else None


def parse_activator_metrics(text: str) -> dict[str, HeldDemand]:
    """Held demand per revision key (``namespace/name``) in one activator's exposition.

    A revision with the exact >= 1.22 series is read from them; otherwise from the concurrency
    gauge (either name). Series of one revision are summed; negatives read as zero. Raises
    ``ActivatorMetricsError`` when the text is not Prometheus exposition.
    """
    exact: dict[str, HeldDemand] = {}
    approx: dict[str, float] = {}
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                name, labels = sample.name, sample.labels
                value = max(0.0, float(sample.value))  # NaN reads as 0 too
                if name in (QUEUED, ACTIVE):
                    key = _key(labels, _OTEL_LABELS)
                    if key is not None:
                        add = HeldDemand(value, 0.0) if name == QUEUED else HeldDemand(0.0, value)
                        exact[key] = exact.get(key, HeldDemand()) + add
                elif name in (CONCURRENCY, CONCURRENCY_OPENCENSUS):
                    names = _OTEL_LABELS if name == CONCURRENCY else _OPENCENSUS_LABELS
                    key = _key(labels, names)
                    if key is not None:
                        approx[key] = approx.get(key, 0.0) + value
    except (ValueError, TypeError, IndexError) as exc:
        raise ActivatorMetricsError(f"not Prometheus text exposition: {exc}") from exc
    out = {key: HeldDemand(queued=value) for key, value in approx.items()}
    out.update(exact)
    return out


def activator_metrics_urls(
    slices: Json, *, namespace: str, port_name: str, default_port: int
) -> list[str]:
    """``http://<pod-ip>:<port>/metrics`` of every activator pod in an EndpointSlice list.

    Pods that are terminating but still serving count: a draining activator may still hold
    requests. The port is the slice's port named ``port_name`` (the Service's ``http-metrics``),
    else ``default_port``.
    """
    urls: set[str] = set()
    for s in slices.get("items") or ():
        meta = s.get("metadata") or {}
        if meta.get("namespace") != namespace:
            continue
        ports = {p.get("name"): p.get("port") for p in s.get("ports") or () if p.get("port")}
        port = ports.get(port_name) or default_port
        for endpoint in s.get("endpoints") or ():
            conditions = endpoint.get("conditions") or {}
            if conditions.get("ready") is False and conditions.get("serving") is not True:
                continue
            for address in endpoint.get("addresses") or ():
                host = f"[{address}]" if ":" in address else address
                urls.add(f"http://{host}:{port}/metrics")
    return sorted(urls)


# -- seams ---------------------------------------------------------------------------------------


class MetricsFetcher(Protocol):
    async def fetch(self, url: str) -> str:
        """The exposition text at ``url``; ``ActivatorMetricsError`` when it cannot be read."""
        ...


class ActivatorDirectory(Protocol):
    async def metrics_urls(self) -> Sequence[str]:
        """Every Knative activator pod's metrics URL (may raise; the poller keeps the last)."""
        ...


class SliceLister(Protocol):
    """What ``EndpointSliceActivators`` needs; ``knative.kube.Kube`` has it."""

    async def list(self, resource: Any, *, label_selector: str | None = None) -> Json: ...


OnDemand = Callable[[str, HeldDemand], Awaitable[None]]
Revisions = Callable[[], Awaitable[Collection[str]]]


# -- real parts ----------------------------------------------------------------------------------


class HttpMetricsFetcher:
    """GETs an activator's ``/metrics`` with a short timeout over one connection pool."""

    def __init__(self, *, timeout_s: float = 0.5, client: httpx.AsyncClient | None = None) -> None:
        # Asking for the classic text format: promhttp would answer OpenMetrics if asked.
        self._client = client or httpx.AsyncClient(
            timeout=timeout_s, headers={"Accept": "text/plain;version=0.0.4"}
        )
        self._owns_client = client is None

    async def fetch(self, url: str) -> str:
        try:
            response = await self._client.get(url)
        except httpx.HTTPError as exc:
            raise ActivatorMetricsError(f"{url}: {type(exc).__name__}: {exc}") from exc
        if response.status_code != 200:
            raise ActivatorMetricsError(f"{url}: HTTP {response.status_code}")
        return response.text

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()


class EndpointSliceActivators:
    """Knative's activator pods from the EndpointSlices of ``activator-service``.

    Relisted every ``refresh_s`` rather than each poll: activator pods come and go rarely, and a
    LIST each second would be a quorum read of etcd for nothing.
    """

    def __init__(
        self,
        api: SliceLister,
        *,
        namespace: str = "knative-serving",
        service: str = "activator-service",
        port_name: str = "http-metrics",
        default_port: int = 9090,
        refresh_s: float = 10.0,
        now: Callable[[], float] = time.monotonic,
    ) -> None:
        self._api = api
        self._namespace = namespace
        self._service = service
        self._port_name = port_name
        self._default_port = default_port
        self._refresh_s = refresh_s
        self._now = now
        self._urls: list[str] = []
        self._listed_at: float | None = None

    async def metrics_urls(self) -> Sequence[str]:
        now = self._now()
        if self._listed_at is None or now - self._listed_at >= self._refresh_s:
            slices = await self._api.list(
                ENDPOINTSLICES, label_selector=f"{SERVICE_NAME_LABEL}={self._service}"
            )
            self._urls = activator_metrics_urls(
                slices,
                namespace=self._namespace,
                port_name=self._port_name,
                default_port=self._default_port,
            )
            self._listed_at = now
        return self._urls


# -- the poller ----------------------------------------------------------------------------------


class DemandPoller:
    """Scrapes every Knative activator each ``interval_s`` and reports torpor revisions' demand.

    ``on_demand(key, demand)`` is awaited for every revision in ``revisions()`` whose summed
    demand is above zero, every poll, and once with ``HeldDemand()`` when that demand ends (so a
    sink that counts it as load clears it at once instead of waiting for it to go stale). While
    an activator cannot be read, no demand is declared ended. A standby (``leader()`` false)
    skips its rounds.

    ``interval_s`` defaults to 1 s: the activator's own concurrency gauge moves once a second,
    so polling faster gains nothing before Knative 1.22, and a second is small next to a cold
    start (~5 s from the warm pool, ~30 s bare) while a scrape of a few activators each second
    costs them next to nothing.
    """

    def __init__(
        self,
        directory: ActivatorDirectory,
        fetcher: MetricsFetcher,
        revisions: Revisions,
        on_demand: OnDemand,
        *,
        interval_s: float = 1.0,
        now: Callable[[], float] = time.monotonic,
        leader: Callable[[], bool] = lambda: True,
    ) -> None:
        if not interval_s > 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s!r}")
        self._directory = directory
        self._fetcher = fetcher
        self._revisions = revisions
        self._on_demand = on_demand
        self.interval_s = interval_s
        self._now = now
        self._leader = leader
        self._urls: Sequence[str] = ()
        self._reported: set[str] = set()
        self._failing: set[str] = set()  # URLs whose last scrape failed (logged once)

    async def poll_once(self) -> dict[str, HeldDemand]:
        """One round: scrape, sum per revision, call back. Returns what was reported."""
        if not self._leader():
            # Only the acting autoscaler scrapes: a standby's pokes would reach the leader
            # anyway, and would only multiply the load on Knative's activators.
            return {}
        try:
            self._urls = list(await self._directory.metrics_urls())
        except Exception:
            log.exception("listing Knative's activators failed; scraping the last known ones")
        results = await asyncio.gather(*(self._scrape(u) for u in self._urls))
        complete = all(r is not None for r in results)
        held: dict[str, HeldDemand] = {}
        for one in results:
            for key, demand in (one or {}).items():
                held[key] = held.get(key, HeldDemand()) + demand
        active = {k: d for k, d in held.items() if d.total > 0}
        if not active and not self._reported:
            return {}  # nothing held anywhere: no need to ask which revisions are torpor's
        ours = set(await self._revisions())
        report = {k: d for k, d in active.items() if k in ours}
        ended = self._reported - report.keys() if complete else set()
        for key, demand in sorted(report.items()):
            await self._on_demand(key, demand)
        for key in sorted(ended):
            await self._on_demand(key, HeldDemand())
        self._reported = (self._reported - ended) | report.keys()
        return report

    async def _scrape(self, url: str) -> dict[str, HeldDemand] | None:
        try:
            parsed = parse_activator_metrics(await self._fetcher.fetch(url))
        except ActivatorMetricsError as exc:
            if url not in self._failing:
                log.warning("Knative activator metrics unreadable: %s", exc)
                self._failing.add(url)
            return None
        self._failing.discard(url)
        return parsed

    async def run(self) -> None:
        """Poll until cancelled; a failing round is logged and the next one runs on time."""
        while True:
            started = self._now()
            try:
                await self.poll_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("Knative demand poll failed")
            await asyncio.sleep(max(0.0, self.interval_s - (self._now() - started)))


# -- wiring --------------------------------------------------------------------------------------


def bus_demand_sink(
    bus: Bus, *, activator_id: str = "knative-activator", clock: Callable[[], float] = time.time
) -> OnDemand:
    """An ``on_demand`` that counts Knative's held requests as an activator's stats on the bus
    (the autoscaler sums them into ``activator_queued``/``activator_in_flight``, so ``decide()``
    sizes for them) and pokes the revision while any is queued (a tick at once; at zero the
    "poked at zero" rule starts a replica). A fractional average counts as a whole request."""

    async def sink(key: str, demand: HeldDemand) -> None:
        stats = ActivatorStats(
            activator_id=activator_id,
            revision=key,
            queued=math.ceil(demand.queued),
            in_flight=math.ceil(demand.in_flight),
            at=clock(),
        )
        await bus.publish_stats([stats])
        if demand.queued > 0:
            await bus.poke(key)

    return sink


def bus_revisions(bus: Bus) -> Revisions:
    """torpor's revisions: the Knative controller publishes only torpor-class ones on the bus."""

    async def revisions() -> Collection[str]:
        snapshot = await bus.snapshot()
        return {r.ref.key for s in snapshot.services for r in s.revisions}

    return revisions


@dataclass(frozen=True, slots=True)
class DemandConfig:
    namespace: str = "knative-serving"
    service: str = "activator-service"
    port_name: str = "http-metrics"
    default_port: int = 9090
    interval_s: float = 1.0
    scrape_timeout_s: float = 0.5
    refresh_s: float = 10.0


def demand_config_from_env(env: Mapping[str, str]) -> DemandConfig:
    """``TORPOR_KNATIVE_NAMESPACE``, ``TORPOR_KNATIVE_ACTIVATOR_SERVICE``,
    ``TORPOR_KNATIVE_DEMAND_INTERVAL_S`` (ConfigMap ``torpor-defaults``); bad values raise."""
    d = DemandConfig()
    try:
        interval = float(env.get("TORPOR_KNATIVE_DEMAND_INTERVAL_S", d.interval_s))
    except ValueError:
        raise ValueError("TORPOR_KNATIVE_DEMAND_INTERVAL_S must be a number of seconds") from None
    if not 0 < interval <= 60:
        raise ValueError(f"TORPOR_KNATIVE_DEMAND_INTERVAL_S must be in (0, 60], got {interval}")
    return DemandConfig(
        namespace=env.get("TORPOR_KNATIVE_NAMESPACE", d.namespace) or d.namespace,
        service=env.get("TORPOR_KNATIVE_ACTIVATOR_SERVICE", d.service) or d.service,
        interval_s=interval,
        # A scrape must end before the next round is due.
        scrape_timeout_s=min(d.scrape_timeout_s, interval / 2),
    )


@contextlib.asynccontextmanager
async def knative_demand(
    bus: Bus,
    config: DemandConfig,
    kube: SliceLister,
    *,
    leader: Callable[[], bool] = lambda: True,
) -> AsyncIterator[DemandPoller]:
    """The poller running, wired to the bus, for as long as the block lasts:
    ``async with knative_demand(bus, demand_config_from_env(os.environ), kube, leader=...)``
    around the autoscaler. ``kube`` (``knative.kube.Kube``) needs ``list`` on ``endpointslices``
    in ``config.namespace``."""
    fetcher = HttpMetricsFetcher(timeout_s=config.scrape_timeout_s)
    directory = EndpointSliceActivators(
        kube,
        namespace=config.namespace,
        service=config.service,
        port_name=config.port_name,
        default_port=config.default_port,
        refresh_s=config.refresh_s,
    )
    poller = DemandPoller(
        directory,
        fetcher,
        bus_revisions(bus),
        bus_demand_sink(bus),
        interval_s=config.interval_s,
        leader=leader,
    )
    task = asyncio.create_task(poller.run(), name="knative-demand")
    try:
        yield poller
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await fetcher.aclose()
