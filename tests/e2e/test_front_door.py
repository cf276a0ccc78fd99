"""One URL for every model, with real vLLM (CPU) behind ``torpor up`` and the official client.

Issue 14's acceptance: ``client.models.list()`` at ``<activator>/v1`` lists every deployed model
while every revision stays at zero; a completion naming a model at that URL cold-starts that
model's revision and is answered by it; a streaming request held through a cold start receives
keep-alive comments and the official client still yields its tokens.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from activator.keepalive import COMMENT
from harness.manifests import TINY_CHAT, renamed_tiny_chat
from harness.platform import Platform

pytestmark = pytest.mark.e2e


class _Tee(httpx.HTTPTransport):
    """Records every response body chunk with its arrival time, then hands it to the client."""

    def __init__(self) -> None:
        super().__init__()
        self.chunks: list[tuple[float, bytes]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        chunks = self.chunks
        inner = response.stream

        class Stream(httpx.SyncByteStream):
            def __iter__(self) -> Iterator[bytes]:
                assert isinstance(inner, httpx.SyncByteStream)
                for chunk in inner:
                    chunks.append((time.monotonic(), chunk))
                    yield chunk

            def close(self) -> None:
                assert isinstance(inner, httpx.SyncByteStream)
                inner.close()

        return httpx.Response(
            response.status_code,
            headers=response.headers,
            stream=Stream(),
            extensions=response.extensions,
        )


def _at_rest(platform: Platform) -> None:
    for row in platform.status()["revisions"]:
        assert (row["desired_replicas"], row["ready_replicas"]) == (0, 0), row
        assert row["queued_requests"] == 0 and row["last_cold_start"] is None, row


@pytest.fixture
def cold_platform(home: Path) -> Iterator[Platform]:
    """``torpor up --warm-pool 0``: every cold start imports vLLM (15-35 s here), long enough
    for several keep-alives at the default 5 s interval (with a warm standby it took < 5 s)."""
    p = Platform.start(home, extra=["--warm-pool", "0"], timeout_s=60)
    try:
        yield p
    finally:
        p.stop()
        print(p.log_tail())


def test_one_url_lists_without_waking_and_routes_by_model(
    cold_platform: Platform, tmp_path: Path
) -> None:
    platform = cold_platform
    platform.cli("deploy", "-f", str(TINY_CHAT))
    platform.cli("deploy", "-f", str(renamed_tiny_chat(tmp_path, "tiny-two")))
    _at_rest(platform)

    tee = _Tee()
    client = openai.OpenAI(
        base_url=f"{platform.url}/v1",
        api_key="unused",
        max_retries=0,
        timeout=600,
        http_client=httpx.Client(transport=tee, timeout=600),
    )
    assert sorted(m.id for m in client.models.list()) == ["tiny-chat", "tiny-two"]
    per_service = openai.OpenAI(
        base_url=f"{platform.url}/default/tiny-two/v1", api_key="unused", max_retries=0
    )
    with per_service:
        assert [m.id for m in per_service.models.list()] == ["tiny-two"]
    with client:
        _call_at_the_root(platform, client, tee)


def _call_at_the_root(platform: Platform, client: openai.OpenAI, tee: _Tee) -> None:
    time.sleep(2)  # two autoscaler ticks: a listing that had poked anything would show by now
    _at_rest(platform)

    with pytest.raises(openai.NotFoundError) as unknown:
        client.completions.create(model="gpt-4", prompt="x", max_tokens=1)
    assert "gpt-4" in str(unknown.value)

    # A completion naming tiny-two at the root: its revision cold-starts, the other stays at 0.
    completion = client.completions.create(model="tiny-two", prompt="Hello", max_tokens=4)
    assert completion.model == "tiny-two"
    assert completion.usage is not None and completion.usage.completion_tokens > 0
    assert (
        platform.revision("tiny-two")["ready_replicas"],
        platform.revision("tiny-chat")["ready_replicas"],
    ) == (1, 0)

    # A stream naming tiny-chat, held through its cold start: keep-alive comments, then tokens.
    tee.chunks.clear()
    stream = client.chat.completions.create(
        model="tiny-chat",
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=8,
        stream=True,
    )
    chunks = list(stream)
    assert any(c.choices and c.choices[0].delta.content for c in chunks)
    assert all(c.model == "tiny-chat" for c in chunks)
    comments = [at for at, chunk in tee.chunks if COMMENT in chunk]
    gaps = [round(b - a, 2) for a, b in itertools.pairwise(comments)]
    print(f"keep-alive comments: {len(comments)}, gaps (s): {gaps}")
    assert comments, "a cold start of several seconds passed without a keep-alive"
    # The cold start it waited through is recorded once the runtime's start-up line is read,
    # which may be a moment after the answer (embedded.local_actuator: up to 3 s).
    deadline = time.monotonic() + 30
    while platform.revision("tiny-chat")["last_cold_start"] is None:
        assert time.monotonic() < deadline, "the cold start was never recorded"
        time.sleep(0.2)
