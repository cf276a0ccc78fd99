"""Cold start on an NVIDIA GPU: bare vLLM vs torpor plain vs torpor warm, Llama-3-8B shape.

Not run yet: the one GPU machine lent so far (an H200, 2026-11-30) had no vLLM build and no
package registry; weight_load_gpu.sh and sleep_floor.py ran there instead. Needs the GPU build
(`pip install -e '.[gpu,dev]'`).
Makes a random-weight model with Llama-3-8B's layers (no download; ~15 GiB), fills the
node-local cache, then runs the same variants as benchmarks/coldstart.py (harness.coldstart)
with GPU settings: no --enforce-eager (torch.compile and CUDA graphs stay on, as in a real
deployment) for all three, so the comparison is like for like.
Results: benchmarks/results/gpu/coldstart_gpu.*
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
from pathlib import Path

from harness.coldstart.report import write_results
from harness.coldstart.variants import Context, run_variants
from harness.manifests import REPO as ROOT
from runtime.tinymodel import make_tiny_llama


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--work", type=Path, default=Path("/tmp/torpor-gpu"))
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--variants", default="bare_vllm,runtime_plain,runtime_warm")
    p.add_argument("--max-model-len", default="4096")
    p.add_argument("--python", default=sys.executable)
    p.add_argument("--machine", default="NVIDIA GPU (see nvidia-smi in the log)")
    ns = p.parse_args()
    ns.work.mkdir(parents=True, exist_ok=True)
    model = make_tiny_llama(ns.work / "llama3-8b-random", size="llama3-8b")
    subprocess.run([ns.python, "-m", "runtime", "cache", "warm", str(model), "--cache-dir",
                    str(ns.work / "cache")], cwd=ROOT, check=True)
    ctx = Context(python=ns.python, model=model, work=ns.work,
                  engine_args=("--max-model-len", ns.max_model_len), served_name="llama3-8b",
                  bare_args=())
    results = asyncio.run(run_variants(ctx, ns.variants.split(","), ns.runs))
    write_results(results, ROOT / "benchmarks/results/gpu", ns.machine, ns.runs,
                  name="coldstart_gpu", title="Llama-3-8B shape, random weights")


if __name__ == "__main__":
    main()
