"""The vLLM plugin applies the CPU engine path: AMX hidden from vLLM (vec), or the AMX tile
permission requested (amx); nothing when the runtime set no path."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from runtime.contract import ENV_CPU_ATTN_ISA
from runtime.engine import is_cpu_build
from runtime.vllm_plugin import applied_here, apply

REPO = Path(__file__).resolve().parents[2]


def fake_cpu(amx: bool = True) -> SimpleNamespace:
    cpu = SimpleNamespace(requests=0)

    def init_amx() -> bool:
        cpu.requests += 1
        return True

    cpu._is_amx_tile_supported = lambda: amx
    cpu._init_amx = init_amx
    return cpu


def test_vec_hides_amx_tiles_and_amx_requests_the_permission() -> None:
    cpu = fake_cpu()
    assert apply("vec", cpu) is True
    assert cpu._is_amx_tile_supported() is False and cpu.requests == 0
    assert apply("vec", cpu) is False  # idempotent
    assert applied_here(cpu) == "vec"
    assert apply("amx", cpu) is True  # a standby assigned another path: AMX shown again
    assert cpu._is_amx_tile_supported() is True and cpu.requests == 1
    assert apply("amx", cpu) is False and cpu.requests == 1
    assert applied_here(fake_cpu()) is None


def run_child(code: str, **env: str) -> list[str]:
    full = {k: v for k, v in os.environ.items() if k != ENV_CPU_ATTN_ISA}
    full.update(env, PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, env=full, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.split()


needs_cpu_build = pytest.mark.skipif(not is_cpu_build(), reason="the CPU build of vLLM")

REGISTER = r"""
import os, torch
torch.cpu._is_amx_tile_supported = lambda: True  # as on an AMX machine
from runtime.vllm_plugin import register, applied_here
register(); register()
print(torch.cpu._is_amx_tile_supported(), applied_here(torch.cpu))
pid = os.fork()
if pid == 0:  # vLLM's engine core, forked by the runtime: the effect is inherited
    os._exit(0 if applied_here(torch.cpu) == "vec" and not torch.cpu._is_amx_tile_supported()
             else 1)
print("child", os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
"""


@needs_cpu_build
def test_in_a_process_of_its_own_vec_hides_amx_and_unset_changes_nothing() -> None:
    assert run_child(REGISTER, **{ENV_CPU_ATTN_ISA: "vec"}) == ["False", "vec", "child", "0"]
    assert run_child(REGISTER) == ["True", "None", "child", "1"]


THROUGH_VLLM = r"""
import os, torch
requests = []
torch.cpu._is_amx_tile_supported = lambda: True  # as on an AMX machine
torch.cpu._init_amx = lambda: requests.append(1) or True
from vllm.plugins import load_general_plugins
from vllm.v1.attention.backends.cpu_attn import _get_attn_isa
load_general_plugins()  # vLLM's own loader: finds the entry point in pyproject.toml
print(_get_attn_isa(torch.bfloat16, 128, 64), len(requests))
"""


@pytest.mark.e2e
@needs_cpu_build
def test_vllms_plugin_loader_applies_the_path_to_its_attention_choice() -> None:
    assert run_child(THROUGH_VLLM, **{ENV_CPU_ATTN_ISA: "vec"}) == ["vec", "0"]
    assert run_child(THROUGH_VLLM, **{ENV_CPU_ATTN_ISA: "amx"}) == ["amx", "1"]
    assert run_child(THROUGH_VLLM) == ["amx", "0"]  # unset: vLLM's own choice
