"""The probe: each candidate in its own forked grandchild, whose fate (a SIGILL included) is
recorded; and, for real on this machine, vLLM's kernels run and a path is chosen."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from runtime.cpu_engine import CandidateSpec
from runtime.cpu_engine_probe import cpu_model_name, run_isolated

REPO = Path(__file__).resolve().parents[2]
SPEC = CandidateSpec("amx", "amx", "bfloat16", True)


def test_a_candidate_that_runs_is_ok_with_its_detail() -> None:
    got = run_isolated(SPEC, lambda spec: f"ran {spec.isa} in {os.getpid()}")
    assert got.ok and got.exit_code == 0 and got.name == "amx" and got.request_amx
    assert got.detail.startswith("ran amx in ") and got.detail != f"ran amx in {os.getpid()}"


def illegal_instruction(spec: CandidateSpec) -> str:
    os.kill(os.getpid(), signal.SIGILL)  # what an AMX tile instruction without permission gets
    return "unreachable"


def test_a_sigill_kills_the_grandchild_only_and_is_recorded_as_exit_minus_4() -> None:
    got = run_isolated(SPEC, illegal_instruction)
    assert got.outcome == "sigill" and got.exit_code == -4 and not got.ok
    assert got.said() == "amx: SIGILL (exit -4)"


def raising(spec: CandidateSpec) -> str:
    raise RuntimeError("Invalid ISA type: amx")


def wrong(spec: CandidateSpec) -> str:
    raise ArithmeticError("answered wrongly: max abs error 3 vs reference")


def segfault(spec: CandidateSpec) -> str:
    os.kill(os.getpid(), signal.SIGSEGV)
    return "unreachable"


def hangs(spec: CandidateSpec) -> str:
    time.sleep(30)
    return "unreachable"


def test_other_fates_are_told_apart() -> None:
    error = run_isolated(SPEC, raising)
    assert error.outcome == "error" and "Invalid ISA type" in error.detail and error.exit_code == 3
    assert run_isolated(SPEC, wrong).outcome == "wrong"
    crashed = run_isolated(SPEC, segfault)
    assert crashed.outcome == "crashed" and crashed.exit_code == -11
    assert "SIGSEGV" in crashed.detail
    slow = run_isolated(SPEC, hangs, timeout_s=0.3)
    assert slow.outcome == "timeout" and slow.exit_code is None


def test_cpu_model_name_from_cpuinfo() -> None:
    assert cpu_model_name("processor: 0\nmodel name\t: AMD EPYC 9654\n") == "AMD EPYC 9654"


def run_probe(*args: str) -> dict[str, object]:
    pytest.importorskip("torch")
    if pytest.importorskip("importlib.util").find_spec("vllm") is None:
        pytest.skip("vLLM is not installed")
    done = subprocess.run([sys.executable, "-m", "runtime.cpu_engine_probe", "--json", *args],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stderr[-2000:]
    report: dict[str, object] = json.loads(done.stdout)
    return report


def test_the_real_probe_runs_vllms_kernels_and_chooses_a_path_on_this_machine() -> None:
    report = run_probe()
    decision = report["decision"]
    assert isinstance(decision, dict)
    assert decision["attention"] is not None, decision["reason"]
    candidates = {c["name"]: c for c in report["candidates"]}  # type: ignore[attr-defined]
    chosen = candidates[decision["attention"]]
    assert chosen["outcome"] == "ok" and chosen["exit_code"] == 0
    assert "prefill and decode ran" in chosen["detail"]
    reports = report["torch_reports"]
    assert isinstance(reports, dict)
    if not reports["amx_tile"]:
        assert decision["attention"] != "amx" and "amx" not in candidates
    assert str(report["kernels"]).startswith("_C")


def test_where_torch_reports_no_amx_the_amx_kernel_dies_with_sigill_in_its_grandchild() -> None:
    report = run_probe("--try", "amx,vec")
    reports = report["torch_reports"]
    assert isinstance(reports, dict)
    if reports["amx_tile"]:
        pytest.skip("this CPU has AMX tiles: the amx kernel may run here")
    amx, vec = report["candidates"]  # type: ignore[misc]
    assert (amx["outcome"], amx["exit_code"]) == ("sigill", -4)
    assert vec["outcome"] == "ok"  # the probe went on after the SIGILL
