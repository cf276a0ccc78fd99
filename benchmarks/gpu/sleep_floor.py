"""The floor under a GPU replica's wake from vLLM's sleep level 1, without vLLM.

    PYTHONPATH=. python3 benchmarks/gpu/sleep_floor.py [--size llama3-8b] [--runs 5] [--out DIR]

Level 1 of vLLM's sleep mode (``POST /sleep?level=1``) copies the weights to pinned host memory
and frees the GPU memory (weights and KV cache); ``POST /wake_up`` allocates them again and copies
the weights back. This measures that data movement alone, for every tensor of a Llama shape
(``runtime.tinymodel``): GPU -> pinned host ("sleep") and pinned host -> GPU ("wake"), each
synchronised, and the same tensors loaded from safetensors files in the page cache, which is the
weight part of a cold start from torpor's node-local cache (benchmarks/weight_load.py). vLLM's
real wake adds the allocator's work and re-creating the KV cache and CUDA graphs; its real cold
start adds process start, imports, profiling and graph capture. So this is a floor for both, not
vLLM's wake time: that needs vLLM's GPU build (benchmarks/gpu/coldstart_gpu.sh).
Writes sleep_floor.json and sleep_floor.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from runtime.tinymodel import SHAPES


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--size", default="llama3-8b")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/gpu"))
    p.add_argument("--machine", default=torch.cuda.get_device_name(0))
    ns = p.parse_args()
    shapes = list(SHAPES[ns.size].tensor_shapes())
    gpu = [torch.randn(s, dtype=torch.bfloat16, device="cuda") for _, s in shapes]
    host = [torch.empty(t.shape, dtype=t.dtype, pin_memory=True) for t in gpu]
    nbytes = sum(t.numel() * t.element_size() for t in gpu)
    sleeps: list[float] = []
    wakes: list[float] = []
    for _ in range(ns.runs):
        torch.cuda.synchronize()
        t = time.perf_counter()
        for h, g in zip(host, gpu, strict=True):
            h.copy_(g, non_blocking=True)
        torch.cuda.synchronize()
        gpu.clear()  # the GPU memory is released, as level 1 does
        torch.cuda.empty_cache()
        sleeps.append(time.perf_counter() - t)
        t = time.perf_counter()
        for h in host:
            g = torch.empty(h.shape, dtype=h.dtype, device="cuda")
            g.copy_(h, non_blocking=True)
            gpu.append(g)
        torch.cuda.synchronize()
        wakes.append(time.perf_counter() - t)
    sleep_s, wake_s = statistics.median(sleeps), statistics.median(wakes)
    result = {
        "machine": ns.machine,
        "size": ns.size,
        "bytes": nbytes,
        "tensors": len(shapes),
        "runs": ns.runs,
        "sleep_to_pinned_host_s": [round(x, 4) for x in sleeps],
        "wake_from_pinned_host_s": [round(x, 4) for x in wakes],
        "median_sleep_s": round(sleep_s, 4),
        "median_wake_s": round(wake_s, 4),
        "wake_gib_per_s": round(nbytes / wake_s / 2**30, 1),
        "torch": torch.__version__,
    }
    ns.out.mkdir(parents=True, exist_ok=True)
    (ns.out / "sleep_floor.json").write_text(json.dumps(result, indent=1) + "\n")
    md = [
        "# The data movement under vLLM's sleep level 1 (a floor, not vLLM's wake time)", "",
        f"Machine: {ns.machine}. torch {torch.__version__}. Weights: every tensor of a "
        f"{ns.size}-shaped Llama (runtime.tinymodel), {nbytes / 2**30:.2f} GiB bf16, "
        f"{len(shapes)} tensors. Medians of {ns.runs} runs. vLLM was not run.", "",
        "| step | seconds |", "|---|---:|",
        f"| sleep: GPU -> pinned host, GPU memory freed | {sleep_s:.3f} |",
        f"| wake: allocate on the GPU, pinned host -> GPU | {wake_s:.3f} "
        f"({result['wake_gib_per_s']} GiB/s) |",
    ]
    (ns.out / "sleep_floor.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
