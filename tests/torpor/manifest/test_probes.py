"""``livenessProbe`` -> ``LivenessProbe``: Kubernetes' defaults, both handlers, the port rule.

Bad probes are in the malformed-manifest corpus (tests/data/bad_manifests/liveness-*.yaml).
"""

from __future__ import annotations

from typing import Any

import pytest

from torpor.manifest import ManifestError
from torpor.manifest.probes import parse_liveness
from torpor.spec import LivenessProbe

AT = "spec.template.spec.containers[0]"


def liveness(probe: Any, port: int = 8080) -> LivenessProbe | None:
    return parse_liveness({"livenessProbe": probe}, AT, port)


def test_no_probe_means_none() -> None:
    assert parse_liveness({}, AT, 8080) is None


def test_kubernetes_defaults() -> None:
    assert liveness({"httpGet": {}}) == LivenessProbe("/", 10.0, 1.0, 3, 0.0)
    assert liveness({"tcpSocket": {}}) == LivenessProbe(None, 10.0, 1.0, 3, 0.0)


def test_every_field_is_read() -> None:
    probe = {
        "httpGet": {"path": "/health", "port": 8000, "scheme": "HTTP"},
        "periodSeconds": 15,
        "timeoutSeconds": 5,
        "failureThreshold": 4,
        "initialDelaySeconds": 30,
        "successThreshold": 1,
    }
    assert liveness(probe, port=8000) == LivenessProbe("/health", 15.0, 5.0, 4, 30.0)


@pytest.mark.parametrize(
    ("probe", "field", "message"),
    [
        ({"grpc": {"port": 8080}}, "livenessProbe.grpc", "httpGet or tcpSocket only"),
        ({}, "livenessProbe", "exactly one"),
        ({"tcpSocket": {"port": "http"}}, "livenessProbe.tcpSocket.port", "container's port"),
        ({"httpGet": {}, "failureThreshold": True}, "livenessProbe.failureThreshold", "whole"),
        ({"httpGet": {}, "timeoutSeconds": 99999}, "livenessProbe.timeoutSeconds", "between"),
        ("yes", "livenessProbe", "mapping"),
    ],
)
def test_bad_probes_name_the_field(probe: Any, field: str, message: str) -> None:
    with pytest.raises(ManifestError) as info:
        liveness(probe)
    assert info.value.field == f"{AT}.{field}"
    assert message in str(info.value)
