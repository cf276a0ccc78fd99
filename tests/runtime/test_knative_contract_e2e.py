"""Real vLLM (CPU build) run the way Knative runs the runtime image.

Knative sets PORT (and K_SERVICE / K_CONFIGURATION / K_REVISION), probes the paths the manifest
declares, and on scale-down sends SIGTERM to the container's main process only, then waits
`terminationGracePeriodSeconds` (the revision's timeoutSeconds). The image sets TORPOR_CACHE_DIR.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from runtime.contract import PhaseReport, find_startup_report
from runtime.tinymodel import make_tiny_llama
from tests.runtime.test_serve_e2e import free_port, log_tail

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "manifests" / "examples"
pytest.importorskip("vllm")

MAX_TOKENS = 400


def probe_paths() -> set[str]:
    """Every httpGet path a probe in the example manifests asks for."""
    paths: set[str] = set()
    for path in EXAMPLES.glob("*.yaml"):
        doc = yaml.safe_load(path.read_text())
        for c in doc["spec"]["template"]["spec"]["containers"]:
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                if probe in c:
                    paths.add(c[probe]["httpGet"]["path"])
    return paths


def listens_on_all_interfaces(port: int) -> bool:
    """A LISTEN socket on 0.0.0.0:port in /proc/net/tcp (what queue-proxy, on the pod IP, needs)."""
    want = f"00000000:{port:04X}"
    with open("/proc/net/tcp") as f:
        return any(
            line.split()[1] == want and line.split()[3] == "0A" for line in f.readlines()[1:]
        )


def report_in(log: Path) -> PhaseReport | None:
    return find_startup_report(log.read_text(errors="replace")) if log.exists() else None


async def wait_report(log: Path, proc: asyncio.subprocess.Process) -> PhaseReport:
    for _ in range(3000):
        report = report_in(log)
        if report is not None:
            return report
        assert proc.returncode is None, log_tail(log)
        await asyncio.sleep(0.1)
    raise AssertionError("no startup report")


async def stream_through_sigterm(port: int, pid: int) -> tuple[list[dict[str, Any]], bool]:
    """Stream a long completion; SIGTERM the main process after the first chunk."""
    chunks: list[dict[str, Any]] = []
    signalled_mid_stream = False
    body = {
        "model": "tiny",
        "prompt": "Hello",
        "max_tokens": MAX_TOKENS,
        "ignore_eos": True,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    async with (
        httpx.AsyncClient(timeout=120) as c,
        c.stream("POST", f"http://127.0.0.1:{port}/v1/completions", json=body) as r,
    ):
        assert r.status_code == 200
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunks.append(json.loads(line[len("data: "):]))
            if len(chunks) == 1:
                os.kill(pid, signal.SIGTERM)  # as the kubelet: the main process only
                signalled_mid_stream = True
    return chunks, signalled_mid_stream


async def test_knative_container_contract(tmp_path: Path) -> None:
    model = make_tiny_llama(tmp_path / "tiny")
    port = free_port()
    cache = tmp_path / "node-cache"
    token_file = tmp_path / "platform-token"
    token_file.write_text("knative-platform-token\n")
    env = dict(
        os.environ,
        PORT=str(port),
        K_SERVICE="tiny",
        K_CONFIGURATION="tiny",
        K_REVISION="tiny-00001",
        HOSTNAME="tiny-00001-deployment-5d8f7-x2x9q",
        TORPOR_HOME=str(tmp_path / "home"),
        TORPOR_CACHE_DIR=str(cache),
        VLLM_CPU_KVCACHE_SPACE="1",
        PYTHONPATH=str(REPO),
        TORPOR_PLATFORM_TOKEN_FILE=str(token_file),  # a mounted Secret on Knative (issue 23)
    )
    log = tmp_path / "replica.log"
    with log.open("wb") as f:
        # No --host/--port: what the image's entrypoint gets from a Knative manifest.
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "runtime", "serve",
            "--model", str(model), "--served-model-name", "tiny", "--max-model-len", "512",
            stdout=f, stderr=asyncio.subprocess.STDOUT, env=env, start_new_session=True,
            cwd=REPO,
        )  # fmt: skip
    try:
        report = await wait_report(log, proc)
        assert report.replica_id == "tiny-00001-deployment-5d8f7-x2x9q"
        assert (report.service, report.configuration, report.revision) == (
            "tiny", "tiny", "tiny-00001",
        )  # fmt: skip
        assert listens_on_all_interfaces(port)
        assert any((cache / "objects").iterdir())  # weights came through TORPOR_CACHE_DIR
        assert not (tmp_path / "home" / "cache").exists()

        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as c:
            paths = probe_paths()
            assert paths == {"/health"}
            for path in paths:
                assert (await c.get(path)).status_code == 200, path
            assert (await c.get("/metrics")).status_code == 403  # the platform's route
            metrics = (await c.get(
                "/metrics", headers={"X-Torpor-Platform-Token": "knative-platform-token"}
            )).text
        phase_lines = [
            line for line in metrics.splitlines()
            if line.startswith("torpor_runtime_startup_phase_seconds{")
        ]  # fmt: skip
        assert phase_lines and all('revision="tiny-00001"' in line for line in phase_lines)

        chunks, signalled = await stream_through_sigterm(port, proc.pid)
        code = await asyncio.wait_for(proc.wait(), 60)
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
    assert signalled
    # Drained, not aborted: every token of the request in flight at SIGTERM was delivered.
    finish = [ch["choices"][0]["finish_reason"] for ch in chunks if ch.get("choices")]
    assert finish[-1] == "length", log_tail(log)
    usage = chunks[-1]["usage"]
    assert usage["completion_tokens"] == MAX_TOKENS
    assert code == 0, log_tail(log)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # the engine core, had it outlived its parent
