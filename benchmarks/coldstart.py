"""Cold start to first token: bare vLLM vs torpor, its runtime alone and the whole platform.

    flock /tmp/torpor-vllm.lock .venv/bin/python benchmarks/coldstart.py --runs 3

Each variant is an async function `(ctx, run_index) -> RunResult`; add one to VARIANTS. The
runtime_* variants time torpor's runtime directly (spawn or standby assignment to first token);
the torpor_* variants time the platform as a user meets it: a fresh `torpor up` per repetition,
the tiny-chat example deployed at zero, and one streamed request through the activator, timed
from the request to its first token. Writes coldstart.json, coldstart.md and coldstart.png under
benchmarks/results/.
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
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from autoscaler.actuators.warmpool import WarmPool  # noqa: E402

SEGMENTS = ("launched", "process_started", "imports_done", "weights_resolved", "engine_built",
            "engine_ready", "replica_ready", "first_token")
MANIFEST = ROOT / "manifests/examples/tiny-chat.yaml"


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


async def first_token(port: int, model: str, prefix: str = "", timeout_s: float = 60) -> None:
    body = {"model": model, "prompt": "Hello", "max_tokens": 4, "stream": True}
    async with httpx.AsyncClient(timeout=timeout_s) as c, c.stream(
        "POST", f"http://127.0.0.1:{port}{prefix}/v1/completions", json=body
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


async def _platform_status(c: httpx.AsyncClient) -> dict[str, Any]:
    r = await c.get("/v1/status")
    r.raise_for_status()
    doc: dict[str, Any] = r.json()
    return doc


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
    assert ctx.home is not None
    from embedded.state import StateDir

    port, control_port = free_port(), free_port()
    log = ctx.work / f"{variant}-{run}.log"
    argv = [ctx.python, "-m", "embedded", "--home", str(ctx.home), "up", "--port", str(port),
            "--control-port", str(control_port), "--warm-pool", str(warm_pool)]
    with log.open("wb") as f:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdout=f, stderr=asyncio.subprocess.STDOUT, env=base_env(),
            start_new_session=True, cwd=ROOT)
    try:
        state = StateDir(ctx.home)

        async def up_or_exited() -> bool:
            address = state.read_address()  # a stale file names an earlier pid
            return (address is not None and address.pid == proc.pid) or proc.returncode is not None
        await _wait_until(up_or_exited, 120, "torpor up did not come up")
        if proc.returncode is not None:
            raise RuntimeError(f"torpor up exited with {proc.returncode}; see {log}")
        token = state.read_token()
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{control_port}", timeout=30,
                                     headers={"Authorization": f"Bearer {token}"}) as c:
            (await c.post("/v1/services", content=MANIFEST.read_bytes(),
                          params={"source": MANIFEST.name})).raise_for_status()
            if warm_pool:
                # The pool's steady state: a standby has paid for its imports before the request.
                async def pool_ready() -> bool:
                    return int((await _platform_status(c))["warm_pool"]["ready"]) >= 1
                await _wait_until(pool_ready, 300, "no standby became ready")
                await asyncio.sleep(2)  # let the standby's import settle off the CPU
            row = _revision_row(await _platform_status(c))
            # A genuine request at zero: nothing ready or starting, and no earlier cold start.
            assert row is not None and row["ready_replicas"] == 0, row
            assert row["starting_replicas"] == 0 and row["last_cold_start"] is None, row
            t0 = time.time()
            await first_token(port, "tiny-chat", "/default/tiny-chat", timeout_s=300)
            tok = time.time() - t0

            async def cold_start_known() -> bool:
                row = _revision_row(await _platform_status(c))
                return row is not None and bool((row["last_cold_start"] or {}).get("phases"))
            await _wait_until(cold_start_known, 30, "no cold start reported")
            row = _revision_row(await _platform_status(c))
            assert row is not None
            cold = row["last_cold_start"]
            with contextlib.suppress(httpx.HTTPError):
                await c.delete("/v1/services/default/tiny-chat")
    finally:
        await stop_platform(proc)
    if bool(cold["warm"]) != bool(warm_pool):
        raise RuntimeError(f"{variant}: cold start warm={cold['warm']}, expected {bool(warm_pool)}")
    # Everything on the request's clock: the replica's phases are seconds since its launch.
    launched = float(cold["started_at"]) - t0
    phases = {"launched": round(launched, 4)}
    phases.update({k: round(float(v) + launched, 4) for k, v in cold["phases"].items()
                   if k != "first_token"})  # the client's first token is the one timed here
    ready = launched + float(cold["total_seconds"])
    phases["replica_ready"] = round(ready, 4)
    phases["first_token"] = round(tok, 4)
    return RunResult(variant, run, round(ready, 4), round(tok, 4), phases)


async def stop_platform(proc: asyncio.subprocess.Process) -> None:
    # One SIGTERM: `torpor up` stops its servers, every replica and the pool's standbys.
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), 60)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
    await asyncio.sleep(1)


async def torpor_plain(ctx: Context, run: int) -> RunResult:
    return await _torpor(ctx, "torpor_plain", run, warm_pool=0)


async def torpor_warm(ctx: Context, run: int) -> RunResult:
    return await _torpor(ctx, "torpor_warm", run, warm_pool=1)


VARIANTS: dict[str, Callable[[Context, int], Awaitable[RunResult]]] = {
    "bare_vllm": bare_vllm,
    "runtime_plain": runtime_plain,
    "runtime_warm": runtime_warm,
    "torpor_plain": torpor_plain,
    "torpor_warm": torpor_warm,
}


def summarize(results: list[RunResult]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for v in dict.fromkeys(r.variant for r in results):
        rs = [r for r in results if r.variant == v]
        row = {"ready_s": statistics.median(r.ready_s for r in rs),
               "first_token_s": statistics.median(r.first_token_s for r in rs),
               # Ready (as whoever waits for it sees it) to the first token: for torpor_* the
               # activator learning of the replica, proxying, and the token itself.
               "ready_to_token_s": statistics.median(r.first_token_s - r.ready_s for r in rs),
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


CLOCKS = {
    "bare_vllm": "process spawn",
    "runtime_plain": "process spawn",
    "runtime_warm": "standby assignment",
    "torpor_plain": "request sent to the activator, revision at zero, warm pool 0",
    "torpor_warm": "request sent to the activator, revision at zero, a ready standby in the pool",
}
TARGETS = (("torpor_plain", 1.05, "(b) plain through the activator"),
           ("torpor_warm", 0.2, "(c) warm pool through the activator"))


def write_markdown(summary: dict[str, dict[str, float]], path: Path, meta: dict[str, str],
                   title: str = "tiny model") -> None:
    lines = [
        f"# Cold start, {title} (to first token)", "",
        f"Machine: {meta['machine']}. Date: {meta['date']}. Runs per variant: {meta['runs']}, "
        "interleaved in one run. Medians, in seconds; phase columns are seconds since the "
        "variant's clock starts (below).", "",
        "| variant | first token | ratio to bare | ready | request → launch | imports done "
        "| weights resolved | engine built | engine ready | ready → first token |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for v, row in summary.items():
        def cell(k: str, row: dict[str, float] = row) -> str:
            return f"{row[k]:.2f}" if k in row else "-"
        lines.append(f"| {v} | {cell('first_token_s')} | {cell('ratio_to_bare')} | "
                     f"{cell('ready_s')} | {cell('launched')} | {cell('imports_done')} | "
                     f"{cell('weights_resolved')} | {cell('engine_built')} | "
                     f"{cell('engine_ready')} | {cell('ready_to_token_s')} |")
    lines += ["", "Clocks start at:", ""]
    lines += [f"- {v}: {CLOCKS.get(v, 'launch')}" for v in summary]
    lines += [
        "", "torpor_* runs start a fresh `torpor up` per repetition, deploy "
        "manifests/examples/tiny-chat.yaml (initial scale 0), check the revision has no replica "
        "and no earlier cold start, and stream one `/v1/completions` through the activator. "
        "torpor_warm waits, before each request, until the pool reports a ready standby (the "
        "steady state the pool keeps) and 2 s more. `request → launch` is the activator and "
        "autoscaler's share (request to the replica's launch); `ready` is when the platform saw "
        "/health 200; `ready → first token` is the rest (readiness reaching the activator, "
        "proxying, the token).",
    ]
    base = summary.get("bare_vllm", {}).get("first_token_s")
    if base:
        lines += ["", "| target | ratio to bare | limit | met |", "|---|---|---|---|"]
        for v, limit, what in TARGETS:
            if v in summary:
                ratio = summary[v]["first_token_s"] / base
                lines.append(f"| {what} | {ratio:.3f} | {limit} | "
                             f"{'yes' if ratio <= limit else 'no'} |")
    path.write_text("\n".join(lines) + "\n")


SEGMENT_LABELS = (
    ("launched", "request → launch (activator, autoscaler)", "#e7969c"),
    ("imports_done", "start + imports", "#9ecae1"),
    ("weights_resolved", "weights", "#fdae6b"),
    ("engine_built", "engine build", "#a1d99b"),
    ("engine_ready", "OpenAI app up", "#fdd0a2"),
    ("replica_ready", "seen ready by the platform", "#c7e9c0"),
    ("first_token_s", "to first token", "#bcbddc"),
)


def write_chart(summary: dict[str, dict[str, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(summary)
    fig, ax = plt.subplots(figsize=(9, 1.0 + 0.6 * len(names)))
    for i, v in enumerate(names):
        row = summary[v]
        if "engine_ready" not in row:  # bare vLLM reports no phases of its own
            ax.barh(i, row["ready_s"], color="#bdbdbd", label="start to ready (no phases)")
            ax.barh(i, row["first_token_s"] - row["ready_s"], left=row["ready_s"],
                    color="#bcbddc", label="to first token")
        else:
            left = 0.0
            for key, label, color in SEGMENT_LABELS:
                if key not in row:
                    continue
                width = max(row[key] - left, 0.0)
                ax.barh(i, width, left=left, color=color, label=label)
                left = max(left, row[key])
        ax.text(row["first_token_s"] + 0.2, i, f"{row['first_token_s']:.1f} s", va="center",
                fontsize=8)
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    ax.set_xlabel("seconds from the variant's clock start (spawn, assignment or request)")
    ax.set_xlim(0, max(r["first_token_s"] for r in summary.values()) * 1.12)
    handles, texts = ax.get_legend_handles_labels()
    unique = dict(zip(texts, handles, strict=True))
    order = [label for _, label, _ in SEGMENT_LABELS] + ["start to ready (no phases)"]
    keys = sorted(unique, key=lambda t: order.index(t) if t in order else len(order))
    ax.legend([unique[k] for k in keys], keys, loc="upper left", bbox_to_anchor=(1.01, 1),
              fontsize=7)
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
    # The torpor_* variants' home holds the model where the example manifest names it, and its
    # default weight cache is filled ahead the same way.
    home = work / "torpor-home"
    make_tiny_llama(home / "models/tiny-llama")
    proc = await asyncio.create_subprocess_exec(
        ns.python, "-m", "runtime", "cache", "ensure", str(home / "models/tiny-llama"),
        "--cache-dir", str(home / "cache"), cwd=ROOT, stdout=asyncio.subprocess.DEVNULL)
    await proc.wait()
    ctx.home = home
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
