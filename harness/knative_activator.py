"""A test harness imitating Knative's activator (knative/serving ``cmd/activator``): not Knative.

Used by the Knative demand poller's tests (``tests/knative/test_demand_http``,
``tests/integration/test_knative_front_door_wake``) and ``benchmarks/knative_wake.py``. It does the
two things of Knative's activator that torpor's Knative demand poller relies on, over real HTTP on
loopback:

- holds every proxied request, the way Knative's activator holds one for a revision at zero,
  identifying the revision by the ``Knative-Serving-Namespace`` / ``Knative-Serving-Revision``
  headers Knative's ingress sets, until the test releases it;
- serves ``/metrics`` in the shape Knative's activator exports with ``metrics-protocol:
  prometheus`` (OTel names through the Prometheus exporter's underscore escaping, with the
  ``otel_scope_*`` labels and ``target_info`` it adds). ``shape`` picks the release: ``"1.22"``
  exports the live ``kn_revision_request_queued``/``_active`` counters and the concurrency gauge,
  ``"1.19"`` only the concurrency gauge (set on arrival here, where Knative sets it at its next
  1 s report tick).
"""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

SCOPE = (
    'otel_scope_name="knative.dev/serving/pkg/activator",'
    'otel_scope_schema_url="",otel_scope_version=""'
)

PREAMBLE = """\
# HELP target_info Target metadata
# TYPE target_info gauge
target_info{k8s_namespace_name="knative-serving",k8s_pod_name="activator-6d9c8b7f5-q2x8z",\
service_name="activator",telemetry_sdk_language="go",telemetry_sdk_name="opentelemetry"} 1
# HELP go_goroutines Number of goroutines that currently exist.
# TYPE go_goroutines gauge
go_goroutines 87
"""


class FakeKnativeActivator:
    """Serves once ``start()``ed; ``arrivals``: (namespace/revision, monotonic time) per request."""

    def __init__(self, shape: Literal["1.22", "1.19"] = "1.22") -> None:
        self.shape = shape
        self._lock = threading.Lock()
        self._held: dict[str, int] = {}
        self._seen: set[str] = set()
        self.release = threading.Event()
        self.arrivals: list[tuple[str, float]] = []
        harness = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/metrics":
                    body = harness.exposition().encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                else:
                    self._hold()

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self._hold()

            def _hold(self) -> None:
                key = (
                    f"{self.headers.get('Knative-Serving-Namespace', '')}/"
                    f"{self.headers.get('Knative-Serving-Revision', '')}"
                )
                harness.arrive(key)
                try:
                    harness.release.wait(30.0)
                finally:
                    harness.leave(key)
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.metrics_url = f"{self.url}/metrics"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> FakeKnativeActivator:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.release.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5.0)

    def arrive(self, key: str) -> None:
        with self._lock:
            self._held[key] = self._held.get(key, 0) + 1
            self._seen.add(key)
            self.arrivals.append((key, time.monotonic()))

    def leave(self, key: str) -> None:
        with self._lock:
            self._held[key] -= 1

    def exposition(self) -> str:
        with self._lock:
            held = {k: self._held.get(k, 0) for k in sorted(self._seen)}
        lines = [PREAMBLE.rstrip("\n")]
        lines += [
            "# HELP kn_revision_request_concurrency Concurrent requests that are routed to "
            "Activator",
            "# TYPE kn_revision_request_concurrency gauge",
        ]
        for key, n in held.items():
            ns, rev = key.split("/", 1)
            svc = rev.rsplit("-", 1)[0]
            lines.append(
                "kn_revision_request_concurrency{"
                f'k8s_namespace_name="{ns}",kn_activator_proxy="true",'
                f'kn_configuration_name="{svc}",kn_revision_name="{rev}",'
                f'kn_service_name="{svc}",{SCOPE}}} {float(n)}'
            )
        if self.shape == "1.22":
            for name, help_ in (
                (
                    "queued",
                    "Number of requests currently queued in the activator waiting for capacity",
                ),
                ("active", "Number of requests currently being proxied by the activator"),
            ):
                lines += [
                    f"# HELP kn_revision_request_{name} {help_}",
                    f"# TYPE kn_revision_request_{name} gauge",
                ]
                for key, n in held.items():
                    ns, rev = key.split("/", 1)
                    value = n if name == "queued" else 0
                    lines.append(
                        f"kn_revision_request_{name}{{"
                        f'k8s_namespace_name="{ns}",kn_revision_name="{rev}",{SCOPE}}} {value}'
                    )
        return "\n".join(lines) + "\n"


class ActivatorSlices:
    """The imitated API server's answer for ``activator-service``'s EndpointSlices: one ready
    endpoint, this harness's address and metrics port (``knative.demand.SliceLister``)."""

    def __init__(self, port: int) -> None:
        self.port = port

    async def list(self, resource: Any, *, label_selector: str | None = None) -> dict[str, Any]:
        return {
            "items": [
                {
                    "metadata": {"namespace": "knative-serving", "name": "activator-service-x"},
                    "ports": [{"name": "http-metrics", "port": self.port}],
                    "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": True}}],
                }
            ]
        }
