"""Weight loading from the node-local cache vs the page-cache floor, on a >= 1 GiB model.

    .venv/bin/python benchmarks/weight_load.py [--model-dir /tmp/torpor-1g] [--runs 3]
        [--with-vllm]   # also start the runtime once and read vLLM's "Loading weights took"
    benchmarks/gpu/weight_load_gpu.sh   # the same on a GPU node: Llama-3-8B shape, into CUDA

Measures, with the model already in the page cache (the warmer's job, `runtime cache warm`):
  floor     : read every byte of the cached files into memory (page cache -> user memory)
  cache hit : `WeightCache.ensure` on a hit (stat check + index) plus loading every tensor with
              safetensors into torch tensors, as vLLM's default loader does on CPU (with
              `--device cuda`: into GPU memory, synchronised, as its loader does on a GPU)
and reports hit / floor. Writes weight_load.json and weight_load.md under benchmarks/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from runtime.cache import WeightCache, copy_and_hash, prefetch
from runtime.tinymodel import make_tiny_llama

ROOT = Path(__file__).resolve().parents[1]


def read_floor(path: Path) -> float:
    t = time.perf_counter()
    prefetch(path)
    return time.perf_counter() - t


def read_fresh(path: Path) -> float:
    """Page cache into newly allocated memory: what any loader that keeps the bytes pays."""
    t = time.perf_counter()
    for f in sorted(path.rglob("*")):
        if f.is_file():
            buf = bytearray(f.stat().st_size)
            with f.open("rb", buffering=0) as fh:
                fh.readinto(buf)
            del buf
    return time.perf_counter() - t


def cache_hit_load(
    cache: WeightCache, source: Path, device: str = "cpu"
) -> tuple[float, float, int]:
    import torch
    from safetensors import safe_open

    t = time.perf_counter()
    path = cache.ensure(str(source))
    t_resolve = time.perf_counter() - t
    total = 0
    for f in sorted(path.glob("*.safetensors")):
        with safe_open(str(f), "pt") as st:
            for k in st.keys():  # noqa: SIM118 - safe_open is not a dict
                # get_tensor maps the file lazily; copying into a fresh tensor touches every
                # byte, as vLLM's loader does when it copies into its parameters.
                src = st.get_tensor(k)
                dst = torch.empty_like(src, device=device)
                dst.copy_(src)
                total += dst.numel() * dst.element_size()
                del dst
    if device != "cpu":
        torch.cuda.synchronize()
    return t_resolve, time.perf_counter() - t, total


def vllm_load_seconds(source: Path, cache_dir: Path) -> float | None:
    """Start the runtime once and read vLLM's own weight-loading time from its log."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE=os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "runtime", "serve", "--port", str(port), "--model", str(source),
         "--served-model-name", "big", "--cache-dir", str(cache_dir), "--max-model-len", "512"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True)
    took = None
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            m = re.search(r"Loading weights took ([0-9.]+) seconds", line)
            if m:
                took = float(m.group(1))
            if line.startswith("{") and '"startup"' in line:
                break
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(60)
    return took


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model-dir", type=Path, default=Path(tempfile.gettempdir()) / "torpor-1g")
    p.add_argument("--cache-dir", type=Path, default=None)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--with-vllm", action="store_true")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks/results")
    p.add_argument("--machine", default="2-core x86-64 CPU, local ext4 disk")
    p.add_argument("--size", default="1g", help="a shape of runtime.tinymodel (1g, llama3-8b)")
    p.add_argument("--device", default="cpu", help="where the tensors go: cpu or cuda")
    p.add_argument("--name", default="weight_load", help="results file name, without suffix")
    ns = p.parse_args()

    t = time.perf_counter()
    model = make_tiny_llama(ns.model_dir, size=ns.size)
    made_s = time.perf_counter() - t
    cache_dir = ns.cache_dir or Path(tempfile.mkdtemp(prefix="torpor-wl-cache-"))
    cache = WeightCache(cache_dir, copy_file=copy_and_hash)
    t = time.perf_counter()
    path = cache.ensure(str(model))
    fill_s = time.perf_counter() - t
    nbytes = prefetch(path)  # the warmer: cached files now sit in the page cache

    floors, hits, resolves, fresh = [], [], [], []
    loaded = 0
    for _ in range(ns.runs):
        floors.append(read_floor(path))
        fresh.append(read_fresh(path))
        resolve_s, hit_s, loaded = cache_hit_load(cache, model, ns.device)
        hits.append(hit_s)
        resolves.append(resolve_s)
    floor = statistics.median(floors)
    hit = statistics.median(hits)
    result: dict[str, object] = {
        "machine": ns.machine,
        "device": ns.device,
        "size": ns.size,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "model_bytes": nbytes,
        "loaded_bytes": loaded,
        "model_make_s": round(made_s, 3),
        "cache_fill_s": round(fill_s, 3),
        "runs": ns.runs,
        "floor_page_cache_read_s": [round(x, 4) for x in floors],
        "cache_hit_load_s": [round(x, 4) for x in hits],
        "cache_hit_resolve_s": [round(x, 4) for x in resolves],
        "median_floor_s": round(floor, 4),
        "median_cache_hit_s": round(hit, 4),
        "floor_gib_per_s": round(nbytes / floor / 2**30, 2),
        "ratio_hit_to_floor": round(hit / floor, 3),
        "floor_into_fresh_memory_s": [round(x, 4) for x in fresh],
        "ratio_hit_to_fresh_memory_floor": round(hit / statistics.median(fresh), 3),
    }
    if ns.with_vllm:
        result["vllm_loading_weights_s"] = vllm_load_seconds(model, cache_dir)
    ns.out.mkdir(parents=True, exist_ok=True)
    (ns.out / f"{ns.name}.json").write_text(json.dumps(result, indent=1) + "\n")
    md = [
        "# Weight loading from the node-local cache", "",
        f"Machine: {ns.machine}. Date: {result['date']}. Model: random Llama, "
        f"{nbytes / 2**30:.2f} GiB bf16 safetensors. Medians of {ns.runs} runs, model in the "
        "page cache (as after `python -m runtime cache warm`).", "",
        "| measure | seconds |", "|---|---|",
        f"| floor: read the cached bytes from the page cache | {floor:.3f} "
        f"({result['floor_gib_per_s']} GiB/s) |",
        f"| floor 2: read them into newly allocated memory | {statistics.median(fresh):.3f} |",
        f"| cache hit: resolve (stat + index) | {statistics.median(resolves):.4f} |",
        f"| cache hit: resolve + load every tensor (safetensors -> torch, {ns.device}) "
        f"| {hit:.3f} ({nbytes / hit / 2**30:.2f} GiB/s) |",
        f"| **ratio hit / floor** | **{result['ratio_hit_to_floor']}** |",
        f"| ratio hit / floor 2 | {result['ratio_hit_to_fresh_memory_floor']} |",
        f"| bytes loaded per hit | {result['loaded_bytes']} |",
        f"| first fill of the cache (copy + sha256 + fsync) | {fill_s:.2f} |",
    ]
    if ns.with_vllm:
        md.append(f"| vLLM's own 'Loading weights took' via the runtime | "
                  f"{result['vllm_loading_weights_s']} |")
    (ns.out / f"{ns.name}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
