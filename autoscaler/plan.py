"""What the loop does about a decision: which replicas, whether to start at all, what to publish.

``decide`` says *how many* replicas a revision should have. Everything else the autoscaler
decides lives here, as pure functions of what it saw, with ``now`` passed in: which replica goes
first, taking back a draining replica instead of a cold start, start-up backoff and "failed until
the spec changes" (``StartRecord`` and ``reckon``), when endpoints are published and what they
say, and the status a revision shows. The loop in ``autoscaler.loop`` only executes these, and
``benchmarks/autoscaler_trace.py`` replays traces through the same ``plan``, so the benchmark
that justifies the defaults runs the product's policy, not a copy of it.

No I/O, no clock, no logging.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace

from autoscaler.actuator import Phase, Replica
from autoscaler.decide import Decision, Observation, ReplicaLoad
from torpor.bus import ActivatorStats, Endpoint, RevisionEndpoints


@dataclass(frozen=True, slots=True)
class StartPolicy:
    """How the autoscaler answers replicas that fail to start."""

    max_failures: int = 5  # consecutive start-up failures before the revision is marked failed
    backoff_base_s: float = 1.0  # wait after the first failure, doubling with each next one
    backoff_cap_s: float = 60.0

    def __post_init__(self) -> None:
        if self.max_failures < 1:
            raise ValueError(f"max_failures must be at least 1, not {self.max_failures}")
        if self.backoff_base_s < 0 or self.backoff_cap_s < 0:
            raise ValueError("backoff_base_s and backoff_cap_s must not be negative")

    def backoff_s(self, failures: int) -> float:
        return min(self.backoff_cap_s, self.backoff_base_s * 2.0 ** max(0, failures - 1))


@dataclass(frozen=True, slots=True)
class StartRecord:
    """A revision's start-up history, as far as the autoscaler needs it."""

    failures: int = 0  # consecutive start-up failures
    last_error: str | None = None  # the last one's error, until a replica becomes ready
    backoff_until: float = 0.0  # no start before this
    failed_reason: str | None = None  # set after max_failures: no start until the spec changes
    seen_ready: frozenset[str] = frozenset()  # replicas that have served: their death is a crash


@dataclass(frozen=True, slots=True)
class Failure:
    """A replica the actuator reports FAILED; the loop stops it."""

    replica_id: str
    error: str
    # Died after serving. Not a start-up failure: publishing it as the revision's failure would
    # answer every request held at zero with an error at once, while a replacement is on its way.
    crashed: bool
    in_a_row: int = 0  # start-up failures in a row, this one included
    retry_in_s: float = 0.0  # the backoff this start-up failure set
    marked_failed: bool = False  # this failure marked the revision failed


def reckon(
    record: StartRecord, replicas: Sequence[Replica], now: float, policy: StartPolicy
) -> tuple[StartRecord, tuple[Failure, ...]]:
    """Fold one tick's replicas into the start-up record: count start-up failures (backing off
    exponentially, marking the revision failed after ``max_failures`` in a row), and clear the
    count once a replica becomes ready."""
    failures: list[Failure] = []
    for r in replicas:
        if r.phase is not Phase.FAILED:
            continue
        error = r.error or "replica failed"
        if r.replica_id in record.seen_ready:
            record = replace(record, seen_ready=record.seen_ready - {r.replica_id})
            failures.append(Failure(r.replica_id, error, crashed=True))
            continue
        count = record.failures + 1
        delay = policy.backoff_s(count)
        marked = count >= policy.max_failures and record.failed_reason is None
        record = replace(
            record,
            failures=count,
            last_error=error,
            backoff_until=now + delay,
            failed_reason=(
                f"{count} start-up failures in a row; last: {error}"
                if marked
                else record.failed_reason
            ),
        )
        failures.append(Failure(r.replica_id, error, False, count, delay, marked))
    for r in replicas:
        if r.phase is Phase.READY and r.replica_id not in record.seen_ready:
            record = replace(
                record,
                seen_ready=record.seen_ready | {r.replica_id},
                failures=0,
                last_error=None,
            )
    return record, tuple(failures)


def spec_changed(record: StartRecord) -> StartRecord:
    """A changed spec gets a fresh chance after being marked failed."""
    return replace(record, failures=0, failed_reason=None, backoff_until=0.0)


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
    before any cold start. They leave only by their own window (``stop_after_s`` frozen), and
    only while ``decide`` wants fewer than the revision has: one that min-scale or the stable
    window still counts on stays parked rather than be stopped and cold-started again. An idle
    window (``after_s`` with no work) freezes a ready replica, never while there is work.
    """
    # Waiters held at zero get the reason at once instead of their timeout.
    republish = obs.poked and record.failed_reason is not None
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
        if need > 0 and record.failed_reason is not None:
            held_back, need = f"failed: {record.failed_reason}", 0
        elif need > 0 and now < record.backoff_until:
            held_back = (
                f"want {need} more, backing off {record.backoff_until - now:.1f}s"
                f" after {record.failures} failures"
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
            if r.suspended_at is not None and now - r.suspended_at >= sus.stop_after_s
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
    flagged), and, while none serves, why the revision cannot start."""
    endpoints = tuple(
        Endpoint(r.replica_id, r.url, draining=r.replica_id in draining)
        for r in sorted(replicas, key=lambda r: r.replica_id)
        if r.phase is Phase.READY and r.url and r.replica_id not in stopping
    )
    in_service = any(not e.draining for e in endpoints)
    failure = None if in_service else (record.failed_reason or record.last_error)
    return RevisionEndpoints(revision, endpoints, failure)


def publish_needed(
    last: RevisionEndpoints | None, message: RevisionEndpoints, *, force: bool = False
) -> bool:
    """Publish what changed, and nothing before there is something to say: a revision that never
    had a replica or a failure is not announced as empty (an actuator that has not yet read its
    replicas would otherwise withdraw a previous autoscaler's endpoints). ``force`` republishes an
    unchanged message: a new start-up failure, a poke of a failed revision, a new leader."""
    if force:
        return True
    if last is None:
        return bool(message.endpoints) or message.failure is not None
    before = (last.endpoints, last.failure, last.adapter_failures)
    return before != (message.endpoints, message.failure, message.adapter_failures)


def revision_state(
    record: StartRecord, ready: int, starting: int, suspended: int = 0
) -> tuple[str, str | None]:
    """The state ``torpor status`` shows, and its reason."""
    if record.failed_reason is not None:
        return "failed", record.failed_reason
    if ready:
        return "ready", None
    if starting:
        return "starting", record.last_error
    if suspended:
        return "suspended", None
    return "scaled-to-zero", record.last_error


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
