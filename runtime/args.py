"""The runtime's own arguments, resolved once at the edge (the contract is `runtime.contract`).

`ServeArgs` is what was given; `LaunchConfig` is what this replica runs with: each setting not
given as a flag comes from the environment (Knative's container contract, then torpor's own
variables), then from a default. Everything the runtime does not own goes to vLLM unchanged.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from runtime.contract import (
    ALL_INTERFACES,
    DEFAULT_PORT,
    ENV_CACHE_BUDGET,
    ENV_CACHE_DIR,
    ENV_DRAIN_TIMEOUT,
    ENV_FORK_ENGINE,
    ENV_HOME,
    ENV_HOSTNAME,
    ENV_K_CONFIGURATION,
    ENV_K_REVISION,
    ENV_K_SERVICE,
    ENV_PORT,
    LOOPBACK_HOST,
    ContractError,
    ServeArgs,
)

# Seconds vLLM may spend finishing in-flight requests after SIGTERM (its --shutdown-timeout;
# vLLM's own default 0 aborts them). Under Kubernetes' default 30 s grace period; on Knative the
# grace period is the revision's timeoutSeconds (300 s by default) and queue-proxy has already
# drained its requests before the container's SIGTERM, so this is the runtime's safety net.
DEFAULT_DRAIN_TIMEOUT_S = 25.0


@dataclass(frozen=True)
class KnativeIdentity:
    """Knative's `K_SERVICE` / `K_CONFIGURATION` / `K_REVISION`; all None off Knative."""

    service: str | None = None
    configuration: str | None = None
    revision: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> KnativeIdentity:
        return cls(env.get(ENV_K_SERVICE) or None, env.get(ENV_K_CONFIGURATION) or None,
                   env.get(ENV_K_REVISION) or None)

    def labels(self) -> dict[str, str]:
        """The identity as metric labels: only those set (none on the embedded platform)."""
        pairs = (("service", self.service), ("configuration", self.configuration),
                 ("revision", self.revision))
        return {k: v for k, v in pairs if v is not None}


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
    drain_timeout_s: float
    engine_args: tuple[str, ...]
    identity: KnativeIdentity = KnativeIdentity()
    # The replica's platform credential (`runtime.gate`); never printed.
    platform_token: str | None = field(default=None, repr=False)


def torpor_home(env: Mapping[str, str]) -> Path:
    return Path(env.get(ENV_HOME) or Path.home() / ".torpor").expanduser()


def cache_dir_from(env: Mapping[str, str]) -> Path:
    """`$TORPOR_CACHE_DIR` (the images and the cache warmer set it), else `$TORPOR_HOME/cache`."""
    given = env.get(ENV_CACHE_DIR)
    return Path(given).expanduser() if given else torpor_home(env) / "cache"


def _env_number(env: Mapping[str, str], name: str, kind: type[int] | type[float]) -> float | None:
    text = env.get(name)
    if not text:
        return None
    try:
        value = kind(text)
    except ValueError:
        raise ContractError(f"${name} must be a number, got {text!r}") from None
    if value < 0:
        raise ContractError(f"${name} must not be negative, got {text!r}")
    return value


def listen_address(given: ServeArgs, env: Mapping[str, str]) -> tuple[str, int]:
    """Flags win; else Knative's `$PORT` on every interface; else loopback:8000."""
    port = given.port
    env_port = env.get(ENV_PORT)
    if port is None and env_port:
        if not env_port.isdigit() or not 0 < int(env_port) < 65536:
            raise ContractError(f"${ENV_PORT} must be a TCP port, got {env_port!r}")
        port = int(env_port)
    host = given.host
    if host is None:
        # Knative's queue-proxy reaches the container on the pod IP, not on loopback.
        host = ALL_INTERFACES if env_port else LOOPBACK_HOST
    return host, DEFAULT_PORT if port is None else port


def replica_id_from(given: ServeArgs, env: Mapping[str, str], pid: int) -> str:
    if given.replica_id:
        return given.replica_id
    revision = env.get(ENV_K_REVISION)
    if revision:
        # In a Knative pod HOSTNAME is the pod's name: unique, and what kubectl shows.
        return env.get(ENV_HOSTNAME) or f"{revision}-pid-{pid}"
    return f"pid-{pid}"


def resolve(given: ServeArgs, env: Mapping[str, str], *, pid: int | None = None) -> LaunchConfig:
    """What this replica runs with; `ContractError` on a bad environment value."""
    host, port = listen_address(given, env)
    budget = given.cache_budget_bytes
    if budget is None:
        env_budget = _env_number(env, ENV_CACHE_BUDGET, int)
        budget = None if env_budget is None else int(env_budget)
    fork = given.fork_engine
    if fork is None:
        fork = env.get(ENV_FORK_ENGINE, "1").lower() not in ("0", "false", "no")
    drain = given.drain_timeout_s
    if drain is None:
        drain = _env_number(env, ENV_DRAIN_TIMEOUT, float)
    if drain is not None and drain < 0:
        raise ContractError(f"--drain-timeout must not be negative, got {drain}")
    return LaunchConfig(
        source=given.model,
        host=host,
        port=port,
        # Clients ask for the model by the name in the manifest, not by the cache path.
        served_model_name=given.served_model_name or given.model,
        replica_id=replica_id_from(given, env, os.getpid() if pid is None else pid),
        launched_at=given.launched_at,
        cache_dir=Path(given.cache_dir).expanduser() if given.cache_dir else cache_dir_from(env),
        cache_budget_bytes=budget,
        use_cache=given.use_cache,
        fork_engine=fork,
        drain_timeout_s=DEFAULT_DRAIN_TIMEOUT_S if drain is None else drain,
        engine_args=given.engine_args,
        identity=KnativeIdentity.from_env(env),
    )


def parse_launch_args(argv: Sequence[str], env: Mapping[str, str]) -> LaunchConfig:
    """`ServeArgs.parse` then `resolve`; `ContractError` on anything bad."""
    return resolve(ServeArgs.parse(argv), env)


def _has_flag(args: Sequence[str], *names: str) -> bool:
    return any(a == n or a.startswith(n + "=") for a in args for n in names)


def vllm_argv(cfg: LaunchConfig, model_path: Path, *, cpu: bool) -> list[str]:
    """The argument list for vLLM's OpenAI server.

    The engine's arguments first, the runtime's after them: vLLM's argparse parser lets the
    last occurrence of a flag win and takes unique prefixes, so an engine argument spelled
    `--ho=...` or `--served_model_name=...` can never replace the address or name set here.
    """
    extra = list(cfg.engine_args)
    argv = [
        *extra,
        "--host", cfg.host,
        "--port", str(cfg.port),
        "--model", str(model_path),
        "--served-model-name", cfg.served_model_name,
    ]
    # torch.compile adds ~16 s to a CPU start for nothing a tiny model needs (measured here).
    if cpu and not _has_flag(extra, "--enforce-eager", "--no-enforce-eager",
                             "--compilation-config", "-O", "-cc"):
        argv.append("--enforce-eager")
    if not _has_flag(extra, "--shutdown-timeout"):
        # vLLM takes whole seconds; 0 would abort in-flight requests, so round a fraction up.
        argv.append(f"--shutdown-timeout={math.ceil(cfg.drain_timeout_s)}")
    return argv


def runtime_env(
    env: Mapping[str, str], *, cpu: bool, engine_args: Sequence[str] = ()
) -> dict[str, str]:
    """Environment variables to add before vLLM is imported (never overriding the caller's)."""
    add: dict[str, str] = {}
    if _has_flag(engine_args, "--enable-lora", "--enable_lora"):
        # LoRA adapters are loaded on demand (the autoscaler calls /v1/load_lora_adapter),
        # which vLLM serves only with this set.
        add["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"
    if cpu and "VLLM_CPU_KVCACHE_SPACE" not in env:
        add["VLLM_CPU_KVCACHE_SPACE"] = "1"  # GiB; the default share of host memory fails here
    return add
