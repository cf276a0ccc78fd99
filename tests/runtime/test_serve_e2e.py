"""Real vLLM (CPU build): a plain replica and a warm-pool replica answer the same requests."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from pathlib import Path

import httpx
import pytest

from embedded.warmpool import WarmPool
from harness.ports import free_port
from runtime.tinymodel import make_tiny_llama

pytestmark = pytest.mark.e2e
TOKEN = "e2e-platform-token"
PLATFORM_HEADER = "X-Torpor-Platform-Token"
REPO = Path(__file__).resolve().parents[2]
pytest.importorskip("vllm")


def startup_event(log: Path) -> dict[str, object] | None:
    if not log.exists():
        return None
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("{") and '"startup"' in line:
            return dict(json.loads(line))
    return None


def log_tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:]


async def wait_startup(log: Path, alive: object) -> dict[str, object]:
    for _ in range(3000):
        event = startup_event(log)
        if event:
            return event
        assert getattr(alive, "returncode", None) is None, log_tail(log)
        await asyncio.sleep(0.1)
    raise AssertionError("no startup line")


async def ask(port: int) -> tuple[str, str, str]:
    base = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient(base_url=base, timeout=60) as c:
        assert (await c.get("/health")).status_code == 200
        comp = (
            await c.post(
                "/v1/completions",
                json={"model": "tiny", "prompt": "Hello", "max_tokens": 8, "temperature": 0},
            )
        ).json()
        chat = (
            await c.post(
                "/v1/chat/completions",
                json={
                    "model": "tiny",
                    "messages": [{"role": "user", "content": "hi"}],
                    "max_tokens": 8,
                    "temperature": 0,
                },
            )
        ).json()
        # /metrics is a platform route (issue 23): refused without the replica's credential.
        assert (await c.get("/metrics")).status_code == 403
        metrics = (await c.get("/metrics", headers={PLATFORM_HEADER: TOKEN})).text
    assert 'torpor_runtime_startup_phase_seconds{phase="engine_ready"}' in metrics
    assert "vllm:num_requests_running" in metrics
    return comp["choices"][0]["text"], chat["choices"][0]["message"]["content"], metrics


def env_for(tmp_path: Path) -> dict[str, str]:
    return dict(
        os.environ,
        TORPOR_HOME=str(tmp_path / "home"),
        VLLM_CPU_KVCACHE_SPACE="1",
        PYTHONPATH=str(REPO),
        TORPOR_PLATFORM_TOKEN=TOKEN,
    )


async def test_plain_and_warm_replicas_answer_alike(tmp_path: Path) -> None:
    model = make_tiny_llama(tmp_path / "tiny")
    common = [
        "--host",
        "127.0.0.1",
        "--model",
        str(model),
        "--served-model-name",
        "tiny",
        "--max-model-len",
        "512",
    ]

    port = free_port()
    plain_log = tmp_path / "plain.log"
    with plain_log.open("wb") as f:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "runtime",
            "serve",
            *common,
            "--port",
            str(port),
            "--replica-id",
            "plain-1",
            stdout=f,
            stderr=asyncio.subprocess.STDOUT,
            env=env_for(tmp_path),
            start_new_session=True,
            cwd=REPO,
        )
    try:
        event = await wait_startup(plain_log, proc)
        assert event["replica_id"] == "plain-1" and event["warm"] is False
        phases = event["phases"]
        assert isinstance(phases, dict)
        assert list(phases) == [
            "process_started",
            "imports_done",
            "weights_resolved",
            "engine_built",
            "engine_ready",
        ]
        assert list(phases.values()) == sorted(phases.values())
        plain = await ask(port)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        code = await asyncio.wait_for(proc.wait(), 30)  # graceful: vLLM's own shutdown
    assert code == 0

    pool = WarmPool(
        1, tmp_path / "home", sys.executable, env=env_for(tmp_path), refill_delay_s=3600
    )
    try:
        await asyncio.wait_for(pool.wait_ready(), 300)
        sb = await pool.take()
    finally:
        await pool.aclose()
    assert sb is not None
    port = free_port()
    warm_log = tmp_path / "warm.log"
    try:
        with warm_log.open("ab") as f:
            await sb.assign(
                [*common, "--port", str(port), "--replica-id", "warm-1"], {}, f.fileno(), f.fileno()
            )
        event = await wait_startup(warm_log, sb)
        assert event["replica_id"] == "warm-1" and event["warm"] is True
        warm = await ask(port)
    finally:
        sb.signal(signal.SIGTERM)
        await asyncio.wait_for(sb.wait(), 30)
    assert warm[:2] == plain[:2]  # same weights, greedy: the same words
