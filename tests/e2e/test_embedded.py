"""The embedded slice end to end with real vLLM (CPU): deploy, cold start, call, back to zero."""

from __future__ import annotations

import os
import time

import httpx
import openai
import pytest

from harness.manifests import TINY_CHAT
from harness.platform import Platform

pytestmark = pytest.mark.e2e


def _replica_pids(platform: Platform) -> list[int]:
    """Processes whose command line names this platform's home: replicas and warm standbys."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == platform.process.pid:
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ")
        except OSError:
            continue
        if b"runtime" in cmd and str(platform.home).encode() in cmd:
            pids.append(int(entry))
    return pids


def test_deploy_cold_start_call_and_scale_to_zero(platform: Platform) -> None:
    deployed = platform.cli("deploy", "-f", str(TINY_CHAT))
    assert "tiny-chat-00001" in deployed.stdout

    at_zero = platform.revision("tiny-chat")
    assert at_zero["name"] == "tiny-chat-00001"
    assert (at_zero["desired_replicas"], at_zero["ready_replicas"]) == (0, 0)
    assert at_zero["queued_requests"] == 0

    # Path form, the official client, plain: this request meets the revision at zero.
    path_client = openai.OpenAI(
        base_url=f"{platform.url}/default/tiny-chat/v1",
        api_key="unused",
        max_retries=0,
        timeout=600,
    )
    chat = path_client.chat.completions.create(
        model="tiny-chat", messages=[{"role": "user", "content": "hello"}], max_tokens=8
    )
    assert chat.choices[0].message.content
    assert chat.usage is not None and chat.usage.completion_tokens > 0

    up = platform.revision("tiny-chat")
    assert (up["desired_replicas"], up["ready_replicas"]) == (1, 1)
    [replica_url] = up["replica_urls"]
    assert httpx.get(f"{replica_url}/health", timeout=10).status_code == 200
    # The cold start's phases reach status on the autoscaler's next tick.
    deadline = time.monotonic() + 30
    while up["last_cold_start"] is None and time.monotonic() < deadline:
        time.sleep(0.5)
        up = platform.revision("tiny-chat")
    assert up["last_cold_start"] is not None and up["last_cold_start"]["total_seconds"] > 0

    # Streaming through the same URL.
    stream = path_client.chat.completions.create(
        model="tiny-chat",
        messages=[{"role": "user", "content": "stream please"}],
        max_tokens=8,
        stream=True,
    )
    chunks = [c for c in stream]
    assert len(chunks) > 1
    assert any(c.choices and c.choices[0].delta.content for c in chunks)

    # Host form (the Knative form), legacy completions.
    host_client = openai.OpenAI(
        base_url=f"{platform.url}/v1",
        api_key="unused",
        max_retries=0,
        default_headers={"Host": "tiny-chat.default.example.com"},
    )
    completion = host_client.completions.create(model="tiny-chat", prompt="Once", max_tokens=8)
    assert completion.choices[0].text is not None
    assert completion.usage is not None and completion.usage.completion_tokens > 0

    # An unknown service answers 404 in the OpenAI error shape, naming it.
    missing = httpx.post(f"{platform.url}/default/nope/v1/completions", json={}, timeout=10)
    assert missing.status_code == 404
    assert "nope" in missing.json()["error"]["message"]

    # Idle: the revision goes back to zero and its replica stops listening.
    platform.wait_for("tiny-chat", desired=0, ready=0, timeout_s=180)
    assert platform.revision("tiny-chat")["queued_requests"] == 0
    # The revision shows 0 ready as soon as its replica is draining; the process then finishes
    # vLLM's graceful shutdown (bounded by the drain timeout) and stops listening.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            httpx.get(f"{replica_url}/health", timeout=10)
        except httpx.ConnectError:
            break
        time.sleep(0.5)
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{replica_url}/health", timeout=10)


def test_services_survive_a_restart_and_shutdown_stops_replicas(platform: Platform) -> None:
    platform.cli("deploy", "-f", str(TINY_CHAT))
    client = openai.OpenAI(
        base_url=f"{platform.url}/default/tiny-chat/v1",
        api_key="unused",
        max_retries=0,
        timeout=600,
    )
    client.completions.create(model="tiny-chat", prompt="hi", max_tokens=4)
    assert _replica_pids(platform)

    assert platform.stop() == 0
    assert not _replica_pids(platform), "SIGTERM must stop every replica"

    with Platform.start(platform.home, timeout_s=60) as again:
        row = again.revision("tiny-chat")
        assert row["name"] == "tiny-chat-00001"
        assert (row["desired_replicas"], row["ready_replicas"]) == (0, 0)
        # Re-applying the same manifest makes no new revision.
        assert "unchanged" in again.cli("deploy", "-f", str(TINY_CHAT)).stdout
