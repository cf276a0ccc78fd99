"""Which CPU attention kernels of vLLM a replica uses: the probe's facts and the decision (pure).

vLLM 0.32's CPU attention (`vllm/v1/attention/backends/cpu_attn.py`, `_get_attn_isa`) takes its
"amx" kernels for bf16 whenever torch reports AMX tiles, but never asks Linux for the AMX tile
state (`arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`), so its first tile instruction
kills the engine with SIGILL unless something else in the process asked first (oneDNN does, for
bf16 matmuls of some sizes only: issue 21). The probe (`runtime.cpu_engine_probe`, a child
process) runs the real kernels on a tiny input, each candidate in its own grandchild; `decide`
turns what it saw into the path every vLLM process of a replica takes (`runtime.vllm_plugin`
applies it): "amx" with the permission requested, or the kernels vLLM takes without AMX.

Standard library only: the embedded platform (`torpor doctor`) reads these types without torch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# The probe's JSON format; part of the cache key, so a new format is probed again.
PROBE_FORMAT = 1

AMX = "amx"
OK = "ok"
SIGILL = "sigill"
# Outcomes: ok; sigill (exit -4); crashed (another signal or exit code); error (the kernel
# raised); wrong (it ran and answered wrongly); timeout; skipped (not tried).
OUTCOMES = (OK, SIGILL, "crashed", "error", "wrong", "timeout", "skipped")

# The dtypes vLLM serves without its bf16 kernels ("--dtype float32"): the way out when no bf16
# attention kernel runs.
FLOAT32_NAMES = ("float32", "float")

# vLLM 0.32's `_get_attn_isa` without AMX (block size a multiple of 32), by `platform.machine()`.
_FALLBACK_ISA = {
    "x86_64": "vec",
    "amd64": "vec",
    "i686": "vec",
    "aarch64": "neon",
    "arm64": "neon",
    "ppc64le": "vsx",
    "s390x": "vxe",
    "riscv64": "vec",
}


def fallback_isa(machine: str) -> str:
    """The kernels vLLM takes without AMX on this architecture."""
    return _FALLBACK_ISA.get(machine.lower(), "vec")


@dataclass(frozen=True)
class CandidateSpec:
    """One kernel path to try: vLLM's `isa`, on `dtype`, with or without the AMX permission."""

    name: str
    isa: str
    dtype: str
    request_amx: bool


def plan_candidates(machine: str, amx_reported: bool) -> tuple[CandidateSpec, ...]:
    """What the probe tries, in order.

    With AMX reported: "amx" (permission requested), then "amx-unrequested", vLLM's own behaviour,
    which shows whether this machine needs the permission (SIGILL here is issue 21). Always the
    path without AMX in bf16, and in float32 (the way out when no bf16 kernel runs).
    """
    fb = fallback_isa(machine)
    out: list[CandidateSpec] = []
    if amx_reported:
        out.append(CandidateSpec(AMX, AMX, "bfloat16", True))
        out.append(CandidateSpec("amx-unrequested", AMX, "bfloat16", False))
    out.append(CandidateSpec(fb, fb, "bfloat16", False))
    out.append(CandidateSpec(f"{fb}-float32", fb, "float32", False))
    return tuple(out)


@dataclass(frozen=True)
class Candidate:
    """What one grandchild did."""

    name: str
    isa: str
    dtype: str
    request_amx: bool
    outcome: str  # one of OUTCOMES
    exit_code: int | None = None  # the grandchild's (negative: killed by that signal)
    detail: str = ""
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.outcome == OK

    def said(self) -> str:
        """`vec: ok`, `amx: SIGILL (exit -4)`, ..."""
        text = self.outcome if self.outcome != SIGILL else "SIGILL"
        if self.exit_code not in (None, 0):
            text += f" (exit {self.exit_code})"
        return f"{self.name}: {text}"


@dataclass(frozen=True)
class ProbeFacts:
    """What the probe child reports: what torch says about the CPU and how each kernel ran."""

    machine: str  # platform.machine()
    cpu_model: str
    torch_version: str
    vllm_version: str
    kernels: str  # the vLLM kernel library loaded, as vLLM's CpuPlatform.import_kernels picks
    amx_tile: bool  # torch.cpu._is_amx_tile_supported()
    avx512: bool
    avx512_bf16: bool | None  # None: this torch cannot say
    avx2: bool | None
    capability: str  # torch.backends.cpu.get_cpu_capability()
    candidates: tuple[Candidate, ...]
    seconds: float = 0.0
    amx_fp16: bool | None = None

    @property
    def fallback(self) -> str:
        return fallback_isa(self.machine)

    def candidate(self, name: str) -> Candidate | None:
        return next((c for c in self.candidates if c.name == name), None)

    def isa_extensions(self) -> str:
        """What torch reports, in a line: `AVX512 (avx512 avx512_bf16, no amx)`."""
        flags = [("amx", self.amx_tile), ("amx_fp16", self.amx_fp16), ("avx512", self.avx512),
                 ("avx512_bf16", self.avx512_bf16), ("avx2", self.avx2)]
        have = [n for n, v in flags if v]
        lacks = [n for n, v in flags if v is False and n in ("amx", "avx512", "avx512_bf16")]
        return f"{self.capability} ({' '.join(have) or 'none'}" + (
            f"; no {' '.join(lacks)})" if lacks else ")")

    def to_json(self) -> dict[str, Any]:
        return {
            "format": PROBE_FORMAT,
            "machine": self.machine,
            "cpu_model": self.cpu_model,
            "torch_version": self.torch_version,
            "vllm_version": self.vllm_version,
            "kernels": self.kernels,
            "torch_reports": {
                "amx_tile": self.amx_tile,
                "amx_fp16": self.amx_fp16,
                "avx512": self.avx512,
                "avx512_bf16": self.avx512_bf16,
                "avx2": self.avx2,
                "capability": self.capability,
            },
            "candidates": [
                {"name": c.name, "isa": c.isa, "dtype": c.dtype, "request_amx": c.request_amx,
                 "outcome": c.outcome, "exit_code": c.exit_code, "detail": c.detail,
                 "seconds": c.seconds}
                for c in self.candidates
            ],
            "seconds": self.seconds,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ProbeFacts:
        """`ValueError` on anything that is not a probe report of this format."""
        try:
            if data.get("format") != PROBE_FORMAT:
                raise ValueError(f"probe format {data.get('format')!r}, not {PROBE_FORMAT}")
            tr = data["torch_reports"]
            candidates = tuple(
                Candidate(
                    name=_s(c["name"]), isa=_s(c["isa"]), dtype=_s(c["dtype"]),
                    request_amx=_b(c["request_amx"]), outcome=_outcome(c["outcome"]),
                    exit_code=_opt_int(c.get("exit_code")), detail=_s(c.get("detail", "")),
                    seconds=float(c.get("seconds", 0.0)),
                )
                for c in data["candidates"]
            )
            return cls(
                machine=_s(data["machine"]), cpu_model=_s(data["cpu_model"]),
                torch_version=_s(data["torch_version"]), vllm_version=_s(data["vllm_version"]),
                kernels=_s(data["kernels"]), amx_tile=_b(tr["amx_tile"]),
                avx512=_b(tr["avx512"]), avx512_bf16=_opt_b(tr.get("avx512_bf16")),
                avx2=_opt_b(tr.get("avx2")), capability=_s(tr["capability"]),
                candidates=candidates, seconds=float(data.get("seconds", 0.0)),
                amx_fp16=_opt_b(tr.get("amx_fp16")),
            )
        except (KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"not a probe report: {e!r}") from None


@dataclass(frozen=True)
class EnginePath:
    """The decision: vLLM's attention kernels for bf16 (None: none runs here) and why."""

    attention: str | None  # "amx", "vec", ...; None: no bf16 path works on this machine
    reason: str
    float32_ok: bool = False  # the way out when attention is None: vLLM's float32 path ran
    fallback: str = "vec"  # what vLLM takes without AMX here (float32 uses it too)

    @property
    def requests_amx(self) -> bool:
        return self.attention == AMX

    def line(self) -> str:
        """What the replica's start-up says: `cpu attention=vec (torch reports no AMX tiles)`."""
        return f"cpu attention={self.attention or 'none'} ({self.reason})"


def decide(facts: ProbeFacts) -> EnginePath:
    """The path for bf16 from what the probe saw; pure."""
    fb_name = facts.fallback
    fb = facts.candidate(fb_name)
    fb32 = facts.candidate(f"{fb_name}-float32")
    float32_ok = fb32 is not None and fb32.ok

    def path(attention: str | None, reason: str) -> EnginePath:
        return EnginePath(attention, reason, float32_ok, fb_name)

    if facts.amx_tile:
        amx = facts.candidate(AMX)
        bare = facts.candidate("amx-unrequested")
        if amx is not None and amx.ok:
            without = ""
            if bare is not None and not bare.ok:
                without = f"; without the request it dies ({bare.said()})"
            return path(AMX, "torch reports AMX tiles and vLLM's amx attention kernel ran with "
                             f"the AMX permission requested{without}")
        amx_said = amx.said() if amx is not None else "amx: not tried"
        if fb is not None and fb.ok:
            return path(fb_name, f"torch reports AMX tiles but vLLM's amx attention kernel failed "
                                 f"with the permission requested ({amx_said}); its {fb_name} "
                                 "kernel ran")
        tried = "; ".join(c.said() for c in facts.candidates if c.dtype == "bfloat16")
        return path(None, f"no bf16 attention kernel of vLLM ran here ({tried})")
    if fb is not None and fb.ok:
        return path(fb_name, "torch reports no AMX tiles")
    said = fb.said() if fb is not None else f"{fb_name}: not tried"
    return path(None, f"torch reports no AMX tiles and vLLM's {fb_name} attention kernel "
                      f"failed in bf16 ({said})")


class EngineUnavailable(RuntimeError):
    """No CPU attention path of vLLM works here for what this replica was asked to serve."""


def requested_dtype(engine_args: Sequence[str]) -> str | None:
    """The value of vLLM's `--dtype` among a replica's engine arguments (the last one wins)."""
    value: str | None = None
    args = list(engine_args)
    for i, a in enumerate(args):
        if a == "--dtype" and i + 1 < len(args):
            value = args[i + 1]
        elif a.startswith("--dtype="):
            value = a.split("=", 1)[1]
    return value.lower() if value is not None else None


@dataclass(frozen=True)
class ReplicaEngine:
    """What one replica runs with: the value for `$TORPOR_CPU_ATTN_ISA` and its start-up line."""

    isa: str
    line: str


def for_replica(path: EnginePath, engine_args: Sequence[str], vllm_version: str) -> ReplicaEngine:
    """The replica's engine path; `EngineUnavailable` (naming cause and way out) when none works.

    A replica that asked for float32 runs on vLLM's path without AMX when no bf16 path works.
    """
    if path.attention is not None:
        return ReplicaEngine(path.attention, path.line())
    if requested_dtype(engine_args) in FLOAT32_NAMES and path.float32_ok:
        return ReplicaEngine(path.fallback,
                             f"cpu attention={path.fallback} float32 only ({path.reason})")
    way_out = (
        "serve it with --dtype float32 (vLLM's float32 attention kernels ran on this machine "
        "and do not use the bf16 AMX kernels)"
        if path.float32_ok
        else "vLLM's float32 attention kernels failed here too: use another machine type"
    )
    raise EngineUnavailable(
        f"no CPU attention kernel of vLLM {vllm_version} works on this machine for bf16: "
        f"{path.reason}. Way out: {way_out}; `torpor doctor --reprobe` shows what was tried"
    )


def _s(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {value!r}")
    return value


def _b(value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"expected true or false, got {value!r}")
    return value


def _opt_b(value: Any) -> bool | None:
    return None if value is None else _b(value)


def _opt_int(value: Any) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"expected an integer, got {value!r}")
    return value


def _outcome(value: Any) -> str:
    if value not in OUTCOMES:
        raise TypeError(f"unknown outcome {value!r}")
    return str(value)
