"""The seam between the autoscaler's loop and whatever starts and stops replicas.

Two implementations: ``embedded.local_actuator`` (replicas are local runtime processes, the
embedded platform) and ``knative.actuator`` (a revision's Deployment scaled through the
scale subresource). The loop decides *how many*; when it scales down it also says *which* replica
goes, after draining it.

A replica may also be *suspended* (issue 17): frozen in place, holding its memory and its loaded
model, serving nothing, woken in milliseconds by ``resume``. What freezing means is each
actuator's own: the local one stops the replica's whole process group (CPU saved, memory not);
the Knative one has no such operation and raises ``SuspendUnsupported``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from torpor.spec import RevisionSpec
from torpor.status import ColdStart


class Phase(StrEnum):
    STARTING = "starting"
    READY = "ready"
    FAILED = "failed"  # exited or never became ready; see Replica.error
    # Frozen by ``Actuator.suspend``: never published, scraped or health-checked (a frozen
    # process would time every probe out); ``resume`` makes it READY again.
    SUSPENDED = "suspended"


class SuspendUnsupported(Exception):
    """The actuator cannot suspend a replica; the loop stops asking and scales as without."""


@dataclass(frozen=True, slots=True)
class Replica:
    replica_id: str
    revision: str  # RevisionRef.key
    phase: Phase
    url: str | None  # base URL once known
    launched_at: float  # wall clock
    ready_at: float | None = None
    error: str | None = None  # exit code and the runtime's last log lines, when FAILED
    # The meaningful line of those (the replica's exception, not a traceback frame), when the
    # actuator can tell: what ``torpor status`` shows of a crash loop.
    error_line: str | None = None
    cold_start: ColdStart | None = None
    suspended_at: float | None = None  # wall clock, while SUSPENDED


class Actuator(Protocol):
    async def start(self, revision: RevisionSpec, count: int) -> None:
        """Launch ``count`` more replicas of ``revision``; returns once they are launched."""
        ...

    async def stop(self, revision: RevisionSpec, replica_id: str) -> None:
        """Stop one replica the loop has already drained."""
        ...

    async def suspend(self, revision: RevisionSpec, replica_id: str) -> None:
        """Freeze a READY replica that holds no request: it becomes SUSPENDED. Raises
        ``SuspendUnsupported`` where the platform has no such state."""
        ...

    async def resume(self, revision: RevisionSpec, replica_id: str) -> None:
        """Wake a SUSPENDED replica; returns once it answers its health check again (READY).
        A replica that does not wake is FAILED, and the loop replaces it like a crash."""
        ...

    def replicas(self, revision: str) -> Sequence[Replica]:
        """Every replica of a revision that has not been stopped, failed ones included."""
        ...

    async def forget(self, revision: str) -> None:
        """Stop every replica of a revision that was deleted, at once."""
        ...

    async def aclose(self) -> None:
        """Stop every replica this actuator started."""
        ...
