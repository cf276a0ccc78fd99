from __future__ import annotations

from embedded.report import filter_status, render_table, status_document
from torpor.spec import RevisionRef, RevisionSpec, RuntimeSpec, ServiceSpec, TrafficTarget
from torpor.status import ColdStart, RevisionStatus


def _rev(name: str, generation: int) -> RevisionSpec:
    return RevisionSpec(RevisionRef("default", name), "chat", generation, RuntimeSpec("img", "/m"))


SERVICE = ServiceSpec(
    "default",
    "chat",
    2,
    (_rev("chat-00001", 1), _rev("chat-00002", 2), _rev("chat-00003", 3)),
    (TrafficTarget("chat-00001", 90), TrafficTarget("chat-00002", 10, tag="canary")),
)


def test_rows_cover_routed_revisions_and_default_to_zero() -> None:
    doc = status_document([SERVICE], [], activator_url="http://127.0.0.1:8080")
    names = [r["name"] for r in doc["revisions"]]
    assert names == ["chat-00001", "chat-00002"], "an unrouted revision is not listed"
    first = doc["revisions"][0]
    assert first["desired_replicas"] == 0 and first["ready_replicas"] == 0
    assert first["queued_requests"] == 0 and first["state"] == "scaled-to-zero"
    assert first["url"] == "http://127.0.0.1:8080/default/chat"
    assert doc["revisions"][1]["tags"] == ["canary"]


def test_rows_take_autoscaler_status() -> None:
    cold = ColdStart("r1", 1000.0, 21.5, (("imports_done", 5.0), ("engine_ready", 21.5)))
    st = RevisionStatus(
        "default/chat-00001",
        "default",
        "chat",
        "chat-00001",
        2,
        1,
        starting_replicas=1,
        queued_requests=3,
        state="starting",
        last_cold_start=cold,
    )
    doc = status_document([SERVICE], [st], activator_url="http://x")
    row = doc["revisions"][0]
    assert (row["desired_replicas"], row["ready_replicas"], row["queued_requests"]) == (2, 1, 3)
    assert row["last_cold_start"]["phases"] == {"imports_done": 5.0, "engine_ready": 21.5}
    table = render_table(doc)
    assert "chat-00001" in table and "1/2" in table and "21.5s" in table
    assert "90%" in table and "tag:canary" in table


def test_empty_table_says_how_to_deploy() -> None:
    assert "torpor deploy" in render_table({"revisions": []})


def test_reason_is_shown_under_the_table() -> None:
    st = RevisionStatus(
        "default/chat-00001",
        "default",
        "chat",
        "chat-00001",
        0,
        0,
        state="failed",
        reason="exit code 1: CUDA out of memory",
    )
    table = render_table(status_document([SERVICE], [st], activator_url="http://x"))
    assert "chat-00001: exit code 1: CUDA out of memory" in table


def test_a_revision_that_is_scaling_says_why_and_a_steady_one_does_not() -> None:
    why = "kv-cache 95% above 80%: one more replica"
    scaling = RevisionStatus(
        "default/chat-00001", "default", "chat", "chat-00001", 2, 1, decision=why
    )
    steady = RevisionStatus(
        "default/chat-00002", "default", "chat", "chat-00002", 1, 1, decision="load 3.0 over 60s"
    )
    doc = status_document([SERVICE], [scaling, steady], activator_url="http://x")
    assert [r["decision"] for r in doc["revisions"]] == [why, "load 3.0 over 60s"]
    table = render_table(doc)
    assert f"chat-00001: scaling 1 -> 2: {why}" in table
    assert "chat-00002:" not in table


def _many(n: int) -> list[ServiceSpec]:
    return [
        ServiceSpec(
            "team-a" if i % 2 else "team-b",
            f"s{i}",
            1,
            (RevisionSpec(RevisionRef("x", f"s{i}-00001"), f"s{i}", 1, RuntimeSpec("img", "/m")),),
            (TrafficTarget(f"s{i}-00001", 100),),
        )
        for i in range(n)
    ]


def test_a_long_table_ends_with_a_count_per_state_and_filters_shorten_it() -> None:
    ready = RevisionStatus("x/s3-00001", "team-a", "s3", "s3-00001", 1, 1, state="ready")
    doc = status_document(_many(30), [ready], activator_url="http://a")
    table = render_table(doc)
    assert table.splitlines()[-1] == "30 revisions: 1 ready, 29 scaled-to-zero"
    assert len(filter_status(doc, namespace="team-a")["revisions"]) == 15
    assert [r["service"] for r in filter_status(doc, service="s7")["revisions"]] == ["s7"]
    assert [r["service"] for r in filter_status(doc, active=True)["revisions"]] == ["s3"]
    short = render_table(filter_status(doc, active=True))
    assert "revisions:" not in short  # short tables need no count


def test_the_engine_path_of_the_last_cold_start_is_in_the_json_and_the_one_service_view() -> None:
    engine = "cpu attention=vec (torch reports no AMX tiles)"
    cold = ColdStart("r1", 1000.0, 9.0, (("engine_ready", 9.0),), engine=engine)
    st = RevisionStatus("default/chat-00001", "default", "chat", "chat-00001", 1, 1,
                        state="ready", last_cold_start=cold)
    doc = status_document([SERVICE], [st], activator_url="http://x")
    assert doc["revisions"][0]["last_cold_start"]["engine"] == engine
    assert f"chat-00001: engine: {engine}" in render_table(filter_status(doc, service="chat"))
    other = ServiceSpec("default", "other", 1, (_rev("other-00001", 1),),
                        (TrafficTarget("other-00001", 100),))
    many = status_document([SERVICE, other], [st], activator_url="http://x")
    assert "engine:" not in render_table(many)  # the overview stays one line per revision
    assert f"engine: {engine}" in render_table(filter_status(many, service="chat"))
