"""The container's ``livenessProbe`` -> ``LivenessProbe``.

Knative passes probes to the kubelet; the embedded platform runs the liveness probe itself on a
ready replica (``embedded.local_actuator``), so the same manifest means the same thing in both
places. Readiness and startup probes need nothing here: the embedded platform counts a replica
ready once vLLM's ``/health`` answers 200, which is what the example manifests probe.

Supported as Kubernetes defines them: ``httpGet`` (``path``, default ``/``; ``scheme`` HTTP) and
``tcpSocket``, with ``periodSeconds`` (10), ``timeoutSeconds`` (1), ``failureThreshold`` (3) and
``initialDelaySeconds`` (0, counted from ready: Kubernetes starts liveness once a startup probe
has passed). The port, if given, must be the container's port, as Knative requires. ``exec`` and
``grpc`` probes are refused: the embedded platform cannot run them, and a probe it silently
skipped would make the file mean less here than on the cluster.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torpor.manifest.errors import ManifestError
from torpor.manifest.fields import child, expect_mapping, get_int, get_str
from torpor.spec import LivenessProbe

_HANDLERS = ("httpGet", "tcpSocket", "exec", "grpc")
MAX_PROBE_SECONDS = 3600


def parse_liveness(container: Mapping[Any, Any], at: str, port: int) -> LivenessProbe | None:
    """``livenessProbe`` of ``container`` (at ``at``), checked against the container ``port``."""
    raw = container.get("livenessProbe")
    if raw is None:
        return None
    path = child(at, "livenessProbe")
    probe = expect_mapping(raw, path)
    handlers = [h for h in _HANDLERS if probe.get(h) is not None]
    if len(handlers) != 1:
        raise ManifestError(path, "needs exactly one of httpGet or tcpSocket")
    (handler,) = handlers
    if handler in ("exec", "grpc"):
        raise ManifestError(
            child(path, handler),
            "is not supported: the embedded platform probes with httpGet or tcpSocket only",
        )
    spec = expect_mapping(probe[handler], child(path, handler))
    _check_port(spec, child(path, handler), port)
    http_path: str | None = None
    if handler == "httpGet":
        where = child(path, "httpGet")
        scheme = get_str(spec, "scheme", where) or "HTTP"
        if scheme != "HTTP":
            raise ManifestError(child(where, "scheme"), f"must be HTTP, got {scheme!r}")
        http_path = get_str(spec, "path", where) or "/"
        if not http_path.startswith("/") or any(ch.isspace() for ch in http_path):
            raise ManifestError(
                child(where, "path"), f"must be an absolute path, got {http_path!r}"
            )
    success = get_int(probe, "successThreshold", path, low=1, high=1000)
    if success not in (None, 1):
        raise ManifestError(
            child(path, "successThreshold"), f"must be 1 for a liveness probe, got {success}"
        )
    defaults = LivenessProbe()
    return LivenessProbe(
        path=http_path,
        period_s=float(_seconds(probe, "periodSeconds", path) or defaults.period_s),
        timeout_s=float(_seconds(probe, "timeoutSeconds", path) or defaults.timeout_s),
        failure_threshold=get_int(probe, "failureThreshold", path, low=1, high=1000)
        or defaults.failure_threshold,
        initial_delay_s=float(
            get_int(probe, "initialDelaySeconds", path, low=0, high=MAX_PROBE_SECONDS) or 0
        ),
    )


def _seconds(probe: Mapping[Any, Any], key: str, path: str) -> int | None:
    return get_int(probe, key, path, low=1, high=MAX_PROBE_SECONDS)


def _check_port(spec: Mapping[Any, Any], where: str, port: int) -> None:
    given = spec.get("port")
    if given is None:
        return
    if isinstance(given, bool) or not isinstance(given, int) or given != port:
        raise ManifestError(
            child(where, "port"),
            f"must be the container's port ({port}) or left out, got {given!r}",
        )
