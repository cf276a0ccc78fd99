"""The runtime's own arguments, parsed once at the edge (see the runtime process contract).

Everything the runtime does not own goes to vLLM's OpenAI server unchanged.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class LaunchConfig:
    source: str
    host: str
    port: int
    served_model_name: str
    replica_id: str
    launched_at: float | None  # the actuator's wall clock at spawn; None: our own start
    cache_dir: Path
    cache_budget_bytes: int | None
    use_cache: bool
    fork_engine: bool  # start vLLM's engine core by fork, reusing this process's imports
    engine_args: tuple[str, ...]


def torpor_home(env: Mapping[str, str]) -> Path:
    return Path(env.get("TORPOR_HOME") or Path.home() / ".torpor").expanduser()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m runtime serve", allow_abbrev=False)
    p.add_argument("--model", required=True, help="local directory or file:// URI")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--served-model-name", default=None)
    p.add_argument("--replica-id", default=None)
    p.add_argument("--launched-at", type=float, default=None)
    p.add_argument("--cache-dir", type=Path, default=None)
    p.add_argument("--cache-budget-bytes", type=int, default=None)
    p.add_argument("--no-cache", dest="use_cache", action="store_false",
                   help="serve the source directly instead of the node-local cached copy")
    p.add_argument("--fork-engine", dest="fork_engine", action="store_true", default=None)
    p.add_argument("--no-fork-engine", dest="fork_engine", action="store_false")
    return p


def parse_launch_args(argv: Sequence[str], env: Mapping[str, str]) -> LaunchConfig:
    ns, rest = _parser().parse_known_args(list(argv))
    cache_dir = ns.cache_dir or torpor_home(env) / "cache"
    budget = ns.cache_budget_bytes
    if budget is None and env.get("TORPOR_CACHE_BUDGET_BYTES"):
        budget = int(env["TORPOR_CACHE_BUDGET_BYTES"])
    fork = ns.fork_engine
    if fork is None:
        fork = env.get("TORPOR_FORK_ENGINE", "1") not in ("0", "false", "no")
    return LaunchConfig(
        source=ns.model,
        host=ns.host,
        port=ns.port,
        # Clients ask for the model by the name in the manifest, not by the cache path.
        served_model_name=ns.served_model_name or ns.model,
        replica_id=ns.replica_id or f"pid-{os.getpid()}",
        launched_at=ns.launched_at,
        cache_dir=Path(cache_dir),
        cache_budget_bytes=budget,
        use_cache=ns.use_cache,
        fork_engine=fork,
        engine_args=tuple(rest),
    )


def _has_flag(args: Sequence[str], *names: str) -> bool:
    return any(a == n or a.startswith(n + "=") for a in args for n in names)


def vllm_argv(cfg: LaunchConfig, model_path: Path, *, cpu: bool) -> list[str]:
    """The argument list for vLLM's OpenAI server."""
    argv = [
        "--host", cfg.host,
        "--port", str(cfg.port),
        "--model", str(model_path),
        "--served-model-name", cfg.served_model_name,
    ]
    extra = list(cfg.engine_args)
    # torch.compile adds ~16 s to a CPU start for nothing a tiny model needs (REFERENCE.md).
    if cpu and not _has_flag(extra, "--enforce-eager", "--no-enforce-eager",
                             "--compilation-config", "-O", "-cc"):
        argv.append("--enforce-eager")
    return argv + extra


def runtime_env(env: Mapping[str, str], *, cpu: bool) -> dict[str, str]:
    """Environment variables to add before vLLM is imported (never overriding the caller's)."""
    add: dict[str, str] = {}
    if cpu and "VLLM_CPU_KVCACHE_SPACE" not in env:
        add["VLLM_CPU_KVCACHE_SPACE"] = "1"  # GiB; the default share of host memory fails here
    return add
