"""When a revision's replicas keep dying: the kubelet's CrashLoopBackOff, as pure functions.

A replica's death *counts* when it died before it became ready, or within ``young_s`` of
becoming ready without having finished a request (a replica whose engine dies at its first
request, as vLLM's worker does on a CPU it was not built for, is ready for a second or two and
finishes nothing; one killed or run out of memory under load has finished requests, vLLM's
``request_success_total`` says so, and is replaced at once: ``autoscaler.plan.reckon``).
Counted deaths in a row are the revision's ``restarts``; the start after the n-th one waits
``CrashLoopPolicy.backoff_s(n)``: none after the first (a single death is replaced at once),
then ``initial_backoff_s`` doubling to
``max_backoff_s``: 0, 10, 20, 40, 80, 160, 300, 300, ... seconds, as the kubelet's
``backOff.Next`` for a container. It never gives up: it keeps trying at the cap.

The count starts over, as the kubelet's does, when a replica has been ready for ``stable_s``
(10 minutes: it serves, whatever killed the earlier ones), and when the last counted death is
older than ``forget_s`` (10 minutes, the kubelet's twice the cap). A death between ``young_s`` and
``stable_s`` after ready neither counts nor resets: the replica is replaced at once. A changed
spec starts over too (``autoscaler.plan.spec_changed``).

A revision is *in a crash loop* once a counted death set a wait (the second in a row, by
default): while none of its replicas serves, the activators answer its requests at once with
``503 replica_crash_loop`` until ``retry_at``, and ``torpor status`` shows ``crash-loop``. After
``retry_at`` the next request (or min-scale) starts the next try.

No I/O, no clock: ``now`` is passed in.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class CrashLoopPolicy:
    """How the autoscaler answers replicas that keep dying (the kubelet's constants)."""

    initial_backoff_s: float = 10.0  # the wait before the second restart in a row
    max_backoff_s: float = 300.0  # the cap: 5 minutes, as the kubelet's
    # A replica that dies within this of becoming ready counts toward a crash loop. A minute:
    # a replica that cannot serve at all (its engine dies at the first forward, its first batch
    # runs out of memory) dies within seconds of its first request, and at zero that request is
    # what it became ready for; a replica that served for a minute has answered requests.
    young_s: float = 60.0
    stable_s: float = 600.0  # ready this long: the count starts over (the kubelet's 10 minutes)
    forget_s: float = 600.0  # a last counted death older than this is forgotten (2 x the cap)

    def __post_init__(self) -> None:
        for name in ("initial_backoff_s", "max_backoff_s", "young_s", "stable_s", "forget_s"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"CrashLoopPolicy.{name} must not be negative")
        if self.stable_s < self.young_s:
            raise ValueError("CrashLoopPolicy.stable_s must not be shorter than young_s")

    def backoff_s(self, restarts: int) -> float:
        """The wait before the start that follows the ``restarts``-th counted death in a row."""
        if restarts <= 1:
            return 0.0
        return min(self.max_backoff_s, self.initial_backoff_s * 2.0 ** (restarts - 2))

    def counts(self, ready_for_s: float | None) -> bool:
        """Whether a death after ``ready_for_s`` seconds of readiness (None: never ready)
        counts toward a crash loop."""
        return ready_for_s is None or ready_for_s < self.young_s


@dataclass(frozen=True, slots=True)
class CrashLoopState:
    """A revision's counted deaths, as far as the backoff needs them."""

    restarts: int = 0  # counted deaths in a row; the next start is restart number ``restarts``
    died_at: float = 0.0  # when the last counted death was seen
    backoff_s: float = 0.0  # the wait that death set (0: replaced at once, no crash loop)
    retry_at: float = 0.0  # no start before this

    @property
    def looping(self) -> bool:
        """A counted death set a wait: the revision is in a crash loop (until a reset)."""
        return self.restarts > 0 and self.backoff_s > 0

    def backing_off(self, now: float) -> bool:
        return self.looping and now < self.retry_at


def count_death(state: CrashLoopState, now: float, policy: CrashLoopPolicy) -> CrashLoopState:
    """One more counted death, seen at ``now``: the next start waits ``backoff_s``."""
    fresh = state.restarts == 0 or now - state.died_at >= policy.forget_s
    restarts = 1 if fresh else state.restarts + 1
    wait = policy.backoff_s(restarts)
    return CrashLoopState(restarts=restarts, died_at=now, backoff_s=wait, retry_at=now + wait)


def with_resets(
    state: CrashLoopState, ready_for_s: float | None, now: float, policy: CrashLoopPolicy
) -> CrashLoopState:
    """The state with the resets applied: a replica ready for ``stable_s`` (``ready_for_s``, the
    longest any live replica has been ready; None if none is), or a last counted death older than
    ``forget_s``, starts the count over."""
    if state.restarts == 0:
        return state
    if ready_for_s is not None and ready_for_s >= policy.stable_s:
        return CrashLoopState()
    if now - state.died_at >= policy.forget_s:
        return CrashLoopState()
    return state


_EXCEPTION = re.compile(r"^([A-Za-z_][\w.]*?)(?::\s|:$|$)")


def exception_name(line: str | None) -> str | None:
    """The exception class an error line names (``RuntimeError`` of ``RuntimeError: boom``,
    ``EngineDeadError`` of ``vllm.v1.engine.exceptions.EngineDeadError: ...``), if it names one.

    What a caller may be told of a replica's death besides the actuator's short reason: the
    rest of the line (paths, expanded values) is the operator's (``torpor status``)."""
    if not line:
        return None
    m = _EXCEPTION.match(line.strip())
    if m is None:
        return None
    name = m.group(1).rpartition(".")[2]
    if not name[:1].isupper() or not name.endswith(("Error", "Exception", "Exit", "Interrupt")):
        return None
    return name
