"""A burst scales tiny-chat to two real vLLM replicas; scaling back down loses no request."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from harness.manifests import TINY_CHAT
from harness.platform import Platform
from harness.sse import sse_lines

pytestmark = pytest.mark.e2e

SERVICE = "burst-chat"


def tiny_chat_variant(
    tmp_path: Path, name: str, target: int, engine_args: tuple[str, ...] = ()
) -> Path:
    """tiny-chat under another name, with this request target, at most 2 replicas, and extra
    vLLM flags passed through the container args like any other engine flag."""
    text = TINY_CHAT.read_text()
    text = text.replace("name: tiny-chat", f"name: {name}")
    text = text.replace(
        'autoscaling.knative.dev/target: "4"', f'autoscaling.knative.dev/target: "{target}"'
    )
    text = text.replace(
        'autoscaling.knative.dev/min-scale: "0"',
        'autoscaling.knative.dev/min-scale: "0"\n        autoscaling.knative.dev/max-scale: "2"',
    )
    for arg in engine_args:
        text = text.replace("- --enforce-eager", f"- --enforce-eager\n            - {arg}")
    assert "max-scale" in text and f'target: "{target}"' in text
    assert all(arg in text for arg in engine_args)
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return path


def burst_manifest(tmp_path: Path) -> Path:
    """A target of 2 in flight and at most 2 replicas."""
    return tiny_chat_variant(tmp_path, SERVICE, target=2)


class Load:
    """Workers sending streaming completions back to back; every outcome is recorded."""

    def __init__(self, url: str, service: str = SERVICE, max_tokens: int = 200) -> None:
        self.url = f"{url}/default/{service}/v1/completions"
        self.max_tokens = max_tokens
        self.ok = 0
        self.failures: list[str] = []
        self._stop: dict[int, asyncio.Event] = {}
        self._tasks: list[asyncio.Task[None]] = []

    def workers(self, n: int) -> None:
        while len(self._tasks) < n:
            i = len(self._tasks)
            self._stop[i] = asyncio.Event()
            self._tasks.append(asyncio.create_task(self._work(i)))

    async def keep(self, n: int) -> None:
        """Let all but the first ``n`` workers finish their current request and stop."""
        for i in range(n, len(self._tasks)):
            self._stop[i].set()

    async def aclose(self) -> None:
        for e in self._stop.values():
            e.set()
        # Every worker finishes before any error surfaces: none is left running.
        results = await asyncio.gather(*self._tasks, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def _work(self, i: int) -> None:
        body = {
            "model": "tiny-chat",
            "prompt": f"worker {i} says",
            "max_tokens": self.max_tokens,
            "ignore_eos": True,
            "stream": True,
        }
        async with httpx.AsyncClient(timeout=httpx.Timeout(600.0)) as client:
            while not self._stop[i].is_set():
                try:
                    async with client.stream("POST", self.url, json=body) as r:
                        if r.status_code != 200:
                            await r.aread()
                            self.failures.append(f"{r.status_code}: {r.text[:300]}")
                            continue
                        done, tokens, error = False, 0, None
                        async for line in sse_lines(r):
                            if line == "data: [DONE]":
                                done = True
                            elif line.startswith("data: "):
                                event = json.loads(line[6:])
                                if "error" in event:  # a typed error inside the stream
                                    error = f"stream error after {tokens} chunks: {event['error']}"
                                    break
                                tokens += bool(event["choices"][0]["text"])
                        if error is not None:
                            self.failures.append(error)
                        elif done:
                            self.ok += 1
                        else:
                            self.failures.append(f"stream cut after {tokens} chunks")
                except httpx.HTTPError as e:
                    self.failures.append(f"{type(e).__name__}: {e}")


async def status(platform: Platform, service: str = SERVICE) -> dict[str, Any]:
    return await asyncio.to_thread(platform.revision, service)


async def wait_until(
    platform: Platform, check: Any, what: str, bound_s: float, service: str = SERVICE
) -> dict[str, Any]:
    deadline = time.monotonic() + bound_s
    row: dict[str, Any] = {}
    while time.monotonic() < deadline:
        row = await status(platform, service)
        if check(row):
            return row
        await asyncio.sleep(1.0)
    raise AssertionError(f"{what} never happened: {row}")


async def test_burst_scales_to_two_and_scale_down_completes_in_flight_requests(
    platform: Platform, tmp_path: Path
) -> None:
    await asyncio.to_thread(platform.cli, "deploy", "-f", str(burst_manifest(tmp_path)))
    load = Load(platform.url)
    try:
        # A burst: six streams back to back against a target of 2 in flight -> max-scale 2.
        load.workers(6)
        await wait_until(platform, lambda r: r["ready_replicas"] == 2, "scale to 2", 400)
        # The burst ends but one stream goes on: the autoscaler drains one replica while
        # requests are in flight on both, and stops it only once its requests are done.
        await load.keep(1)
        await wait_until(
            platform,
            lambda r: (
                r["desired_replicas"] == 1
                and r["ready_replicas"] == 1
                and r["draining_replicas"] == 0
            ),
            "scale down to 1",
            300,
        )
        served_before_idle = load.ok
    finally:
        await load.aclose()
    assert load.failures == [], load.failures[:5]
    assert served_before_idle > 6
    await wait_until(platform, lambda r: r["ready_replicas"] == 0, "scale to zero", 300)


KV_SERVICE = "kv-chat"
KV_BLOCKS = 9  # vLLM keeps one as its null block: 8 x 128 tokens, about two 400-token streams
KV_WORKERS = 6  # far below Knative's request target of 100 x 0.7 in flight per replica


def kv_capped_manifest(tmp_path: Path) -> Path:
    """Knative's default request target and a KV cache capped by vLLM's own
    --num-gpu-blocks-override."""
    return tiny_chat_variant(
        tmp_path, KV_SERVICE, target=100, engine_args=(f"--num-gpu-blocks-override={KV_BLOCKS}",)
    )


async def test_full_kv_cache_scales_out_where_request_count_would_not(
    platform: Platform, tmp_path: Path
) -> None:
    await asyncio.to_thread(platform.cli, "deploy", "-f", str(kv_capped_manifest(tmp_path)))
    load = Load(platform.url, KV_SERVICE, max_tokens=400)
    try:
        # Six long streams: the capped cache runs two, the rest wait inside vLLM. Six in flight
        # is under a request-count target of 70, so only vLLM's own signals can ask for two.
        load.workers(KV_WORKERS)
        row = await wait_until(
            platform, lambda r: r["desired_replicas"] == 2, "scale to 2", 300, KV_SERVICE
        )
        # The autoscaler logs why it decided; the scale-out must be the KV cache's doing.
        log = (platform.home / "torpor-up.log").read_text().splitlines()
        scale_out = [line for line in log if f"{KV_SERVICE}-00001: 1 -> 2" in line]
        assert scale_out and "kv-cache" in scale_out[0], scale_out or log[-20:]
        assert row["in_flight_requests"] + row["queued_requests"] <= KV_WORKERS, row
        await wait_until(
            platform, lambda r: r["ready_replicas"] == 2, "second replica ready", 300, KV_SERVICE
        )
    finally:
        await load.aclose()
    assert load.failures == [], load.failures[:5]
    assert load.ok >= KV_WORKERS
