"""A vLLM general plugin that applies the CPU engine path in every vLLM process (issue 21).

Entry point `vllm.general_plugins` / `torpor_cpu_engine` (pyproject.toml): vLLM calls `register`
in its API server process, its engine core and its workers (`vllm/plugins/__init__.py`). It
reads `$TORPOR_CPU_ATTN_ISA`, which the runtime sets from the probe (`runtime.cpu_engine`)
before any vLLM process starts:

- `amx`: ask Linux for the AMX tile state (`torch.cpu._init_amx()`), which vLLM's amx attention
  kernels need and never ask for themselves (without it their first tile instruction is SIGILL);
- anything else (`vec`, ...): make `torch.cpu._is_amx_tile_supported()` say False, so vLLM
  takes the kernels it takes on a CPU without AMX (`cpu_attn.py::_get_attn_isa`).

Unset, or not the CPU build of vLLM: nothing. Idempotent and cheap. A process forked from one
where it ran (the runtime forks vLLM's engine core: `runtime.engine.enable_fork_engine`)
inherits its effect; it says so in its own log line.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from runtime.contract import ENV_CPU_ATTN_ISA, ENV_CPU_ENGINE_LINE

# Under vLLM's logger: its handler, and its process prefix ("(EngineCore pid=...)").
log = logging.getLogger("vllm.torpor.cpu_engine")

AMX = "amx"
# Kept on torch.cpu itself, beside what is patched (a forked child inherits both):
_ORIGINAL = "_torpor_is_amx_tile_supported"  # the function hidden by a non-amx path
_APPLIED = "_torpor_cpu_engine"  # (pid, path, what it did) last applied
_said: set[int] = set()  # pids whose log line went out
_fork_hook_armed = False


def register() -> None:
    """vLLM's plugin hook."""
    isa = os.environ.get(ENV_CPU_ATTN_ISA, "").strip().lower()
    if not isa:
        return
    from runtime.engine import is_cpu_build

    if not is_cpu_build():
        return
    import torch

    apply(isa, torch.cpu)


def _no_amx_tiles() -> bool:
    return False


def apply(isa: str, cpu: Any) -> bool:
    """Apply `isa` to torch's `cpu` module; False when this process already has it."""
    pid = os.getpid()
    before = getattr(cpu, _APPLIED, None)
    if before is not None and before[:2] == (pid, isa):
        _say(before)
        return False
    if isa == AMX:
        original = getattr(cpu, _ORIGINAL, None)
        if original is not None:  # an earlier path hid AMX: show it again
            cpu._is_amx_tile_supported = original
            delattr(cpu, _ORIGINAL)
        granted = bool(cpu._init_amx())
        effect = "AMX tile permission requested" + ("" if granted else ", and refused")
    else:
        if getattr(cpu, _ORIGINAL, None) is None:
            setattr(cpu, _ORIGINAL, cpu._is_amx_tile_supported)
            cpu._is_amx_tile_supported = _no_amx_tiles
        effect = "AMX tiles hidden from vLLM"
    if before is not None and before[0] != pid:
        effect += f" (inherited from pid {before[0]}, applied again)"
    now = (pid, isa, effect)
    setattr(cpu, _APPLIED, now)
    _say(now)
    _arm_fork_hook()
    return True


def _say(applied: tuple[int, str, str]) -> None:
    """One line per process, once vLLM's logger has its handler. (In the runtime's own process
    vLLM configures its logging only after it has loaded its plugins; the runtime's start-up
    line says the path there.)"""
    pid, isa, effect = applied
    if pid in _said or not logging.getLogger("vllm").handlers:
        return
    _said.add(pid)
    why = os.environ.get(ENV_CPU_ENGINE_LINE) or f"${ENV_CPU_ATTN_ISA}={isa}"
    log.info("torpor cpu engine plugin: attention=%s in pid %d: %s [%s]", isa, pid, effect, why)


def _arm_fork_hook() -> None:
    global _fork_hook_armed
    if not _fork_hook_armed:
        os.register_at_fork(after_in_child=_after_fork)
        _fork_hook_armed = True


def _after_fork() -> None:
    """In a forked child (vLLM's engine core): the effect is inherited; apply it again anyway
    (asking for the AMX permission again is one cheap system call) and say so."""
    torch = sys.modules.get("torch")
    applied = getattr(torch.cpu, _APPLIED, None) if torch is not None else None
    if torch is None or applied is None:
        return
    try:
        apply(applied[1], torch.cpu)
    except Exception:  # never break a fork
        log.exception("torpor cpu engine plugin: re-applying after fork failed")


def applied_here(cpu: Any) -> str | None:
    """The path applied to torch's `cpu` module in this process, if any."""
    applied = getattr(cpu, _APPLIED, None)
    return applied[1] if applied is not None and applied[0] == os.getpid() else None
