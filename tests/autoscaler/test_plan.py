"""Table tests of the pure plan: victim order, take-back, backoff, failure, publishing, status."""

from __future__ import annotations

import pytest

from autoscaler.actuator import Phase, Replica
from autoscaler.decide import Decision, Observation, ReplicaLoad
from autoscaler.plan import (
    Failure,
    Plan,
    StartPolicy,
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
from torpor.bus import ActivatorStats, Endpoint, RevisionEndpoints

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


# -- start-up failures: backoff, then failed until the spec changes -----------------------------

POLICY = StartPolicy(max_failures=3, backoff_base_s=10.0, backoff_cap_s=15.0)


def test_a_start_up_failure_is_counted_and_backs_off() -> None:
    record, failures = reckon(StartRecord(), [failed("r1", "exited\nno such model")], NOW, POLICY)
    assert failures == (Failure("r1", "exited\nno such model", False, 1, 10.0, False),)
    assert (record.failures, record.backoff_until) == (1, NOW + 10.0)
    assert record.last_error == "exited\nno such model"
    assert record.failed_reason is None


def test_backoff_doubles_up_to_its_cap_and_marks_failed_after_max_failures() -> None:
    record = StartRecord()
    seen = []
    for i in range(1, 5):
        record, failures = reckon(record, [failed(f"r{i}")], NOW, POLICY)
        seen.append((failures[0].retry_in_s, failures[0].marked_failed))
    # 10, 20 capped at 15, ...; the third in a row marks it failed, once.
    assert seen == [(10.0, False), (15.0, False), (15.0, True), (15.0, False)]
    assert record.failures == 4
    assert record.failed_reason == "3 start-up failures in a row; last: exited with code 3"


def test_a_failure_without_an_error_still_says_something() -> None:
    record, failures = reckon(StartRecord(), [failed("r1", None)], NOW, POLICY)
    assert failures[0].error == record.last_error == "replica failed"


def test_a_ready_replica_clears_the_count_and_the_error() -> None:
    record = StartRecord(failures=2, last_error="boom", backoff_until=NOW + 5)
    record, failures = reckon(record, [ready("r3")], NOW, POLICY)
    assert failures == ()
    assert (record.failures, record.last_error) == (0, None)
    assert record.seen_ready == frozenset({"r3"})


def test_a_crash_after_serving_is_not_a_start_up_failure() -> None:
    record, _ = reckon(StartRecord(), [ready("r1")], NOW, POLICY)
    record, failures = reckon(record, [failed("r1", "exited with code -9")], NOW, POLICY)
    assert failures == (Failure("r1", "exited with code -9", crashed=True),)
    assert (record.failures, record.last_error, record.backoff_until) == (0, None, 0.0)
    assert record.seen_ready == frozenset()


@pytest.mark.parametrize(
    ("record", "want"),
    [
        (StartRecord(), Plan(start=1)),
        # Backing off: the start waits, and the plan says why.
        (
            StartRecord(failures=2, backoff_until=NOW + 4),
            Plan(held_back="want 1 more, backing off 4.0s after 2 failures"),
        ),
        (StartRecord(failures=2, backoff_until=NOW), Plan(start=1)),
        # Failed: no start however long ago the last failure was.
        (
            StartRecord(failures=5, failed_reason="5 in a row"),
            Plan(held_back="failed: 5 in a row"),
        ),
    ],
)
def test_starts_wait_for_backoff_and_stop_once_failed(record: StartRecord, want: Plan) -> None:
    assert planned(1, [], record=record) == want


def test_a_failed_revision_still_takes_back_a_draining_replica() -> None:
    record = StartRecord(failures=5, failed_reason="5 in a row")
    want = Plan(take_back=("d",), held_back="failed: 5 in a row")
    assert planned(2, [ready("d")], draining=("d",), record=record) == want


def test_a_changed_spec_gets_a_fresh_chance() -> None:
    record = StartRecord(
        failures=5, last_error="boom", backoff_until=NOW + 9, failed_reason="5 in a row"
    )
    fresh = spec_changed(record)
    assert (fresh.failures, fresh.failed_reason, fresh.backoff_until) == (0, None, 0.0)
    assert planned(1, [], record=fresh) == Plan(start=1)


# -- publish rules ------------------------------------------------------------------------------


def test_the_announcement_flags_draining_and_leaves_out_what_is_stopping() -> None:
    replicas = [ready("b"), ready("a"), ready("c"), starting("s")]
    message = announcement(KEY, replicas, {"b"}, {"c"}, StartRecord(last_error="old"))
    assert message == RevisionEndpoints(
        KEY, (Endpoint("a", "http://a"), Endpoint("b", "http://b", draining=True)), None
    )


@pytest.mark.parametrize(
    ("record", "replicas", "draining", "failure"),
    [
        # While nothing serves, the activators are told why (the spec-level failure first).
        (StartRecord(last_error="exit 3"), [], set(), "exit 3"),
        (StartRecord(last_error="exit 3", failed_reason="3 in a row"), [], set(), "3 in a row"),
        (StartRecord(last_error="exit 3"), [ready("a")], {"a"}, "exit 3"),
        # Once one serves, no failure is announced.
        (StartRecord(last_error="exit 3", failed_reason="3 in a row"), [ready("a")], set(), None),
    ],
)
def test_the_announcement_carries_the_failure_only_while_nothing_serves(
    record: StartRecord, replicas: list[Replica], draining: set[str], failure: str | None
) -> None:
    assert announcement(KEY, replicas, draining, set(), record).failure == failure


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
        (StartRecord(failed_reason="3 in a row"), True, True),
        (StartRecord(failed_reason="3 in a row"), False, False),
        (StartRecord(last_error="exit 3"), True, False),
    ],
)
def test_a_poke_of_a_failed_revision_republishes(
    record: StartRecord, poked: bool, republish: bool
) -> None:
    # Requests held at zero get the reason at once instead of their timeout.
    assert planned(1, [], record=record, poked=poked).republish is republish


# -- status -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("record", "n_ready", "n_starting", "want"),
    [
        (StartRecord(), 0, 0, ("scaled-to-zero", None)),
        (StartRecord(last_error="exit 3"), 0, 0, ("scaled-to-zero", "exit 3")),
        (StartRecord(last_error="exit 3"), 0, 1, ("starting", "exit 3")),
        (StartRecord(last_error="exit 3"), 1, 1, ("ready", None)),
        (StartRecord(failed_reason="3 in a row"), 1, 0, ("failed", "3 in a row")),
    ],
)
def test_status_state(
    record: StartRecord, n_ready: int, n_starting: int, want: tuple[str, str | None]
) -> None:
    assert revision_state(record, n_ready, n_starting) == want


def test_serving_leaves_out_replicas_on_their_way_out() -> None:
    replicas = [ready("a"), ready("b"), ready("c"), starting("s")]
    assert [r.replica_id for r in serving(replicas, {"b", "c"})] == ["a"]


@pytest.mark.parametrize(
    "bad",
    [
        {"max_failures": 0},
        {"backoff_base_s": -1.0},
        {"backoff_cap_s": -1.0},
    ],
)
def test_a_bad_start_policy_is_refused(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        StartPolicy(**bad)  # type: ignore[arg-type]


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
