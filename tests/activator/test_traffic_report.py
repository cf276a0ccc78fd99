"""An activator reports a revision while it has traffic, once more after, and never while quiet."""

from __future__ import annotations

from dataclasses import dataclass

from activator.traffic_report import TrafficReport


@dataclass
class Q:
    queued: int = 0
    in_flight: int = 0
    requests_total: int = 0
    busy_replicas: tuple[str, ...] = ()


def reported(report: TrafficReport, queues: dict[str, Q]) -> list[tuple[str, int, int, int]]:
    return [
        (s.revision, s.queued, s.in_flight, s.requests_total)
        for s in report.select(queues, now=1.0)
    ]


def test_quiet_revisions_are_never_reported() -> None:
    report = TrafficReport("a1")
    queues = {f"ns/r{i}": Q() for i in range(1000)}
    assert reported(report, queues) == []
    assert reported(report, queues) == []


def test_traffic_is_reported_then_one_zero_then_nothing() -> None:
    report = TrafficReport("a1")
    queues = {"ns/a": Q(), "ns/b": Q()}
    queues["ns/a"].queued = 1
    assert reported(report, queues) == [("ns/a", 1, 0, 0)]
    queues["ns/a"] = Q(in_flight=1, requests_total=1)
    assert reported(report, queues) == [("ns/a", 0, 1, 1)]
    queues["ns/a"] = Q(requests_total=1)
    assert reported(report, queues) == [("ns/a", 0, 0, 1)]  # the zero
    assert reported(report, queues) == []


def test_a_request_that_came_and_went_between_reports_is_reported() -> None:
    report = TrafficReport("a1")
    queues = {"ns/a": Q(requests_total=3)}
    assert reported(report, queues) == [("ns/a", 0, 0, 3)]
    assert reported(report, queues) == [("ns/a", 0, 0, 3)]  # the zero after it
    assert reported(report, queues) == []
    queues["ns/a"].requests_total = 4
    assert reported(report, queues) == [("ns/a", 0, 0, 4)]


def test_stats_carry_the_activator_and_the_time() -> None:
    report = TrafficReport("a7")
    [s] = report.select({"ns/a": Q(queued=2)}, now=123.5)
    assert (s.activator_id, s.at) == ("a7", 123.5)


def test_a_deleted_revision_is_forgotten() -> None:
    report = TrafficReport("a1")
    assert reported(report, {"ns/a": Q(requests_total=5)}) == [("ns/a", 0, 0, 5)]
    assert reported(report, {}) == []
    # Deployed again under the same name, its counter starts over: that is traffic too.
    assert reported(report, {"ns/a": Q(requests_total=1)}) == [("ns/a", 0, 0, 1)]


def test_a_report_names_the_replicas_with_requests_in_flight() -> None:
    report = TrafficReport("a1")
    [stat] = report.select({"ns/a": Q(in_flight=2, busy_replicas=("r1", "r2"))}, now=1.0)
    assert stat.busy == ("r1", "r2")
    [zero] = report.select({"ns/a": Q(requests_total=0)}, now=2.0)
    assert zero.busy == ()
