"""The CPU engine path's decision (pure): from what the probe saw to the path and its reason."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

from runtime.cpu_engine import (
    Candidate,
    EngineUnavailable,
    ProbeFacts,
    decide,
    fallback_isa,
    for_replica,
    plan_candidates,
    requested_dtype,
)

RUNTIME = Path(__file__).resolve().parents[2] / "runtime"


def ran(name: str, isa: str | None = None, dtype: str = "bfloat16", request: bool = False,
        outcome: str = "ok", code: int | None = 0) -> Candidate:
    return Candidate(name, isa or name.split("-")[0], dtype, request, outcome, code)


def sigill(name: str, isa: str | None = None, request: bool = False) -> Candidate:
    return ran(name, isa, request=request, outcome="sigill", code=-4)


def facts(*candidates: Candidate, amx: bool, machine: str = "x86_64") -> ProbeFacts:
    return ProbeFacts(
        machine=machine, cpu_model="Intel(R) Xeon(R) Platinum 8480C", torch_version="2.13.0+cpu",
        vllm_version="0.32.0", kernels="_C.abi3.so", amx_tile=amx, avx512=True,
        avx512_bf16=True, avx2=True, capability="AVX512", candidates=candidates,
    )


def test_amx_machine_where_the_amx_kernel_runs_with_the_permission_takes_amx() -> None:
    path = decide(facts(
        ran("amx", request=True), sigill("amx-unrequested", "amx"),
        ran("vec"), ran("vec-float32", dtype="float32"), amx=True,
    ))
    assert path.attention == "amx" and path.requests_amx
    assert "AMX permission requested" in path.reason
    assert "amx-unrequested: SIGILL (exit -4)" in path.reason  # issue 21, seen on this machine
    assert path.line().startswith("cpu attention=amx (torch reports AMX tiles")


def test_amx_machine_where_the_amx_kernel_dies_takes_vec() -> None:
    path = decide(facts(
        sigill("amx", request=True),
        ran("vec"), ran("vec-float32", dtype="float32"), amx=True,
    ))
    assert path.attention == "vec" and not path.requests_amx
    assert "amx: SIGILL (exit -4)" in path.reason and "vec kernel ran" in path.reason


def test_machine_without_amx_takes_what_vllm_takes_without_it() -> None:
    path = decide(facts(ran("vec"), ran("vec-float32", dtype="float32"), amx=False))
    assert path.attention == "vec"
    assert path.line() == "cpu attention=vec (torch reports no AMX tiles)"
    arm = decide(facts(ran("neon"), amx=False, machine="aarch64"))
    assert arm.attention == "neon"


@pytest.mark.parametrize("amx", [True, False])
def test_nothing_works_for_bf16_gives_no_path_and_says_whether_float32_ran(amx: bool) -> None:
    tried = [sigill("amx", request=True)] if amx else []
    path = decide(facts(*tried, sigill("vec"),
                        ran("vec-float32", dtype="float32"), amx=amx))
    assert path.attention is None and path.float32_ok
    assert "vec: SIGILL (exit -4)" in path.reason
    worse = decide(facts(ran("vec", outcome="crashed", code=-11),
                         ran("vec-float32", dtype="float32", outcome="wrong", code=3), amx=False))
    assert worse.attention is None and not worse.float32_ok


def test_a_replica_fails_at_start_naming_the_cause_and_the_way_out() -> None:
    path = decide(facts(sigill("vec"),
                        ran("vec-float32", dtype="float32"), amx=False))
    with pytest.raises(EngineUnavailable) as e:
        for_replica(path, ["--max-model-len", "512"], "0.32.0")
    assert "no CPU attention kernel of vLLM 0.32.0 works on this machine for bf16" in str(e.value)
    assert "vec: SIGILL (exit -4)" in str(e.value) and "--dtype float32" in str(e.value)
    # Asked for float32, the replica runs on the path without AMX.
    for args in (["--dtype", "float32"], ["--dtype=float"]):
        replica = for_replica(path, args, "0.32.0")
        assert replica.isa == "vec" and replica.line.startswith("cpu attention=vec float32 only")
    # float32 failed too: no way out on this machine.
    hopeless = decide(facts(sigill("vec"), amx=False))
    with pytest.raises(EngineUnavailable, match="another machine type"):
        for_replica(hopeless, ["--dtype", "float32"], "0.32.0")


def test_a_path_that_works_is_the_replicas() -> None:
    path = decide(facts(ran("vec"), amx=False))
    assert for_replica(path, [], "0.32.0").isa == "vec"


def test_requested_dtype_takes_the_last_flag() -> None:
    assert requested_dtype([]) is None
    assert requested_dtype(["--dtype", "bfloat16", "--dtype=Float32"]) == "float32"
    assert requested_dtype(["--dtype"]) is None


def test_candidates_planned_per_machine() -> None:
    names = [c.name for c in plan_candidates("x86_64", amx_reported=True)]
    assert names == ["amx", "amx-unrequested", "vec", "vec-float32"]
    amx = plan_candidates("x86_64", amx_reported=True)[0]
    assert amx.request_amx and amx.dtype == "bfloat16"
    assert [c.name for c in plan_candidates("x86_64", amx_reported=False)] == ["vec", "vec-float32"]
    assert fallback_isa("aarch64") == "neon" and fallback_isa("ppc64le") == "vsx"


def test_probe_facts_read_back_as_written_and_refuse_other_input() -> None:
    f = facts(sigill("amx", request=True), ran("vec"), amx=True)
    assert ProbeFacts.from_json(f.to_json()) == f
    for bad in ({}, {"format": 99}, {**f.to_json(), "candidates": [{"name": 1}]},
                {**f.to_json(), "torch_reports": {"amx_tile": "yes"}}):
        with pytest.raises(ValueError):
            ProbeFacts.from_json(bad)
    assert f.isa_extensions() == "AVX512 (amx avx512 avx512_bf16 avx2)"


def test_decision_module_imports_only_the_standard_library() -> None:
    for name in ("cpu_engine.py", "cpu_engine_cache.py"):
        tree = ast.parse((RUNTIME / name).read_text())
        imported = {n.module.split(".")[0] for n in ast.walk(tree)
                    if isinstance(n, ast.ImportFrom) and n.module}
        imported |= {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import)
                     for a in n.names}
        assert imported <= set(sys.stdlib_module_names) | {"__future__", "runtime"}, name
