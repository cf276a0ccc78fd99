"""What the loop does about a decision: which replicas, whether to start at all, what to publish.

``decide`` says *how many* replicas a revision should have. Everything else the autoscaler
decides lives here, as pure functions of what it saw, with ``now`` passed in: which replica goes
first, taking back a draining replica instead of a cold start, the crash-loop backoff after
replicas that die before or soon after ready (``StartRecord`` and ``reckon``, over
``autoscaler.crashloop``), when endpoints are published and what they say, and the status a
revision shows. The loop in ``autoscaler.loop`` only executes these, and
``benchmarks/autoscaler_trace.py`` replays traces through the same ``plan``, so the benchmark
that justifies the defaults runs the product's policy, not a copy of it.

No I/O, no clock, no logging.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace

from autoscaler.actuator import Phase, Replica
from autoscaler.crashloop import (
    CrashLoopPolicy,
    CrashLoopState,
    count_death,
    exception_name,
    with_resets,
)
from autoscaler.decide import Decision, Observation, ReplicaLoad
from torpor.bus import ActivatorStats, CrashLoop, Endpoint, RevisionEndpoints


@dataclass(frozen=True, slots=True)
class StartRecord:
    """A revision's replica deaths, as far as starting the next one needs them
    (``autoscaler.crashloop``: which deaths count, the backoff, the resets)."""

    crash: CrashLoopState = field(default_factory=CrashLoopState)
    # The last counted death's error (the actuator's words: a short reason first, then the
    # runtime's log tail), and its meaningful line (the replica's exception), until the count
    # starts over.
    last_error: str | None = None
    last_error_line: str | None = None
    last_served: bool = False  # the last counted death came after the replica was ready
    # Replicas seen ready (or suspended), and when the loop first saw them so: how long one had
    # served when it died decides whether its death counts.
    seen_ready: Mapping[str, float] = field(default_factory=dict)

    @property
    def error_summary(self) -> str | None:
        """What ``torpor status`` shows of the last counted death: its meaningful line when the
        actuator found one, else the actuator's whole error."""
        return self.last_error_line or self.last_error


@dataclass(frozen=True, slots=True)
class Failure:
    """A replica the actuator reports FAILED; the loop stops it."""

    replica_id: str
    error: str
    ready_for_s: float | None = None  # how long it had been ready when it died; None: never
    # Counted toward a crash loop (died before ready, or young): the next start waits
    # ``retry_in_s``, the ``restarts``-th in a row. A death that does not count is replaced at
    # once and published as nothing: the requests held meanwhile wait for the replacement.
    counted: bool = False
    restarts: int = 0
    retry_in_s: float = 0.0

    @property
    def after_ready(self) -> bool:
        return self.ready_for_s is not None


def _was_ready(r: Replica) -> bool:
    return r.phase is Phase.READY or r.phase is Phase.SUSPENDED


def reckon(
    record: StartRecord,
    replicas: Sequence[Replica],
    now: float,
    policy: CrashLoopPolicy,
    served: Collection[str] = (),
) -> tuple[StartRecord, tuple[Failure, ...]]:
    """Fold one tick's replicas into the record: count the deaths that count toward a crash loop
    (``autoscaler.crashloop``), note replicas that became ready, and apply the resets (a replica
    ready for ``stable_s``, a last death older than ``forget_s``). ``served``: replicas known to
    have finished a request (vLLM's success counter); a death after that is not a crash loop's,
    however young (a replica killed or run out of memory under load is replaced at once)."""
    failures: list[Failure] = []
    seen = dict(record.seen_ready)
    crash = record.crash
    for r in replicas:
        if r.phase is not Phase.FAILED:
            continue
        error = r.error or "replica failed"
        since = seen.pop(r.replica_id, None)
        ready_for = None if since is None else max(0.0, now - since)
        if not policy.counts(ready_for) or (ready_for is not None and r.replica_id in served):
            if ready_for is not None and ready_for >= policy.stable_s:
                crash = CrashLoopState()  # it served: whatever killed the others is gone
            failures.append(Failure(r.replica_id, error, ready_for))
            continue
        crash = count_death(crash, now, policy)
        record = replace(
            record,
            last_error=error,
            last_error_line=r.error_line,
            last_served=ready_for is not None,
        )
        failures.append(
            Failure(r.replica_id, error, ready_for, True, crash.restarts, crash.backoff_s)
        )
    present = {r.replica_id for r in replicas}
    seen = {k: v for k, v in seen.items() if k in present}
    for r in replicas:
        if _was_ready(r) and r.replica_id not in seen:
            seen[r.replica_id] = now
    longest = max((now - seen[r.replica_id] for r in replicas if _was_ready(r)), default=None)
    crash = with_resets(crash, longest, now, policy)
    if crash.restarts == 0:
        record = replace(record, last_error=None, last_error_line=None, last_served=False)
    return replace(record, crash=crash, seen_ready=seen), tuple(failures)


def spec_changed(record: StartRecord) -> StartRecord:
    """A changed spec starts the count over: its next start is at once."""
    return replace(
        record, crash=CrashLoopState(), last_error=None, last_error_line=None, last_served=False
    )


def caller_reason(record: StartRecord) -> str:
    """What a caller is told of the last counted death: the actuator's short reason (the first
    line of its error, e.g. "exited with code 1"), and the exception's class when the replica's
    error line names one. The rest of the line and the log tail are the operator's."""
    error = record.last_error or "replica failed"
    first = next((x.strip() for x in error.splitlines() if x.strip()), "replica failed")
    name = exception_name(record.last_error_line)
    return f"{first} ({name})" if name and name not in first else first


def serving(replicas: Sequence[Replica], leaving: Collection[str]) -> list[Replica]:
    """Ready replicas that are not on their way out (draining or being stopped)."""
    return [r for r in replicas if r.phase is Phase.READY and r.replica_id not in leaving]


@dataclass(frozen=True, slots=True)
class Plan:
    """What to do about one decision. Empty when the revision already has what it should."""

    take_back: tuple[str, ...] = ()  # draining replicas kept: their model is already loaded
    start: int = 0  # cold starts
    stop: tuple[str, ...] = ()  # starting replicas given up, suspended ones past their window
    drain: tuple[str, ...] = ()  # ready replicas to drain, and stop once they hold nothing
    held_back: str | None = None  # why starts the decision wants are not made
    republish: bool = False  # publish the endpoints (and failure) again even if unchanged
    resume: tuple[str, ...] = ()  # suspended replicas to wake, before any cold start
    suspend: tuple[str, ...] = ()  # idle ready replicas to freeze


@dataclass(frozen=True, slots=True)
class Suspension:
    """The suspended tier's two windows (``AutoscalingSpec.suspend_after_s`` and
    ``stop_suspended_after_s``) and when each ready replica last had work (``track_idle``)."""

    after_s: float = 0.0  # 0: never suspend
    stop_after_s: float = 300.0
    idle_since: Mapping[str, float] = field(default_factory=dict)


def suspended_load(replica_id: str) -> ReplicaLoad:
    """How ``decide`` sees a suspended replica: ready and idle. It is capacity the revision has
    (so ``decide`` neither cold-starts beside it nor wakes it on its window's memory of past
    load) and it is not scraped: a frozen process would time the scrape out."""
    return ReplicaLoad(replica_id, running=0.0, waiting=0.0)


def track_idle(
    previous: Mapping[str, float], obs: Observation, suspended: Collection[str], now: float
) -> dict[str, float]:
    """Since when each serving replica in ``obs.ready`` has had no work. A replica with work, or
    whose scrape failed, is busy now; so is every replica while an activator holds, forwards or
    has just accepted a request for the revision (its request may be on any of them). Suspended
    replicas are left out: one that wakes starts a fresh idle window."""
    busy_revision = obs.activator_queued > 0 or obs.activator_in_flight > 0 or obs.arrivals > 0
    out: dict[str, float] = {}
    for r in obs.ready:
        if r.replica_id in suspended:
            continue
        busy = busy_revision or r.work is None or r.work > 0
        out[r.replica_id] = now if busy else previous.get(r.replica_id, now)
    return out


def plan(
    decision: Decision,
    obs: Observation,
    replicas: Sequence[Replica],
    draining: Sequence[str],
    record: StartRecord,
    now: float,
    suspension: Suspension | None = None,
) -> Plan:
    """Turn ``decision`` into replica-level steps.

    ``obs`` is what the decision was made on (its ``ready`` loads name the serving replicas, and
    the suspended ones as ``suspended_load``); ``replicas`` are the actuator's non-failed
    replicas; ``draining`` the ones draining now, in the order their drains began (the oldest is
    taken back first).

    Suspended replicas (``suspension``): ``decide`` counts them as idle capacity. They wake only
    for work, never for the window's memory of past load: when a request is held and nothing
    serves, or when the serving replicas are busy and ``decide`` wants more of them; a wake comes
    before any cold start. They leave only by their own window (``stop_after_s`` frozen), or when
    the learned keep-alive's cover is over (``Decision.keepalive_over``), and
    only while ``decide`` wants fewer than the revision has: one that min-scale or the stable
    window still counts on stays parked rather than be stopped and cold-started again. An idle
    window (``after_s`` with no work) freezes a ready replica, never while there is work.
    """
    # A poke while backing off (a request held by an activator that had not heard): waiters
    # get the crash loop at once instead of their timeout.
    republish = obs.poked and record.crash.backing_off(now)
    current = obs.current
    sus = suspension or Suspension()
    parked = sorted(
        (r for r in replicas if r.phase is Phase.SUSPENDED),
        key=lambda r: (-(r.suspended_at or 0.0), r.replica_id),  # the last one frozen first
    )
    parked_ids = {r.replica_id for r in parked}
    serving_loads = [x for x in obs.ready if x.replica_id not in parked_ids]
    serving_now = len(serving_loads) + obs.starting
    held = obs.activator_queued > 0 or obs.poked
    busy = any(x.work is None or x.work > 0 for x in serving_loads) or obs.activator_in_flight > 0
    resume: tuple[str, ...] = ()
    if parked and (held or busy):
        short = decision.desired - serving_now
        if held and serving_now == 0:
            short = max(short, 1)
        resume = tuple(r.replica_id for r in parked[: max(0, short)])
    if decision.desired > current:
        need = decision.desired - current
        # A replica still draining has a loaded model: take it back instead of a cold start.
        take_back = tuple(draining[:need])
        need -= len(take_back)
        held_back = None
        if need > 0 and now < record.crash.retry_at:
            held_back = (
                f"want {need} more, crash-loop back-off {record.crash.retry_at - now:.1f}s"
                f" before restart {record.crash.restarts}"
            )
            need = 0
        return Plan(take_back, need, held_back=held_back, republish=republish, resume=resume)
    stop: tuple[str, ...] = ()
    drain: tuple[str, ...] = ()
    if decision.desired < current:
        excess = current - decision.desired
        starting = [r for r in replicas if r.phase is Phase.STARTING]
        # Replicas still starting hold no requests: they go first, newest first.
        stop = tuple(
            r.replica_id for r in sorted(starting, key=lambda r: r.launched_at, reverse=True)
        )[:excess]
        excess -= len(stop)
        # Then suspended ones past their window; the others absorb the excess where they stand.
        staying = [r for r in parked if r.replica_id not in resume]
        expired = tuple(
            r.replica_id
            for r in staying
            if decision.keepalive_over
            or (r.suspended_at is not None and now - r.suspended_at >= sus.stop_after_s)
        )[: max(0, excess)]
        stop += expired
        excess -= len(staying)
        # Then the ready one with the least work; one whose scrape failed is assumed busy.
        ready = sorted(
            serving_loads, key=lambda x: (x.work is None, x.work if x.work is not None else 0.0)
        )
        drain = tuple(x.replica_id for x in ready[: max(0, excess)])
    suspend: tuple[str, ...] = ()
    if sus.after_s > 0 and not (held or busy or resume):
        suspend = tuple(
            x.replica_id
            for x in serving_loads
            if x.replica_id not in drain
            and now - sus.idle_since.get(x.replica_id, now) >= sus.after_s
        )
    return Plan(stop=stop, drain=drain, republish=republish, resume=resume, suspend=suspend)


def announcement(
    revision: str,
    replicas: Sequence[Replica],
    draining: Collection[str],
    stopping: Collection[str],
    record: StartRecord,
) -> RevisionEndpoints:
    """What the activators are told: every ready replica not being stopped (draining ones
    flagged), and, while the revision is in a crash loop and no replica serves or sleeps, the
    crash loop (the activators answer its requests with it until ``retry_at``) and the last
    death's error as ``failure`` (what an activator that predates ``crash_loop`` answers)."""
    endpoints = tuple(
        Endpoint(r.replica_id, r.url, draining=r.replica_id in draining)
        for r in sorted(replicas, key=lambda r: r.replica_id)
        if r.phase is Phase.READY and r.url and r.replica_id not in stopping
    )
    in_service = any(not e.draining for e in endpoints)
    parked = any(r.phase is Phase.SUSPENDED for r in replicas)  # a request wakes it
    if in_service or parked or not record.crash.looping:
        return RevisionEndpoints(revision, endpoints)
    crash = record.crash
    notice = CrashLoop(
        restarts=crash.restarts,
        retry_at=crash.retry_at,
        reason=caller_reason(record),
        backoff_s=crash.backoff_s,
        served=record.last_served,
    )
    return RevisionEndpoints(revision, endpoints, record.last_error, crash_loop=notice)


def publish_needed(
    last: RevisionEndpoints | None, message: RevisionEndpoints, *, force: bool = False
) -> bool:
    """Publish what changed, and nothing before there is something to say: a revision that never
    had a replica or a failure is not announced as empty (an actuator that has not yet read its
    replicas would otherwise withdraw a previous autoscaler's endpoints). ``force`` republishes an
    unchanged message: a new counted death, a poke while backing off, a new leader."""
    if force:
        return True
    if last is None:
        return bool(message.endpoints) or message.failure is not None
    before = (last.endpoints, last.failure, last.adapter_failures, last.crash_loop)
    return before != (
        message.endpoints,
        message.failure,
        message.adapter_failures,
        message.crash_loop,
    )


def revision_state(
    record: StartRecord, ready: int, starting: int, suspended: int = 0
) -> tuple[str, str | None]:
    """The state ``torpor status`` shows, and its reason. ``crash-loop``: no replica serves and
    a counted death set a wait (``CrashLoopState.looping``), during the wait and the next try."""
    if ready:
        return "ready", None
    if record.crash.looping and not suspended:  # a suspended replica serves once woken
        return "crash-loop", record.error_summary
    if starting:
        return "starting", record.error_summary
    if suspended:
        return "suspended", None
    return "scaled-to-zero", record.error_summary


def arrivals_since(
    seen: Mapping[str, int], stats: Sequence[ActivatorStats]
) -> tuple[int, dict[str, int]]:
    """Requests the activators accepted since their counters were last ``seen`` (by activator
    id), and the counters now: ``Observation.arrivals``. An activator seen for the first time
    sets its baseline (its past is not news); a counter that went back (the activator
    restarted) counts from zero; an activator that stopped reporting is forgotten."""
    arrived = 0
    now: dict[str, int] = {}
    for s in stats:
        before = seen.get(s.activator_id)
        if before is not None:
            arrived += s.requests_total - before if s.requests_total >= before else s.requests_total
        now[s.activator_id] = s.requests_total
    return arrived, now
