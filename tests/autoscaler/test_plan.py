"""Table tests of the pure plan: victim order, take-back, crash loops, publishing, status."""

from __future__ import annotations

from dataclasses import replace

import pytest

from autoscaler.actuator import Phase, Replica
from autoscaler.crashloop import CrashLoopPolicy, CrashLoopState
from autoscaler.decide import Decision, Observation, ReplicaLoad
from autoscaler.plan import (
    Failure,
    Plan,
    StartRecord,
    announcement,
    arrivals_since,
    plan,
    publish_needed,
    reckon,
    revision_state,
    serving,
    spec_changed,
)
from torpor.bus import ActivatorStats, CrashLoop, Endpoint, RevisionEndpoints

KEY = "default/chat-00001"
NOW = 100.0


def ready(rid: str, launched_at: float = 0.0) -> Replica:
    return Replica(rid, KEY, Phase.READY, f"http://{rid}", launched_at)


def starting(rid: str, launched_at: float = 0.0) -> Replica:
    return Replica(rid, KEY, Phase.STARTING, None, launched_at)


def failed(rid: str, error: str | None = "exited with code 3") -> Replica:
    return Replica(rid, KEY, Phase.FAILED, None, 0.0, error=error)


def load(rid: str, work: float | None) -> ReplicaLoad:
    if work is None:
        return ReplicaLoad(rid)
    return ReplicaLoad(rid, running=work, waiting=0.0)


def planned(
    desired: int,
    replicas: list[Replica],
    work: dict[str, float | None] | None = None,
    draining: tuple[str, ...] = (),
    record: StartRecord | None = None,
    poked: bool = False,
) -> Plan:
    """The plan for ``desired`` where ``replicas`` serve (READY) or start (STARTING)."""
    work = work or {}
    loads = tuple(
        load(r.replica_id, work.get(r.replica_id, 0.0))
        for r in replicas
        if r.phase is Phase.READY and r.replica_id not in draining
    )
    obs = Observation(
        ready=loads,
        starting=sum(r.phase is Phase.STARTING for r in replicas),
        draining=len(draining),
        poked=poked,
    )
    return plan(Decision(desired, "test"), obs, replicas, draining, record or StartRecord(), NOW)


# -- which replica goes first -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("desired", "replicas", "work", "want"),
    [
        # Starting replicas hold no request: they go first, newest first.
        (
            1,
            [ready("a"), starting("old", 1.0), starting("new", 2.0)],
            {},
            Plan(stop=("new", "old")),
        ),
        (2, [ready("a"), starting("old", 1.0), starting("new", 2.0)], {}, Plan(stop=("new",))),
        # Then the ready replica with the least work.
        (1, [ready("a"), ready("b"), ready("c")], {"a": 3, "b": 1, "c": 2}, Plan(drain=("b", "c"))),
        # A replica whose scrape failed is assumed busy: it goes last.
        (2, [ready("a"), ready("b"), ready("c")], {"a": None, "b": 5, "c": 9}, Plan(drain=("b",))),
        (1, [ready("a"), ready("b")], {"a": None, "b": None}, Plan(drain=("a",))),
        # Both kinds at once: the starting one, then the idlest ready one.
        (
            1,
            [ready("a"), ready("b"), starting("s")],
            {"a": 4, "b": 2},
            Plan(stop=("s",), drain=("b",)),
        ),
        # Scale to zero drains every ready replica.
        (0, [ready("a"), ready("b")], {"a": 0, "b": 0}, Plan(drain=("a", "b"))),
    ],
)
def test_victim_order(
    desired: int, replicas: list[Replica], work: dict[str, float | None], want: Plan
) -> None:
    assert planned(desired, replicas, work) == want


def test_nothing_to_do_at_the_desired_count() -> None:
    assert planned(2, [ready("a"), starting("b")]) == Plan()


# -- scale up: take back before a cold start ----------------------------------------------------


@pytest.mark.parametrize(
    ("desired", "draining", "want"),
    [
        # A draining replica has its model loaded: taking it back beats a cold start.
        (2, ("d1",), Plan(take_back=("d1",))),
        # The oldest drain is taken back first; only what is missing is started.
        (3, ("d1", "d2"), Plan(take_back=("d1", "d2"))),
        (2, ("d1", "d2"), Plan(take_back=("d1",))),
        (4, ("d1",), Plan(take_back=("d1",), start=2)),
        (3, (), Plan(start=2)),
    ],
)
def test_scale_up_takes_back_draining_replicas_first(
    desired: int, draining: tuple[str, ...], want: Plan
) -> None:
    replicas = [ready("a"), *(ready(d) for d in draining)]
    assert planned(desired, replicas, draining=draining) == want


# -- deaths: the crash-loop record (the backoff itself: test_crashloop.py) -----------------------

POLICY = CrashLoopPolicy()  # 0, 10, 20, 40, ... s; young under 60 s; reset after 600 s


def looping(restarts: int = 2, retry_at: float = NOW + 10, **fields: object) -> StartRecord:
    """A record in a crash loop: ``restarts`` counted deaths, the next start at ``retry_at``."""
    crash = CrashLoopState(restarts, died_at=NOW, backoff_s=10.0, retry_at=retry_at)
    return StartRecord(crash=crash, **fields)  # type: ignore[arg-type]


def test_a_start_up_failure_counts_and_the_first_is_retried_at_once() -> None:
    error = "exited with code 3\nValueError: no such model"
    r = replace(failed("r1", error), error_line="ValueError: no such model")
    record, failures = reckon(StartRecord(), [r], NOW, POLICY)
    assert failures == (Failure("r1", error, None, counted=True, restarts=1, retry_in_s=0.0),)
    assert record.crash == CrashLoopState(1, died_at=NOW, backoff_s=0.0, retry_at=NOW)
    assert not record.crash.looping  # one death is no loop: replaced at once, nothing published
    assert (record.last_error, record.last_error_line) == (error, "ValueError: no such model")
    assert record.error_summary == "ValueError: no such model"


def test_deaths_in_a_row_back_off_like_the_kubelet_and_never_give_up() -> None:
    record, waits, now = StartRecord(), [], NOW
    for i in range(1, 10):
        record, failures = reckon(record, [failed(f"r{i}")], now, POLICY)
        waits.append(failures[0].retry_in_s)
        now += failures[0].retry_in_s + 30  # the next try starts and dies in 30 s
    assert waits == [0, 10, 20, 40, 80, 160, 300, 300, 300]
    assert record.crash.restarts == 9 and record.crash.looping


def test_a_failure_without_an_error_still_says_something() -> None:
    record, failures = reckon(StartRecord(), [failed("r1", None)], NOW, POLICY)
    assert failures[0].error == record.last_error == "replica failed"


def test_a_death_soon_after_ready_counts_a_later_one_does_not() -> None:
    record, _ = reckon(StartRecord(), [ready("young"), ready("old")], NOW - 100, POLICY)
    record, _ = reckon(record, [ready("young"), ready("old")], NOW - 100, POLICY)
    assert record.seen_ready == {"young": NOW - 100, "old": NOW - 100}
    record = replace(record, seen_ready={"young": NOW - 5, "old": NOW - 100})
    dead = [failed("young", "exited with code 0"), failed("old", "exited with code -9")]
    record, failures = reckon(record, dead, NOW, POLICY)
    assert failures == (
        Failure("young", "exited with code 0", 5.0, counted=True, restarts=1),
        # Served 100 s: a single crash, replaced at once; requests held meanwhile wait for it.
        Failure("old", "exited with code -9", 100.0),
    )
    assert record.crash.restarts == 1 and record.last_served
    assert record.seen_ready == {}


def test_a_replica_ready_for_ten_minutes_starts_the_count_over() -> None:
    record = looping(restarts=4, last_error="boom")
    record, _ = reckon(record, [ready("a")], NOW, POLICY)  # first seen ready now
    record, _ = reckon(record, [ready("a")], NOW + 599, POLICY)
    assert record.crash.restarts == 4
    record, _ = reckon(record, [ready("a")], NOW + 600, POLICY)
    assert record.crash == CrashLoopState() and record.last_error is None
    # Its own death later is a single crash: replaced at once.
    record, failures = reckon(record, [failed("a")], NOW + 700, POLICY)
    assert not failures[0].counted and record.crash.restarts == 0


def test_a_last_death_ten_minutes_old_is_forgotten() -> None:
    record = looping(restarts=6, retry_at=NOW + 300, last_error="boom")
    record, _ = reckon(record, [], NOW + 599, POLICY)
    assert record.crash.restarts == 6
    record, _ = reckon(record, [], NOW + 600, POLICY)
    assert record.crash.restarts == 0 and record.last_error is None
    record, failures = reckon(record, [failed("r")], NOW + 700, POLICY)
    assert (failures[0].restarts, failures[0].retry_in_s) == (1, 0.0)


@pytest.mark.parametrize(
    ("record", "want"),
    [
        (StartRecord(), Plan(start=1)),
        # Backing off: the start waits, and the plan says why.
        (
            looping(restarts=3, retry_at=NOW + 4),
            Plan(held_back="want 1 more, crash-loop back-off 4.0s before restart 3"),
        ),
        # The wait is over: the next try starts (kubelet: it never gives up).
        (looping(restarts=30, retry_at=NOW), Plan(start=1)),
    ],
)
def test_starts_wait_for_the_back_off(record: StartRecord, want: Plan) -> None:
    assert planned(1, [], record=record) == want


def test_a_revision_backing_off_still_takes_back_a_draining_replica() -> None:
    why = "want 1 more, crash-loop back-off 10.0s before restart 2"
    want = Plan(take_back=("d",), held_back=why)
    assert planned(2, [ready("d")], draining=("d",), record=looping()) == want


def test_a_changed_spec_gets_a_fresh_chance() -> None:
    fresh = spec_changed(looping(restarts=8, retry_at=NOW + 300, last_error="boom"))
    assert (fresh.crash, fresh.last_error) == (CrashLoopState(), None)
    assert planned(1, [], record=fresh) == Plan(start=1)


# -- publish rules ------------------------------------------------------------------------------


def test_the_announcement_flags_draining_and_leaves_out_what_is_stopping() -> None:
    replicas = [ready("b"), ready("a"), ready("c"), starting("s")]
    message = announcement(KEY, replicas, {"b"}, {"c"}, StartRecord(last_error="old"))
    assert message == RevisionEndpoints(
        KEY, (Endpoint("a", "http://a"), Endpoint("b", "http://b", draining=True)), None
    )


LOOPING = looping(
    restarts=3,
    retry_at=NOW + 20,
    last_error="exited with code 0\n...log tail...",
    last_error_line="RuntimeError: Worker failed with error 'index out of range in self'",
    last_served=True,
)


def test_a_crash_loop_is_announced_while_nothing_serves() -> None:
    message = announcement(KEY, [], set(), set(), LOOPING)
    assert message.crash_loop == CrashLoop(
        restarts=3,
        retry_at=NOW + 20,
        reason="exited with code 0 (RuntimeError)",  # the caller's: no log line, no path
        backoff_s=10.0,
        served=True,
    )
    # For activators that predate ``crash_loop``: the error, as a failed start was.
    assert message.failure == "exited with code 0\n...log tail..."


@pytest.mark.parametrize(
    ("record", "replicas", "draining", "announced"),
    [
        (LOOPING, [], set(), True),
        (LOOPING, [ready("a")], {"a"}, True),  # draining: it serves no new request
        # Once one serves (or sleeps: a request wakes it), no crash loop is announced.
        (LOOPING, [ready("a")], set(), False),
        (LOOPING, [Replica("z", KEY, Phase.SUSPENDED, "http://z", 0.0)], set(), False),
        # One death is no loop (replaced at once), and nothing is announced for it.
        (StartRecord(CrashLoopState(1, NOW, 0.0, NOW), last_error="exit 3"), [], set(), False),
    ],
)
def test_the_announcement_carries_the_crash_loop_only_while_nothing_serves(
    record: StartRecord, replicas: list[Replica], draining: set[str], announced: bool
) -> None:
    message = announcement(KEY, replicas, draining, set(), record)
    assert (message.crash_loop is not None, message.failure is not None) == (announced, announced)


SERVING = RevisionEndpoints(KEY, (Endpoint("a", "http://a"),))
EMPTY = RevisionEndpoints(KEY, ())
FAILING = RevisionEndpoints(KEY, (), "exit 3")


@pytest.mark.parametrize(
    ("last", "message", "force", "want"),
    [
        # Nothing to say yet: a never-announced revision is not announced as empty.
        (None, EMPTY, False, False),
        (None, SERVING, False, True),
        (None, FAILING, False, True),
        # Changes are published, repeats are not...
        (SERVING, SERVING, False, False),
        (SERVING, EMPTY, False, True),
        (EMPTY, FAILING, False, True),
        (FAILING, replace(FAILING, crash_loop=CrashLoop(2, NOW + 10, "exit 3")), False, True),
        # ... unless forced (a new failure, a poke of a failed revision, a new leader).
        (SERVING, SERVING, True, True),
        (None, EMPTY, True, True),
        # The version is the bus's: it does not make a message new.
        (SERVING, RevisionEndpoints(KEY, SERVING.endpoints, version=7), False, False),
    ],
)
def test_publish_rules(
    last: RevisionEndpoints | None, message: RevisionEndpoints, force: bool, want: bool
) -> None:
    assert publish_needed(last, message, force=force) is want


@pytest.mark.parametrize(
    ("record", "poked", "republish"),
    [
        (looping(), True, True),
        (looping(), False, False),
        (looping(retry_at=NOW), True, False),  # the wait is over: the poke starts a try
        (StartRecord(last_error="exit 3"), True, False),
    ],
)
def test_a_poke_while_backing_off_republishes(
    record: StartRecord, poked: bool, republish: bool
) -> None:
    # Requests held at zero get the crash loop at once instead of their timeout.
    assert planned(1, [], record=record, poked=poked).republish is republish


# -- status -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("record", "n_ready", "n_starting", "want"),
    [
        (StartRecord(), 0, 0, ("scaled-to-zero", None)),
        (StartRecord(last_error="exit 3"), 0, 0, ("scaled-to-zero", "exit 3")),
        (StartRecord(last_error="exit 3"), 0, 1, ("starting", "exit 3")),
        (StartRecord(last_error="exit 3"), 1, 1, ("ready", None)),
        (looping(last_error="exit 3\ntail", last_error_line="E: x"), 0, 0, ("crash-loop", "E: x")),
        (looping(last_error="exit 3"), 0, 1, ("crash-loop", "exit 3")),  # the next try
        (looping(last_error="exit 3"), 1, 0, ("ready", None)),
    ],
)
def test_status_state(
    record: StartRecord, n_ready: int, n_starting: int, want: tuple[str, str | None]
) -> None:
    assert revision_state(record, n_ready, n_starting) == want


def test_serving_leaves_out_replicas_on_their_way_out() -> None:
    replicas = [ready("a"), ready("b"), ready("c"), starting("s")]
    assert [r.replica_id for r in serving(replicas, {"b", "c"})] == ["a"]


def stat(activator: str, total: int) -> ActivatorStats:
    return ActivatorStats(activator, "default/svc-1", 0, 0, 0.0, requests_total=total)


@pytest.mark.parametrize(
    ("seen", "totals", "arrived"),
    [
        ({}, [("a", 40)], 0),  # first report: a baseline, not news
        ({"a": 40}, [("a", 43)], 3),
        ({"a": 40, "b": 7}, [("a", 41), ("b", 9)], 3),  # summed over activators
        ({"a": 40}, [("a", 2)], 2),  # restarted: counts from zero
        ({"a": 40}, [("a", 40), ("c", 5)], 0),  # a new activator sets its baseline
    ],
)
def test_arrivals_since_the_last_counters(
    seen: dict[str, int], totals: list[tuple[str, int]], arrived: int
) -> None:
    n, now = arrivals_since(seen, [stat(a, t) for a, t in totals])
    assert n == arrived
    assert now == dict(totals)  # an activator that stopped reporting is forgotten
