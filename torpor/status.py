"""What ``torpor status`` shows: one row per revision, produced by the autoscaler."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class ColdStart:
    """The last cold start of a revision, broken into phases (seconds from the replica's launch).

    ``phases`` maps phase name to seconds since launch, in order: e.g. ``process_started``,
    ``imports_done``, ``weights_resolved``, ``engine_ready``, ``first_token``.
    """

    replica_id: str
    started_at: float  # wall clock
    total_s: float  # launch to ready
    phases: tuple[tuple[str, float], ...] = ()
    warm: bool = False  # served from the warm runtime pool
    engine: str | None = None  # the engine path the replica took and why (its startup report)


@dataclass(frozen=True, slots=True)
class AdapterStatus:
    """One LoRA adapter of a revision (issue 16): where it is loaded, if anywhere."""

    name: str
    state: str  # "loaded", "loading" (on replica_id), "idle" (declared, on no replica), "failed"
    replica_id: str | None = None
    reason: str | None = None  # "failed": the replica's answer to the last load


@dataclass(frozen=True, slots=True)
class CrashLoopStatus:
    """A revision whose replicas keep dying before or soon after ready (``state`` crash-loop)."""

    restarts: int  # deaths in a row that counted; the next start is restart number ``restarts``
    last_error: str  # the last death's meaningful line (its exception), else the actuator's reason
    next_try_at: float  # wall clock: no start before this
    backoff_s: float  # the wait the last death set
    backing_off: bool  # still waiting, as of this status (else the next request starts a try)


@dataclass(frozen=True, slots=True)
class RevisionStatus:
    revision: str  # RevisionRef.key
    namespace: str
    service: str
    name: str
    desired_replicas: int
    ready_replicas: int
    starting_replicas: int = 0
    draining_replicas: int = 0
    # Frozen in place (issue 17): memory held, no CPU, no traffic; a request wakes one.
    suspended_replicas: int = 0
    queued_requests: int = 0
    in_flight_requests: int = 0
    # "ready", "scaled-to-zero", "starting", "suspended" (only suspended replicas), "crash-loop"
    state: str = "scaled-to-zero"
    reason: str | None = None
    crash_loop: CrashLoopStatus | None = None  # while ``state`` is crash-loop
    decision: str = ""  # why the autoscaler wants ``desired_replicas`` (its last decision)
    panic: bool = False
    last_cold_start: ColdStart | None = None
    replicas: tuple[str, ...] = field(default=())  # replica urls, for people debugging
    adapters: tuple[AdapterStatus, ...] = ()  # one row per (adapter, replica); idle: no replica
