"""Startup phases: when each step of a cold start finished, as metrics and one JSON line.

Values are seconds since `launched_at` (the actuator's wall clock at spawn, or the process's
own start when run by hand), so the actuator can line them up with what it saw. The line is a
`runtime.contract.PhaseReport`.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Mapping
from typing import IO, Any

from runtime.contract import PHASES, PhaseReport


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
    """Marks phases; reports them as `PhaseReport` lines and on the phase gauge.

    `labels` (Knative's identity, when there is one) go on the report and on every gauge sample.
    """

    def __init__(self, *, replica_id: str, launched_at: float, warm: bool,
                 out: IO[str] | None = None, gauge: Any = None,
                 labels: Mapping[str, str] | None = None, engine: str | None = None) -> None:
        self.replica_id = replica_id
        self.launched_at = launched_at
        self.warm = warm
        self.labels = dict(labels or {})
        self.engine = engine  # the engine path taken and why, for the startup report
        self.phases: dict[str, float] = {}
        self._out = out
        self._gauge = gauge

    def set_gauge(self, gauge: Any) -> None:
        """Attach the gauge; phases recorded before it existed show up on it too."""
        self._gauge = gauge
        for phase, value in self.phases.items():
            self._set(phase, value)

    def mark(self, phase: str, at: float | None = None) -> float:
        value = round((time.time() if at is None else at) - self.launched_at, 4)
        self.phases[phase] = value
        self._set(phase, value)
        return value

    def _set(self, phase: str, value: float) -> None:
        if self._gauge is not None:
            self._gauge.labels(phase=phase, **self.labels).set(value)

    def report(self, event: str = "startup") -> PhaseReport:
        return PhaseReport(
            event=event,
            replica_id=self.replica_id,
            launched_at=self.launched_at,
            warm=self.warm,
            phases=tuple((p, self.phases[p]) for p in PHASES if p in self.phases),
            service=self.labels.get("service"),
            configuration=self.labels.get("configuration"),
            revision=self.labels.get("revision"),
            engine=self.engine,
        )

    def startup_line(self) -> str:
        return self.report("startup").encode()

    def emit(self, event: str = "startup") -> None:
        out = self._out or sys.stdout
        out.write(self.report(event).encode() + "\n")
        out.flush()


def make_phase_gauge(label_names: tuple[str, ...] = ()) -> Any:
    """A gauge on prometheus_client's global registry: vLLM's /metrics serves that registry."""
    from prometheus_client import Gauge

    return Gauge(
        "torpor_runtime_startup_phase_seconds",
        "Seconds from launch to the end of each startup phase of this replica",
        ["phase", *label_names],
    )
