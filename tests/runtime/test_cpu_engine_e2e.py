"""Real vLLM (CPU build), issue 21: a replica answers short and long prompts, completion and chat,
in bf16 (a plain start) and in float32 (a warm-pool standby), on the engine path the probe chose
for this machine; vLLM's engine processes say they applied it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from embedded.warmpool import WarmPool
from harness.ports import free_port
from runtime.tinymodel import make_tiny_llama

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]
pytest.importorskip("vllm")

LENGTHS = (1, 4, 64, 500)  # prompt tokens: the crash of issue 21 was on the shortest
PLUGIN_LINE = re.compile(r"torpor cpu engine plugin: attention=(\w+) in pid (\d+)")


def env_for(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ, TORPOR_HOME=str(tmp_path / "home"), VLLM_CPU_KVCACHE_SPACE="1",
               PYTHONPATH=str(REPO))
    for name in ("TORPOR_CPU_ATTN_ISA", "TORPOR_CPU_ENGINE", "TORPOR_ENGINE_CACHE"):
        env.pop(name, None)
    return env


def log_text(log: Path) -> str:
    return log.read_text(errors="replace") if log.exists() else ""


async def wait_startup(log: Path, alive: Any) -> dict[str, Any]:
    for _ in range(3000):
        text = log_text(log)
        for line in text.splitlines():
            if line.startswith("{") and '"startup"' in line:
                return dict(json.loads(line))
        assert alive.returncode is None, text[-3000:]
        await asyncio.sleep(0.1)
    raise AssertionError("no startup line")


def prompts(model: Path) -> dict[int, tuple[list[int], str]]:
    """Per length: token ids for a completion, and a text of about that many for a chat."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(model / "tokenizer.json"))
    words = ("The quick brown fox jumps over the lazy dog. A model that has been asleep wakes "
             "up when a request arrives. ") * 40
    ids = tok.encode(words).ids
    assert len(ids) >= max(LENGTHS)
    return {n: (ids[:n], "Hello" if n == 1 else tok.decode(ids[:n])) for n in LENGTHS}


async def ask_everything(port: int, model: Path) -> None:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=120) as c:
        # The exact request of issue 21 first: the engine's first step on a short prompt.
        first = await c.post("/v1/completions", json={
            "model": "tiny", "prompt": "Hello", "max_tokens": 4, "temperature": 0})
        assert first.status_code == 200, first.text
        for n, (ids, text) in prompts(model).items():
            comp = await c.post("/v1/completions", json={
                "model": "tiny", "prompt": ids, "max_tokens": 2, "temperature": 0})
            assert comp.status_code == 200, (n, comp.text)
            body = comp.json()
            assert body["usage"]["prompt_tokens"] == n
            assert body["usage"]["completion_tokens"] >= 1
            chat = await c.post("/v1/chat/completions", json={
                "model": "tiny", "messages": [{"role": "user", "content": text}],
                "max_tokens": 2, "temperature": 0})
            assert chat.status_code == 200, (n, chat.text)
            body = chat.json()
            assert body["usage"]["prompt_tokens"] >= n
            assert isinstance(body["choices"][0]["message"]["content"], str)


def check_engine_path(log: Path, event: dict[str, Any], replica_pid: int) -> None:
    engine = event.get("engine")
    assert isinstance(engine, str) and engine.startswith("cpu attention="), event
    chosen = engine.split("=", 1)[1].split()[0]
    text = log_text(log)
    applied = {(m.group(1), int(m.group(2))) for m in PLUGIN_LINE.finditer(text)}
    # vLLM's engine core (and its worker) are other processes than the replica's own.
    others = {isa for isa, pid in applied if pid != replica_pid}
    assert others == {chosen}, (engine, applied, text[-3000:])


async def test_bf16_plain_replica_answers_every_length(tmp_path: Path) -> None:
    model = make_tiny_llama(tmp_path / "tiny")
    port = free_port()
    log = tmp_path / "bf16.log"
    with log.open("wb") as f:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "runtime", "serve", "--host", "127.0.0.1", "--port", str(port),
            "--model", str(model), "--served-model-name", "tiny", "--max-model-len", "1024",
            "--dtype", "bfloat16",
            stdout=f, stderr=asyncio.subprocess.STDOUT, env=env_for(tmp_path),
            start_new_session=True, cwd=REPO,
        )
    try:
        event = await wait_startup(log, proc)
        await ask_everything(port, model)
        assert proc.returncode is None, log_text(log)[-3000:]
        check_engine_path(log, event, proc.pid)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 60)


async def test_float32_warm_replica_answers_every_length(tmp_path: Path) -> None:
    model = make_tiny_llama(tmp_path / "tiny")
    pool = WarmPool(1, tmp_path / "home", sys.executable, env=env_for(tmp_path),
                    refill_delay_s=3600)
    try:
        await asyncio.wait_for(pool.wait_ready(), 300)
        sb = await pool.take()
    finally:
        await pool.aclose()
    assert sb is not None
    port = free_port()
    log = tmp_path / "float32.log"
    try:
        with log.open("ab") as f:
            await sb.assign(
                ["--host", "127.0.0.1", "--port", str(port), "--model", str(model),
                 "--served-model-name", "tiny", "--max-model-len", "1024", "--dtype", "float32"],
                {}, f.fileno(), f.fileno())
        event = await wait_startup(log, sb)
        assert event["warm"] is True
        await ask_everything(port, model)
        assert sb.returncode is None, log_text(log)[-3000:]
        check_engine_path(log, event, sb.pid)
    finally:
        sb.signal(signal.SIGTERM)
        await asyncio.wait_for(sb.wait(), 60)
