"""Spec fields torpor would accept and not honour are refused at deploy, the field named
(issue 22, item 4): Knative's responseStartTimeoutSeconds and idleTimeoutSeconds."""

from __future__ import annotations

from pathlib import Path

import pytest

from knative.revision import revision_spec
from torpor.manifest import ManifestError
from torpor.manifest.parse import parse_service

TINY_CHAT = (Path(__file__).resolve().parents[2] / "manifests/examples/tiny-chat.yaml").read_text()


@pytest.mark.parametrize("field", ["responseStartTimeoutSeconds", "idleTimeoutSeconds"])
def test_torpor_deploy_refuses_the_timeouts_it_does_not_honour(field: str) -> None:
    text = TINY_CHAT.replace(
        "      timeoutSeconds: 300\n", f"      timeoutSeconds: 300\n      {field}: 60\n"
    )
    assert field in text
    with pytest.raises(ManifestError) as info:
        parse_service(text, source="chat.yaml")
    assert info.value.field == f"spec.template.spec.{field}"
    assert "timeoutSeconds alone" in info.value.reason
    parse_service(TINY_CHAT, source="chat.yaml")  # without it: accepted


@pytest.mark.parametrize("field", ["responseStartTimeoutSeconds", "idleTimeoutSeconds"])
def test_on_knative_the_revision_is_refused_with_the_field_named(field: str) -> None:
    pa = {
        "metadata": {"name": "chat-00001", "namespace": "default", "labels": {}},
        "spec": {"scaleTargetRef": {"name": "chat-00001-deployment"}},
    }
    container = {"image": "runtime:cpu", "args": ["--model=hf://tiny/chat"]}
    revision = {"metadata": {}, "spec": {"containers": [container], field: 30}}
    with pytest.raises(ValueError, match=field):
        revision_spec(pa, revision)
    del revision["spec"][field]
    assert revision_spec(pa, revision).ref.name == "chat-00001"
