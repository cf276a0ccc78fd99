"""Startup phases: when each step of a cold start finished, as metrics and one JSON line.

Values are seconds since `launched_at` (the actuator's wall clock at spawn, or the process's
own start when run by hand), so the actuator can line them up with what it saw.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import IO, Any

# engine_built: vLLM's engine core, worker, weights in memory, KV cache; engine_ready: the
# OpenAI app on top answers /health.
PHASES = ("process_started", "imports_done", "weights_resolved", "engine_built",
          "engine_ready", "first_token_served")


def process_start_time() -> float:
    """Wall-clock time this process was created (Linux /proc), else now."""
    try:
        with open(f"/proc/{os.getpid()}/stat") as f:
            # Field 22 counts clock ticks since boot; the command name (field 2) may hold spaces.
            fields = f.read().rsplit(")", 1)[1].split()
        started_after_boot = int(fields[19]) / os.sysconf("SC_CLK_TCK")
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        # /proc/stat's btime is whole seconds; uptime has centiseconds.
        return time.time() - (uptime - started_after_boot)
    except (OSError, ValueError, IndexError):
        return time.time()


class PhaseRecorder:
    def __init__(self, *, replica_id: str, launched_at: float, warm: bool,
                 out: IO[str] | None = None, gauge: Any = None) -> None:
        self.replica_id = replica_id
        self.launched_at = launched_at
        self.warm = warm
        self.phases: dict[str, float] = {}
        self._out = out
        self._gauge = gauge

    def mark(self, phase: str, at: float | None = None) -> float:
        value = round((time.time() if at is None else at) - self.launched_at, 4)
        self.phases[phase] = value
        if self._gauge is not None:
            self._gauge.labels(phase=phase).set(value)
        return value

    def startup_line(self) -> str:
        return json.dumps({
            "event": "startup",
            "replica_id": self.replica_id,
            "launched_at": self.launched_at,
            "warm": self.warm,
            "phases": {p: self.phases[p] for p in PHASES if p in self.phases},
        })

    def emit(self, event: str = "startup") -> None:
        out = self._out or sys.stdout
        if event == "startup":
            line = self.startup_line()
        else:
            line = json.dumps({"event": event, "replica_id": self.replica_id,
                               "phases": self.phases})
        out.write(line + "\n")
        out.flush()


def make_phase_gauge() -> Any:
    """A gauge on prometheus_client's global registry: vLLM's /metrics serves that registry."""
    from prometheus_client import Gauge

    return Gauge(
        "torpor_runtime_startup_phase_seconds",
        "Seconds from launch to the end of each startup phase of this replica",
        ["phase"],
    )
