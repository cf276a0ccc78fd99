"""The cold-start variants: bare vLLM, torpor's runtime alone, and the whole platform.

Each variant is an async function ``(ctx, run_index) -> RunResult``; add one to ``VARIANTS``. The
runtime_* variants time torpor's runtime directly (spawn or standby assignment to first token);
the torpor_* variants time the platform as a user meets it: a fresh ``torpor up`` per repetition
(``harness.platform.Platform``), the tiny-chat example deployed at zero, and one streamed request
through the activator, timed from the request to its first token. Used by
``benchmarks/coldstart.py`` (CPU, tiny model) and ``benchmarks/gpu/coldstart_gpu.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from embedded.warmpool import WarmPool
from harness.manifests import REPO, TINY_CHAT
from harness.platform import Control, Platform
from harness.ports import free_port

SEGMENTS = (
    "launched",
    "process_started",
    "imports_done",
    "weights_resolved",
    "engine_built",
    "engine_ready",
    "replica_ready",
    "first_token",
)
MANIFEST = TINY_CHAT
# What every process a variant starts gets unless the environment says otherwise.
ENGINE_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "TORPOR_FORK_ENGINE": "1"}


@dataclass
class Context:
    python: str
    model: Path
    work: Path
    engine_args: tuple[str, ...]
    served_name: str = "tiny"
    bare_args: tuple[str, ...] = ("--enforce-eager",)  # what the runtime adds by itself on CPU
    home: Path | None = None  # TORPOR_HOME of the torpor_* variants: model and weight cache


@dataclass
class RunResult:
    variant: str
    run: int
    ready_s: float  # spawn (or assignment) to /health 200, seen by the client
    first_token_s: float  # spawn to the first streamed token
    phases: dict[str, float] = field(default_factory=dict)  # the runtime's own report


async def wait_health(port: int, proc_alive: Callable[[], bool], limit_s: float = 300) -> None:
    deadline = time.monotonic() + limit_s
    async with httpx.AsyncClient(timeout=2) as c:
        while time.monotonic() < deadline:
            if not proc_alive():
                raise RuntimeError("server exited before it was ready")
            with contextlib.suppress(httpx.HTTPError):
                if (await c.get(f"http://127.0.0.1:{port}/health")).status_code == 200:
                    return
            await asyncio.sleep(0.05)
    raise TimeoutError("server not ready")


async def first_token(port: int, model: str, prefix: str = "", timeout_s: float = 60) -> None:
    body = {"model": model, "prompt": "Hello", "max_tokens": 4, "stream": True}
    async with (
        httpx.AsyncClient(timeout=timeout_s) as c,
        c.stream("POST", f"http://127.0.0.1:{port}{prefix}/v1/completions", json=body) as r,
    ):
        r.raise_for_status()
        async for line in r.aiter_lines():
            if line.startswith("data: {"):
                return
    raise RuntimeError("no token streamed")


def startup_phases(log: Path) -> dict[str, float]:
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("{") and '"startup"' in line:
            return dict(json.loads(line)["phases"])
    return {}


async def stop_group(proc: asyncio.subprocess.Process | None, pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    if proc is not None:
        try:
            await asyncio.wait_for(proc.wait(), 20)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            await proc.wait()
    await asyncio.sleep(1)  # let the engine-core child go before the next run starts


def base_env() -> dict[str, str]:
    return {**ENGINE_ENV, **os.environ}


async def _spawned(ctx: Context, variant: str, run: int, argv: list[str]) -> RunResult:
    port = free_port()
    log = ctx.work / f"{variant}-{run}.log"
    t0 = time.time()
    argv = [a.replace("{PORT}", str(port)).replace("{T0}", f"{t0:.6f}") for a in argv]
    with log.open("wb") as f:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdout=f,
            stderr=asyncio.subprocess.STDOUT,
            env=base_env(),
            start_new_session=True,
            cwd=REPO,
        )
    try:
        await wait_health(port, lambda: proc.returncode is None)
        ready = time.time() - t0
        await first_token(port, ctx.served_name)
        tok = time.time() - t0
    finally:
        await stop_group(proc, proc.pid)
    phases = startup_phases(log)
    if phases:
        phases["first_token"] = round(tok, 4)
    return RunResult(variant, run, round(ready, 4), round(tok, 4), phases)


async def bare_vllm(ctx: Context, run: int) -> RunResult:
    argv = [
        ctx.python,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--host",
        "127.0.0.1",
        "--port",
        "{PORT}",
        "--model",
        str(ctx.model),
        "--served-model-name",
        ctx.served_name,
        *ctx.bare_args,
        *ctx.engine_args,
    ]
    return await _spawned(ctx, "bare_vllm", run, argv)


async def runtime_plain(ctx: Context, run: int) -> RunResult:
    argv = [
        ctx.python,
        "-m",
        "runtime",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        "{PORT}",
        "--model",
        str(ctx.model),
        "--served-model-name",
        ctx.served_name,
        "--launched-at",
        "{T0}",
        "--cache-dir",
        str(ctx.work / "cache"),
        *ctx.engine_args,
    ]
    return await _spawned(ctx, "runtime_plain", run, argv)


async def runtime_warm(ctx: Context, run: int) -> RunResult:
    # A pool per run, closed once its standby is taken: on 2 cores a refill importing vLLM
    # would otherwise steal CPU from whichever run comes next.
    pool = WarmPool(1, ctx.work, ctx.python, env=base_env(), refill_delay_s=3600)
    try:
        # The standby's own start-up is paid before the request arrives.
        await asyncio.wait_for(pool.wait_ready(1), 300)
        await asyncio.sleep(2)  # let the standby's import settle off the CPU
        sb = await pool.take()
    finally:
        await pool.aclose()
    assert sb is not None
    port = free_port()
    log = ctx.work / f"runtime_warm-{run}.log"
    t0 = time.time()
    argv = [
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--model",
        str(ctx.model),
        "--served-model-name",
        ctx.served_name,
        "--launched-at",
        f"{t0:.6f}",
        "--cache-dir",
        str(ctx.work / "cache"),
        *ctx.engine_args,
    ]
    with log.open("ab") as f:
        await sb.assign(argv, {}, f.fileno(), f.fileno())
    try:
        await wait_health(port, lambda: sb.returncode is None)
        ready = time.time() - t0
        await first_token(port, ctx.served_name)
        tok = time.time() - t0
    finally:
        await stop_group(sb.process, sb.pid)
    phases = startup_phases(log)
    if phases:
        phases["first_token"] = round(tok, 4)
    return RunResult("runtime_warm", run, round(ready, 4), round(tok, 4), phases)


def _revision_row(doc: dict[str, Any]) -> dict[str, Any] | None:
    rows = [r for r in doc.get("revisions", []) if r["service"] == "tiny-chat"]
    return rows[0] if rows else None


async def _wait_until(pred: Callable[[], Awaitable[bool]], limit_s: float, what: str) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if await pred():
                return
        await asyncio.sleep(0.1)
    raise TimeoutError(what)


async def _torpor(ctx: Context, variant: str, run: int, warm_pool: int) -> RunResult:
    """A fresh ``torpor up`` (``harness.platform``), tiny-chat deployed at zero, one request."""
    assert ctx.home is not None
    platform = await asyncio.to_thread(
        Platform.start, ctx.home, extra=("--warm-pool", str(warm_pool)), timeout_s=120
    )
    try:
        async with Control(platform) as control:
            await control.deploy(MANIFEST)
            if warm_pool:
                # The pool's steady state: a standby has paid for its imports before the request.
                async def pool_ready() -> bool:
                    return int((await control.status())["warm_pool"]["ready"]) >= 1

                await _wait_until(pool_ready, 300, "no standby became ready")
                await asyncio.sleep(2)  # let the standby's import settle off the CPU
            row = _revision_row(await control.status())
            # A genuine request at zero: nothing ready or starting, and no earlier cold start.
            assert row is not None and row["ready_replicas"] == 0, row
            assert row["starting_replicas"] == 0 and row["last_cold_start"] is None, row
            t0 = time.time()
            await first_token(platform.port, "tiny-chat", "/default/tiny-chat", timeout_s=300)
            tok = time.time() - t0

            async def cold_start_known() -> bool:
                row = _revision_row(await control.status())
                return row is not None and bool((row["last_cold_start"] or {}).get("phases"))

            await _wait_until(cold_start_known, 30, "no cold start reported")
            row = _revision_row(await control.status())
            assert row is not None
            cold = row["last_cold_start"]
            with contextlib.suppress(httpx.HTTPError):
                await control.delete("default", "tiny-chat")
    finally:
        # One SIGTERM: `torpor up` stops its servers, every replica and the pool's standbys.
        await asyncio.to_thread(platform.stop)
        await asyncio.sleep(1)
    if bool(cold["warm"]) != bool(warm_pool):
        raise RuntimeError(f"{variant}: cold start warm={cold['warm']}, expected {bool(warm_pool)}")
    # Everything on the request's clock: the replica's phases are seconds since its launch.
    launched = float(cold["started_at"]) - t0
    phases = {"launched": round(launched, 4)}
    phases.update(
        {k: round(float(v) + launched, 4) for k, v in cold["phases"].items() if k != "first_token"}
    )  # the client's first token is the one timed here
    ready = launched + float(cold["total_seconds"])
    phases["replica_ready"] = round(ready, 4)
    phases["first_token"] = round(tok, 4)
    return RunResult(variant, run, round(ready, 4), round(tok, 4), phases)


async def torpor_plain(ctx: Context, run: int) -> RunResult:
    return await _torpor(ctx, "torpor_plain", run, warm_pool=0)


async def torpor_warm(ctx: Context, run: int) -> RunResult:
    return await _torpor(ctx, "torpor_warm", run, warm_pool=1)


async def torpor_suspended(ctx: Context, run: int) -> RunResult:
    """A request at a revision whose only replica is suspended (issue 17), to its first token:
    a fresh ``torpor up``, tiny-chat with ``torpor.dev/suspend-after: 3s`` cold-started by one
    request, left idle until ``torpor status`` shows it suspended, then the request timed. The
    wake is the autoscaler's poke, SIGCONT to the replica's process group, /health, publishing."""
    from harness.coldstart.suspended import suspended_first_token

    assert ctx.home is not None
    platform = await asyncio.to_thread(
        Platform.start, ctx.home, extra=("--warm-pool", "0"), timeout_s=120
    )
    try:
        wake, _ = await suspended_first_token(platform, ctx.work, first_token)
    finally:
        await asyncio.to_thread(platform.stop)
        await asyncio.sleep(1)
    return RunResult("torpor_suspended", run, round(wake, 4), round(wake, 4), {})


VARIANTS: dict[str, Callable[[Context, int], Awaitable[RunResult]]] = {
    "bare_vllm": bare_vllm,
    "runtime_plain": runtime_plain,
    "runtime_warm": runtime_warm,
    "torpor_plain": torpor_plain,
    "torpor_warm": torpor_warm,
    "torpor_suspended": torpor_suspended,
}


async def run_variants(ctx: Context, variants: list[str], runs: int) -> list[RunResult]:
    """``runs`` rounds of ``variants``, interleaved, so a noisy minute hurts every variant alike.

    ``torpor up`` (``embedded.child``) inherits this process's environment: ``ENGINE_ENV`` is
    set here, where the environment does not set it, as the spawned variants get it.
    """
    for key, value in ENGINE_ENV.items():
        os.environ.setdefault(key, value)
    results: list[RunResult] = []
    for run in range(runs):
        for v in variants:
            r = await VARIANTS[v](ctx, run)
            print(json.dumps(asdict(r)), flush=True)
            results.append(r)
    return results
