"""LoRA adapters on shared base replicas (issue 16): time to first token, and what sharing saves.

Real, on the embedded platform (``torpor up`` as a child, real vLLM CPU, the tiny Llama and tiny
adapters), one run: time to first token of a streaming request for

- (plain) a plain revision (tiny-chat) at zero: its cold start, the baseline of this run;
- (a) an adapter whose base is at zero: the base cold-starts, then the adapter loads;
- (b) an adapter whose base is warm but which is not loaded: the load alone;
- (c) an adapter already loaded.

Then, real: the output-token throughput of one warm replica serving 4 requests at a time for the
base alone, or spread over two loaded adapters, beside a replica of the same model without LoRA.

Then the cost of serving K adapters (K=4) on one shared replica vs K separate replicas, in
replica-seconds, **simulated** from a Zipf-popularity arrival trace with the same scale-to-zero
rules (a replica is up from a request until window + grace after its last one; cold starts not
counted): each arrival keeps its replica up; with sharing one replica serves all K. The
simulation is stated in the results; nothing of it ran on vLLM.

Writes lora.json, lora.md (and lora.png when matplotlib is present) under benchmarks/results/.
Run under ``flock /tmp/torpor-vllm.lock``.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path
from typing import Any

import httpx

from harness.manifests import TINY_CHAT
from harness.platform import Platform
from runtime.tinyadapter import make_tiny_adapter
from runtime.tinymodel import make_tiny_llama

REPO = Path(__file__).resolve().parents[1]
LORA = REPO / "tests" / "data" / "tiny-lora-e2e.yaml"
SERVICE = "tiny-lora-e2e"


def ttft(url: str, model: str) -> float:
    body = {"model": model, "prompt": "Hello", "max_tokens": 4, "stream": True}
    started = time.monotonic()
    with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=300) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if line.startswith("data: ") and '"text"' in line:
                return time.monotonic() - started
    raise RuntimeError(f"no token from {model}")


def simulate(k: int, duration_s: float, rate: float, keep_s: float,
             seed: int) -> dict[str, float]:
    """Replica-seconds of K adapters, one replica each vs one shared, on a Zipf trace."""
    rng = random.Random(seed)
    weights = [1.0 / (i + 1) for i in range(k)]
    arrivals: list[tuple[float, int]] = []
    t = 0.0
    while True:
        t += rng.expovariate(rate)
        if t >= duration_s:
            break
        arrivals.append((t, rng.choices(range(k), weights)[0]))

    def up_seconds(times: list[float]) -> float:
        total, start, end = 0.0, None, None
        for at in times:
            if end is None or at > end:
                if start is not None and end is not None:
                    total += end - start
                start = at
            end = at + keep_s
        if start is not None and end is not None:
            total += end - start
        return total

    separate = sum(up_seconds([a for a, i in arrivals if i == j]) for j in range(k))
    shared = up_seconds([a for a, _ in arrivals])
    return {"requests": float(len(arrivals)), "separate_replica_s": separate,
            "shared_replica_s": shared}


def at_zero(platform: Platform, service: str) -> None:
    """Wait until ``service`` has no replica (its window and grace have passed)."""
    platform.wait_for(service, desired=0, ready=0, timeout_s=180)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        row = platform.revision(service)
        if not row["starting_replicas"] and not row["draining_replicas"]:
            return
        time.sleep(0.5)
    raise RuntimeError(f"{service} did not reach zero: {row}")


def one_round(platform: Platform) -> dict[str, float]:
    """Each case once, every cold start from zero."""
    at_zero(platform, "tiny-chat")
    at_zero(platform, SERVICE)
    out = {"plain_cold_start_s": ttft(platform.url, "tiny-chat")}
    out["a_base_at_zero_s"] = ttft(platform.url, "e2e-sql")
    out["b_warm_not_loaded_s"] = ttft(platform.url, "e2e-poet")
    out["c_loaded_s"] = min(ttft(platform.url, "e2e-poet") for _ in range(3))
    out["base_warm_s"] = min(ttft(platform.url, SERVICE) for _ in range(3))
    return out


def throughput(url: str, models: list[str], requests: int, concurrency: int) -> float:
    """Output tokens per second of ``requests`` completions (64 tokens each, no early stop),
    ``concurrency`` at a time, each naming the next of ``models`` in turn: what one warm replica
    serves when its requests are for the base alone or spread over adapters."""
    from concurrent.futures import ThreadPoolExecutor

    def one(i: int) -> int:
        body = {"model": models[i % len(models)], "prompt": f"request {i}", "max_tokens": 64,
                "ignore_eos": True}
        r = httpx.post(f"{url}/v1/completions", json=body, timeout=300)
        r.raise_for_status()
        tokens: int = r.json()["usage"]["completion_tokens"]
        return tokens

    started = time.monotonic()
    with ThreadPoolExecutor(concurrency) as pool:
        total = sum(pool.map(one, range(requests)))
    return total / (time.monotonic() - started)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--home", type=Path, default=Path("/tmp/torpor-bench-lora"))
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    p.add_argument("--rounds", type=int, default=3)
    ns = p.parse_args()
    make_tiny_llama(ns.home / "models" / "tiny-llama")
    make_tiny_adapter(ns.home / "models" / "tiny-sql", seed=1)
    make_tiny_adapter(ns.home / "models" / "tiny-poet", seed=2)
    # Without the warm pool, so that every cold start of both kinds imports vLLM (with it, which
    # cold start finds a standby ready depends on timing). Medians over rounds.
    rounds: list[dict[str, float]] = []
    with Platform.start(ns.home, timeout_s=90, extra=("--warm-pool", "0")) as platform:
        platform.cli("deploy", "-f", str(TINY_CHAT))
        platform.cli("deploy", "-f", str(LORA))
        for _ in range(ns.rounds):
            rounds.append(one_round(platform))
        # One warm replica serving 4 streams at a time: all for the base, or spread over its two
        # adapters (both loaded first). Alternated, 3 times each; the medians are compared.
        # And a replica of the same model without LoRA (tiny-chat): what enabling it costs.
        for model in ("tiny-chat", SERVICE, "e2e-sql", "e2e-poet"):
            ttft(platform.url, model)
        plain_tps: list[float] = []
        base_tps: list[float] = []
        adapter_tps: list[float] = []
        for _ in range(3):
            plain_tps.append(throughput(platform.url, ["tiny-chat"], 32, 4))
            base_tps.append(throughput(platform.url, [SERVICE], 32, 4))
            adapter_tps.append(throughput(platform.url, ["e2e-sql", "e2e-poet"], 32, 4))
    results: dict[str, Any] = {
        key: statistics.median(r[key] for r in rounds) for key in rounds[0]
    }
    results["rounds"] = rounds
    results["throughput"] = {
        "plain_replica_tokens_per_s": plain_tps,
        "base_tokens_per_s": base_tps,
        "adapters_tokens_per_s": adapter_tps,
        "ratio_adapters_to_base": statistics.median(adapter_tps) / statistics.median(base_tps),
        "ratio_base_to_plain": statistics.median(base_tps) / statistics.median(plain_tps),
        "requests": 32, "concurrency": 4, "max_tokens": 64,
    }
    results["warm_pool"] = 0
    results["load_ratio_to_plain_cold_start"] = (
        results["b_warm_not_loaded_s"] / results["plain_cold_start_s"]
    )
    keep_s = 6.0 + 2.0  # the e2e manifest's window + grace
    results["cost"] = {
        "k": 4, "trace_s": 120.0, "rate_per_s": 0.2, "zipf_s": 1.0, "keep_s": keep_s,
        "simulated": True,
        **simulate(4, 120.0, 0.2, keep_s, seed=1),
    }
    ns.out.mkdir(parents=True, exist_ok=True)
    (ns.out / "lora.json").write_text(json.dumps(results, indent=2) + "\n")
    c = results["cost"]
    md = [
        "# LoRA adapters on shared base replicas (`python benchmarks/lora.py`)",
        "",
        f"One run, embedded platform (`torpor up --warm-pool 0`: every cold start imports vLLM), "
        f"real vLLM CPU (2 cores), tiny Llama + rank-8 tiny adapters. Time to first token of a "
        f"streaming request, median of {len(rounds)} rounds, each cold start from zero:",
        "",
        "| case | TTFT (s) |",
        "|---|---|",
        f"| plain revision at zero (cold start, this run's baseline) | "
        f"{results['plain_cold_start_s']:.2f} |",
        f"| (a) adapter, base at zero | {results['a_base_at_zero_s']:.2f} |",
        f"| (b) adapter, base warm, adapter not loaded | {results['b_warm_not_loaded_s']:.3f} |",
        f"| (c) adapter loaded | {results['c_loaded_s']:.3f} |",
        f"| base model, warm | {results['base_warm_s']:.3f} |",
        "",
        f"Adapter load on a warm replica (b) / plain cold start: "
        f"**{results['load_ratio_to_plain_cold_start']:.3f}x**.",
        "",
        f"Throughput of one warm replica, 32 completions of 64 tokens, 4 at a time, median of "
        f"3 alternated runs: the same model on a replica without LoRA (tiny-chat) "
        f"{statistics.median(plain_tps):.0f} output tokens/s; on the LoRA-enabled base, requests "
        f"for the base {statistics.median(base_tps):.0f} tokens/s "
        f"({results['throughput']['ratio_base_to_plain']:.2f}x), spread over two loaded "
        f"adapters {statistics.median(adapter_tps):.0f} tokens/s "
        f"(**{results['throughput']['ratio_adapters_to_base']:.2f}x** the base's): what serving "
        f"adapters costs a replica in throughput (vLLM's LoRA kernels on CPU). Both replicas "
        f"were up during all runs.",
        "",
        f"Cost, **simulated** (not run on vLLM): K={c['k']} adapters, Poisson arrivals "
        f"{c['rate_per_s']}/s for {c['trace_s']:.0f} s, Zipf(1) popularity, a replica up until "
        f"{c['keep_s']:.0f} s after its last request: {c['requests']:.0f} requests, "
        f"{c['separate_replica_s']:.0f} replica-s with one replica per adapter vs "
        f"{c['shared_replica_s']:.0f} replica-s on one shared base "
        f"({c['shared_replica_s'] / max(c['separate_replica_s'], 1e-9):.2f}x).",
        "",
    ]
    (ns.out / "lora.md").write_text("\n".join(md))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    labels = ["plain cold", "(a) base at 0", "(b) load", "(c) loaded"]
    values = [results["plain_cold_start_s"], results["a_base_at_zero_s"],
              results["b_warm_not_loaded_s"], results["c_loaded_s"]]
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.bar(labels, values)
    ax.set_ylabel("time to first token (s)")
    ax.set_yscale("log")
    fig.tight_layout()
    fig.savefig(ns.out / "lora.png", dpi=100)


if __name__ == "__main__":
    main()
