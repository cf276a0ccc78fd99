"""Manifest variants the fault runs deploy, made from tiny-chat.yaml (harness.manifests)."""

from __future__ import annotations

from pathlib import Path

from harness.manifests import renamed_tiny_chat


def short_timeout_chat(directory: Path, name: str, *, timeout_s: int, min_scale: int) -> Path:
    """tiny-chat as ``name`` with ``timeoutSeconds: timeout_s``, kept at ``min_scale`` replicas.

    The freeze fault stops such a replica for longer than its timeout: requests to it must end
    in a typed timeout, not hang.
    """
    path = renamed_tiny_chat(directory, name)
    text = path.read_text()
    for key in ("min-scale", "initial-scale"):
        old = f'autoscaling.knative.dev/{key}: "0"'
        assert old in text, f"tiny-chat.yaml no longer has {old}"
        text = text.replace(old, f'autoscaling.knative.dev/{key}: "{min_scale}"')
    assert "timeoutSeconds: 300" in text, "tiny-chat.yaml no longer has timeoutSeconds: 300"
    path.write_text(text.replace("timeoutSeconds: 300", f"timeoutSeconds: {timeout_s}"))
    return path
