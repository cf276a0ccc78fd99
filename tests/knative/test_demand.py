"""Knative's activator as a front door: its metrics parsed, its pods found, the poller's rules."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from knative.demand import (
    ActivatorMetricsError,
    DemandConfig,
    DemandPoller,
    EndpointSliceActivators,
    HeldDemand,
    activator_metrics_urls,
    bus_demand_sink,
    bus_revisions,
    demand_config_from_env,
    parse_activator_metrics,
)
from knative.resources import ENDPOINTSLICES
from tests.autoscaler.fakes import revision, service
from torpor.bus import MemoryBus, Poked

SCOPE = 'otel_scope_name="knative.dev/serving/pkg/activator",otel_scope_version=""'

# Knative >= 1.22 with metrics-protocol: prometheus (labels as its OTel exporter writes them).
V1_22 = f"""\
# HELP target_info Target metadata
# TYPE target_info gauge
target_info{{k8s_namespace_name="knative-serving",service_name="activator"}} 1
# HELP kn_revision_request_concurrency Concurrent requests that are routed to Activator
# TYPE kn_revision_request_concurrency gauge
kn_revision_request_concurrency{{k8s_namespace_name="default",kn_configuration_name="chat",\
kn_revision_name="chat-00001",kn_service_name="chat",{SCOPE}}} 2.6
# HELP kn_revision_request_queued Number of requests currently queued in the activator
# TYPE kn_revision_request_queued gauge
kn_revision_request_queued{{k8s_namespace_name="default",kn_revision_name="chat-00001",{SCOPE}}} 2
kn_revision_request_queued{{k8s_namespace_name="team-a",kn_revision_name="hello-00003",{SCOPE}}} 0
# HELP kn_revision_request_active Number of requests currently being proxied by the activator
# TYPE kn_revision_request_active gauge
kn_revision_request_active{{k8s_namespace_name="default",kn_revision_name="chat-00001",{SCOPE}}} 1
kn_revision_request_active{{k8s_namespace_name="team-a",kn_revision_name="hello-00003",{SCOPE}}} 4
"""

# Knative 1.19-1.21: only the concurrency gauge (held + proxied, 1 s average).
V1_19 = f"""\
# HELP kn_revision_request_concurrency Concurrent requests that are routed to Activator
# TYPE kn_revision_request_concurrency gauge
kn_revision_request_concurrency{{k8s_namespace_name="default",kn_activator_proxy="true",\
kn_configuration_name="chat",kn_revision_name="chat-00001",kn_service_name="chat",{SCOPE}}} 0.4
# HELP http_server_request_body_size_bytes Size of HTTP server request bodies.
# TYPE http_server_request_body_size_bytes histogram
http_server_request_body_size_bytes_bucket{{le="+Inf"}} 3
http_server_request_body_size_bytes_sum 0
http_server_request_body_size_bytes_count 3
"""

# Knative <= 1.18: OpenCensus, "activator_" prefix, one series per activator pod.
V1_18 = """\
# HELP activator_request_concurrency Concurrent requests that are routed to Activator
# TYPE activator_request_concurrency gauge
activator_request_concurrency{configuration_name="chat",container_name="activator",\
namespace_name="default",pod_name="activator-5b8f8d6c9b-x2x7q",revision_name="chat-00001",\
service_name="chat"} 3
"""


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            V1_22,
            {"default/chat-00001": HeldDemand(2, 1), "team-a/hello-00003": HeldDemand(0, 4)},
            id="1.22-exact-counters-win-over-the-gauge",
        ),
        pytest.param(V1_19, {"default/chat-00001": HeldDemand(0.4, 0)}, id="1.19-gauge"),
        pytest.param(V1_18, {"default/chat-00001": HeldDemand(3, 0)}, id="1.18-opencensus"),
        pytest.param("", {}, id="export-on-no-traffic-yet"),
        pytest.param(
            "# TYPE kn_revision_request_queued gauge\n"
            'kn_revision_request_queued{k8s_namespace_name="default"} 5\n'
            'kn_revision_request_queued{kn_revision_name="x-1"} 5\n',
            {},
            id="series-without-namespace-or-revision-ignored",
        ),
        pytest.param(
            "# TYPE kn_revision_request_queued gauge\n"
            'kn_revision_request_queued{k8s_namespace_name="a",kn_revision_name="r",x="1"} 1\n'
            'kn_revision_request_queued{k8s_namespace_name="a",kn_revision_name="r",x="2"} 2\n'
            'kn_revision_request_queued{k8s_namespace_name="b",kn_revision_name="r"} -1\n'
            'kn_revision_request_queued{k8s_namespace_name="c",kn_revision_name="r"} NaN\n',
            {"a/r": HeldDemand(3, 0), "b/r": HeldDemand(0, 0), "c/r": HeldDemand(0, 0)},
            id="series-summed-negative-and-nan-read-as-zero",
        ),
    ],
)
def test_parse_activator_metrics(text: str, expected: dict[str, HeldDemand]) -> None:
    assert parse_activator_metrics(text) == expected


@pytest.mark.parametrize(
    "text", ["<html>502 Bad Gateway</html>\n", "kn_revision_request_queued{k8s_ 1\n"]
)
def test_unreadable_metrics_raise_a_typed_error(text: str) -> None:
    with pytest.raises(ActivatorMetricsError):
        parse_activator_metrics(text)


def _slice(
    namespace: str, endpoints: list[dict[str, Any]], ports: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    return {
        "metadata": {"namespace": namespace, "name": "activator-service-x1"},
        "ports": [{"name": "http-metrics", "port": 9090}, {"name": "http", "port": 8012}]
        if ports is None
        else ports,
        "endpoints": endpoints,
    }


def _ep(address: str, **conditions: bool) -> dict[str, Any]:
    return {"addresses": [address], "conditions": conditions}


@pytest.mark.parametrize(
    ("slices", "urls"),
    [
        pytest.param(
            [_slice("knative-serving", [_ep("10.0.0.7", ready=True), _ep("10.0.1.3")])],
            ["http://10.0.0.7:9090/metrics", "http://10.0.1.3:9090/metrics"],
            id="every-pod",
        ),
        pytest.param(
            [
                _slice(
                    "knative-serving",
                    [
                        _ep("10.0.0.7", ready=False, serving=True, terminating=True),
                        _ep("10.0.0.8", ready=False, serving=False),
                    ],
                )
            ],
            ["http://10.0.0.7:9090/metrics"],
            id="draining-kept-unready-dropped",
        ),
        pytest.param(
            [_slice("other", [_ep("10.9.9.9", ready=True)])], [], id="other-namespace-ignored"
        ),
        pytest.param(
            [_slice("knative-serving", [_ep("fd00::5", ready=True)], ports=[])],
            ["http://[fd00::5]:9090/metrics"],
            id="ipv6-and-default-port",
        ),
        pytest.param(
            [
                _slice(
                    "knative-serving",
                    [_ep("10.0.0.7", ready=True)],
                    ports=[{"name": "http-metrics", "port": 19090}],
                )
            ],
            ["http://10.0.0.7:19090/metrics"],
            id="port-from-the-slice",
        ),
    ],
)
def test_activator_metrics_urls(slices: list[dict[str, Any]], urls: list[str]) -> None:
    found = activator_metrics_urls(
        {"items": slices}, namespace="knative-serving", port_name="http-metrics", default_port=9090
    )
    assert found == urls


class FakeLister:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, str | None]] = []
        self.items: list[dict[str, Any]] = [_slice("knative-serving", [_ep("10.0.0.7")])]

    async def list(self, resource: Any, *, label_selector: str | None = None) -> dict[str, Any]:
        self.calls.append((resource, label_selector))
        return {"items": self.items}


async def test_activator_pods_are_relisted_every_refresh_period_not_every_poll() -> None:
    lister, clock = FakeLister(), [100.0]
    directory = EndpointSliceActivators(lister, refresh_s=10.0, now=lambda: clock[0])
    assert await directory.metrics_urls() == ["http://10.0.0.7:9090/metrics"]
    assert lister.calls == [(ENDPOINTSLICES, "kubernetes.io/service-name=activator-service")]
    lister.items = [_slice("knative-serving", [_ep("10.0.0.8")])]
    clock[0] = 109.0
    assert await directory.metrics_urls() == ["http://10.0.0.7:9090/metrics"]
    clock[0] = 110.0
    assert await directory.metrics_urls() == ["http://10.0.0.8:9090/metrics"]
    assert len(lister.calls) == 2


# -- the poller with fakes -----------------------------------------------------------------------


def _queued(*series: tuple[str, str, float]) -> str:
    lines = ["# TYPE kn_revision_request_queued gauge"]
    lines += [
        f'kn_revision_request_queued{{k8s_namespace_name="{ns}",kn_revision_name="{rev}"}} {n}'
        for ns, rev, n in series
    ]
    return "\n".join(lines) + "\n"


class FakeActivators:
    """Directory and fetcher in one: URL -> exposition text, or an error."""

    def __init__(self, pages: dict[str, str | Exception]) -> None:
        self.pages = pages
        self.directory_error: Exception | None = None

    async def metrics_urls(self) -> Sequence[str]:
        if self.directory_error is not None:
            raise self.directory_error
        return sorted(self.pages)

    async def fetch(self, url: str) -> str:
        page = self.pages[url]
        if isinstance(page, Exception):
            raise page
        return page


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, HeldDemand]] = []

    async def __call__(self, key: str, demand: HeldDemand) -> None:
        self.calls.append((key, demand))


def _poller(
    fake: FakeActivators, ours: Collection[str], recorder: Recorder, asked: list[int] | None = None
) -> DemandPoller:
    async def revisions() -> Collection[str]:
        if asked is not None:
            asked.append(1)
        return ours

    return DemandPoller(fake, fake, revisions, recorder, interval_s=1.0, now=lambda: 0.0)


async def test_demand_is_summed_over_activators_and_other_classes_are_ignored() -> None:
    fake = FakeActivators(
        {
            "a": _queued(("default", "chat-00001", 1), ("default", "kpa-00001", 3)),
            "b": _queued(("default", "chat-00001", 2)),
        }
    )
    recorder = Recorder()
    poller = _poller(fake, {"default/chat-00001"}, recorder)
    assert await poller.poll_once() == {"default/chat-00001": HeldDemand(3, 0)}
    assert recorder.calls == [("default/chat-00001", HeldDemand(3, 0))]


async def test_demand_is_reported_every_poll_and_its_end_once() -> None:
    fake = FakeActivators({"a": _queued(("default", "chat-00001", 1))})
    recorder = Recorder()
    poller = _poller(fake, {"default/chat-00001"}, recorder)
    await poller.poll_once()
    await poller.poll_once()
    fake.pages["a"] = _queued(("default", "chat-00001", 0))
    await poller.poll_once()
    await poller.poll_once()
    assert recorder.calls == [
        ("default/chat-00001", HeldDemand(1, 0)),
        ("default/chat-00001", HeldDemand(1, 0)),
        ("default/chat-00001", HeldDemand()),
    ]


async def test_an_unreadable_activator_is_skipped_and_ends_nothing() -> None:
    fake = FakeActivators(
        {"a": _queued(("default", "chat-00001", 1)), "b": _queued(("default", "chat-00001", 1))}
    )
    recorder = Recorder()
    poller = _poller(fake, {"default/chat-00001"}, recorder)
    await poller.poll_once()
    fake.pages["a"] = ActivatorMetricsError("a: HTTP 503")
    fake.pages["b"] = _queued()
    assert await poller.poll_once() == {}
    assert recorder.calls == [("default/chat-00001", HeldDemand(2, 0))]  # no end declared
    fake.pages["a"] = _queued()
    await poller.poll_once()
    assert recorder.calls[-1] == ("default/chat-00001", HeldDemand())


async def test_a_failing_directory_keeps_the_last_known_activators() -> None:
    fake = FakeActivators({"a": _queued(("default", "chat-00001", 1))})
    recorder = Recorder()
    poller = _poller(fake, {"default/chat-00001"}, recorder)
    await poller.poll_once()
    fake.directory_error = RuntimeError("API server unreachable")
    await poller.poll_once()
    assert len(recorder.calls) == 2


async def test_revisions_are_not_read_while_nothing_is_held() -> None:
    fake = FakeActivators({"a": _queued(("default", "chat-00001", 0))})
    recorder, asked = Recorder(), list[int]()
    poller = _poller(fake, {"default/chat-00001"}, recorder, asked)
    await poller.poll_once()
    assert asked == [] and recorder.calls == []


async def test_a_standby_does_not_scrape() -> None:
    fake = FakeActivators({"a": _queued(("default", "chat-00001", 1))})
    recorder, leading = Recorder(), [False]

    async def ours() -> Collection[str]:
        return {"default/chat-00001"}

    poller = DemandPoller(fake, fake, ours, recorder, now=lambda: 0.0, leader=lambda: leading[0])
    assert await poller.poll_once() == {}
    leading[0] = True
    assert await poller.poll_once() == {"default/chat-00001": HeldDemand(1, 0)}
    assert len(recorder.calls) == 1


def test_a_poller_needs_a_positive_interval() -> None:
    fake = FakeActivators({})
    with pytest.raises(ValueError, match="interval_s"):
        DemandPoller(fake, fake, bus_revisions(MemoryBus()), Recorder(), interval_s=0)


# -- wiring to the bus ---------------------------------------------------------------------------


async def test_the_bus_sink_counts_held_requests_as_queued_and_pokes() -> None:
    bus = MemoryBus()
    events = bus.events().__aiter__()
    sink = bus_demand_sink(bus, clock=lambda: 1000.0)
    await sink("default/chat-00001", HeldDemand(queued=0.4, in_flight=2))
    assert await anext(events) == Poked("default/chat-00001")
    (stats,) = (await bus.snapshot()).stats
    assert (stats.revision, stats.queued, stats.in_flight, stats.at) == (
        "default/chat-00001",
        1,
        2,
        1000.0,
    )
    await sink("default/chat-00001", HeldDemand())  # the end: load cleared, no poke
    (stats,) = (await bus.snapshot()).stats
    assert (stats.queued, stats.in_flight) == (0, 0)


async def test_torpors_revisions_are_those_on_the_bus() -> None:
    bus = MemoryBus()
    await bus.publish_services([service(revision("chat-00001"), revision("chat-00002"))])
    assert set(await bus_revisions(bus)()) == {"default/chat-00001", "default/chat-00002"}


def test_config_from_env() -> None:
    config = demand_config_from_env(
        {"TORPOR_KNATIVE_DEMAND_INTERVAL_S": "0.5", "TORPOR_KNATIVE_NAMESPACE": "kn"}
    )
    assert (config.interval_s, config.scrape_timeout_s, config.namespace) == (0.5, 0.25, "kn")
    assert demand_config_from_env({}).interval_s == 1.0
    for bad in ("0", "-1", "soon", "120"):
        with pytest.raises(ValueError, match="TORPOR_KNATIVE_DEMAND_INTERVAL_S"):
            demand_config_from_env({"TORPOR_KNATIVE_DEMAND_INTERVAL_S": bad})


def test_the_platform_configmap_holds_the_defaults() -> None:
    path = Path(__file__).resolve().parents[2] / "manifests" / "platform" / "config.yaml"
    data = yaml.safe_load(path.read_text())["data"]
    assert demand_config_from_env(data) == DemandConfig()
