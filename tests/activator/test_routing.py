from __future__ import annotations

import random
from collections import Counter

import pytest

from activator.errors import BadRequest, NotFound
from activator.routing import Local, Route, build_route_table, resolve
from tests.activator.conftest import revision, service
from torpor.spec import TrafficTarget

R1 = revision("chat-00001")
R2 = revision("chat-00002")
R3 = revision("chat-00003")
SPLIT = service(
    revisions=(R1, R2, R3),
    traffic=(
        TrafficTarget("chat-00001", 70),
        TrafficTarget("chat-00002", 30, tag="canary"),
        TrafficTarget("chat-00003", 0, tag="next"),
    ),
)
OTHER = service("embed", namespace="team-a")
TABLE = build_route_table([SPLIT, OTHER], "example.com")


def route(host: str, path: str, roll: float = 0.0) -> Route:
    result = resolve(TABLE, host, path, roll)
    assert isinstance(result, Route)
    return result


def test_path_form_strips_the_prefix() -> None:
    r = route("127.0.0.1:8080", "/team-a/embed/v1/embeddings")
    assert (r.revision.ref.key, r.path) == ("team-a/embed-00001", "/v1/embeddings")


def test_path_form_without_rest_forwards_root() -> None:
    assert route("", "/team-a/embed").path == "/"


def test_host_form_keeps_the_path_and_ignores_the_port() -> None:
    r = route("Embed.Team-A.example.com:8080", "/v1/models")
    assert (r.revision.ref.key, r.path) == ("team-a/embed-00001", "/v1/models")


@pytest.mark.parametrize(
    ("host", "path"),
    [
        ("next-chat.default.example.com", "/v1/completions"),
        ("localhost", "/default/next-chat/v1/completions"),
    ],
)
def test_zero_percent_tag_is_reachable_through_its_tag_url(host: str, path: str) -> None:
    r = route(host, path)
    assert r.revision.ref.name == "chat-00003"
    assert r.tag == "next"
    assert r.path == "/v1/completions"


def test_zero_percent_revision_gets_nothing_from_the_service_url() -> None:
    picked = {route("", "/default/chat/v1/x", i / 100).revision.ref.name for i in range(100)}
    assert picked == {"chat-00001", "chat-00002"}


def test_split_proportions_follow_percent() -> None:
    rng = random.Random(1234)
    counts = Counter(
        route("", "/default/chat/v1/x", rng.random()).revision.ref.name for _ in range(10_000)
    )
    assert counts["chat-00003"] == 0
    assert abs(counts["chat-00001"] / 10_000 - 0.70) < 0.02
    assert abs(counts["chat-00002"] / 10_000 - 0.30) < 0.02


def test_split_across_many_revisions() -> None:
    revisions = tuple(revision(f"chat-{i:05d}") for i in range(1, 6))
    spec = service(
        revisions=revisions,
        traffic=tuple(TrafficTarget(r.ref.name, 20) for r in revisions),
    )
    table = build_route_table([spec], "example.com")
    rng = random.Random(99)
    counts: Counter[str] = Counter()
    for _ in range(10_000):
        r = resolve(table, "", "/default/chat/", rng.random())
        assert isinstance(r, Route)
        counts[r.revision.ref.name] += 1
    assert set(counts) == {r.ref.name for r in revisions}
    assert all(abs(c / 10_000 - 0.2) < 0.03 for c in counts.values())


def test_unknown_service_is_not_found_and_named() -> None:
    with pytest.raises(NotFound, match=r"'nope'.*'default'"):
        resolve(TABLE, "", "/default/nope/v1/models", 0.0)
    with pytest.raises(NotFound, match="'beta-chat'"):
        resolve(TABLE, "beta-chat.default.example.com", "/v1/models", 0.0)


def test_unknown_namespace_is_not_found() -> None:
    with pytest.raises(NotFound, match="'team-b'"):
        resolve(TABLE, "", "/team-b/chat/v1/models", 0.0)


@pytest.mark.parametrize(
    "path",
    [
        "//default/chat/v1/models",  # empty segment before the namespace
        "/default//chat/v1/models",  # empty segment where the service goes
        "/default%2Fchat/v1/models",  # encoded slash inside a name
        "/default/chat%2F..%2F..%2Fteam-a%2Fembed/v1",
        "/../default/chat/v1/models",
        "/default/../team-a/embed/v1",
        "/%2e%2e/team-a/embed/v1",
        "/",
        "/default",
    ],
)
def test_hostile_paths_never_reach_a_revision(path: str) -> None:
    with pytest.raises(NotFound):
        resolve(TABLE, "", path, 0.0)


@pytest.mark.parametrize(
    "rest", ["/v1/../../x", "/./v1", "/v1/%2E%2E/x", "/v1/.%2e/x", "/v1/%252e%252e/x", "/v1\\..\\x"]
)
def test_dot_segments_after_the_prefix_are_refused(rest: str) -> None:
    with pytest.raises(BadRequest):
        resolve(TABLE, "", "/default/chat" + rest, 0.0)
    with pytest.raises(BadRequest):
        resolve(TABLE, "chat.default.example.com", rest, 0.0)


def test_encoded_slash_after_the_prefix_stays_encoded_for_the_same_revision() -> None:
    r = route("", "/default/chat/v1/models/org%2Fmodel")
    assert (r.revision.ref.name, r.path) == ("chat-00001", "/v1/models/org%2Fmodel")


def test_activator_endpoints_are_local_unless_the_host_names_a_service() -> None:
    assert resolve(TABLE, "localhost:8080", "/healthz", 0.0) == Local("healthz")
    assert resolve(TABLE, "localhost:8080", "/metrics", 0.0) == Local("metrics")
    forwarded = route("chat.default.example.com", "/metrics")
    assert forwarded.path == "/metrics"


def test_hosts_outside_the_domain_fall_back_to_the_path_form() -> None:
    assert route("chat.default.other.org", "/team-a/embed/v1/x").revision.ref.name == "embed-00001"


def test_service_name_wins_over_a_tag_url_spelling_it() -> None:
    plain = service("canary-chat")
    table = build_route_table([SPLIT, plain], "example.com")
    r = resolve(table, "", "/default/canary-chat/v1", 0.0)
    assert isinstance(r, Route)
    assert r.revision.ref.name == "canary-chat-00001"


def test_traffic_naming_an_unknown_revision_is_skipped() -> None:
    spec = service(
        revisions=(R1,),
        traffic=(TrafficTarget("chat-00001", 50), TrafficTarget("chat-00009", 50)),
    )
    table = build_route_table([spec], "example.com")
    for roll in (0.0, 0.6, 0.99):
        r = resolve(table, "", "/default/chat/v1", roll)
        assert isinstance(r, Route)
        assert r.revision.ref.name == "chat-00001"
