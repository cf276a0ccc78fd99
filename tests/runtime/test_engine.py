"""The fork trick reaches into vLLM's CPU platform: pin the version and check the path."""

import subprocess
import sys
from pathlib import Path

import pytest

from runtime.contract import PINNED_VLLM
from runtime.engine import is_cpu_build, vllm_version

REPO = Path(__file__).resolve().parents[2]

CHILD = r"""
import inspect, os
from vllm.platforms.cpu import CpuPlatform
source = inspect.getsource(CpuPlatform.check_and_update_config)
assert 'os.environ["VLLM_WORKER_MULTIPROC_METHOD"] = "spawn"' in source, "vLLM changed"

def fake_check(cls, vllm_config):  # what vLLM's own check does to the start method
    os.environ["VLLM_WORKER_MULTIPROC_METHOD"] = "spawn"

CpuPlatform.check_and_update_config = classmethod(fake_check)
from runtime.engine import enable_fork_engine
assert enable_fork_engine() is True
assert enable_fork_engine() is True  # idempotent
CpuPlatform.check_and_update_config(None)
print(os.environ["VLLM_WORKER_MULTIPROC_METHOD"])
"""


@pytest.mark.e2e
def test_fork_trick_applies_on_the_pinned_cpu_build() -> None:
    pytest.importorskip("vllm")
    if not is_cpu_build():
        pytest.skip("GPU build: vLLM forks by itself")
    assert vllm_version() == PINNED_VLLM, "re-check runtime/engine.py against this vLLM"
    out = subprocess.run(
        [sys.executable, "-c", CHILD], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "fork"
