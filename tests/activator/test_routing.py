from __future__ import annotations

import random
from collections import Counter
from dataclasses import replace

import pytest

from activator.errors import BadRequest, ModelNotFound, NotFound, PlatformEndpoint
from activator.routing import (
    ByModel,
    Local,
    ModelList,
    Route,
    RouteTable,
    build_route_table,
    resolve,
    route_model,
)
from tests.activator.conftest import revision, service
from torpor.spec import RevisionSpec, TrafficTarget

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


def route(host: str, path: str, roll: float = 0.0, table: RouteTable | None = None) -> Route:
    result = resolve(table or TABLE, host, path, roll)
    assert isinstance(result, Route)
    return result


def test_path_form_strips_the_prefix() -> None:
    r = route("127.0.0.1:8080", "/team-a/embed/v1/embeddings")
    assert (r.revision.ref.key, r.path) == ("team-a/embed-00001", "/v1/embeddings")


def test_path_form_without_rest_is_no_client_route() -> None:
    # The replica's root is not an inference route (issue 23: an allow-list).
    with pytest.raises(PlatformEndpoint):
        resolve(TABLE, "", "/team-a/embed", 0.0)


def test_host_form_keeps_the_path_and_ignores_the_port() -> None:
    r = route("Embed.Team-A.example.com:8080", "/v1/embeddings")
    assert (r.revision.ref.key, r.path) == ("team-a/embed-00001", "/v1/embeddings")


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
    picked = {route("", "/default/chat/score", i / 100).revision.ref.name for i in range(100)}
    assert picked == {"chat-00001", "chat-00002"}


def test_split_proportions_follow_percent() -> None:
    rng = random.Random(1234)
    counts = Counter(
        route("", "/default/chat/score", rng.random()).revision.ref.name for _ in range(10_000)
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
        r = resolve(table, "", "/default/chat/v1/completions", rng.random())
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


@pytest.mark.parametrize(
    "rest",
    [
        "/v1/load_lora_adapter",
        "/v1/unload_lora_adapter/",
        "//v1//load_lora_adapter",
        "/v1/load%5Flora%5Fadapter",
        "/v1/load%255Flora_adapter",
        "/sleep",
        "/wake_up",
        "/collective_rpc",
        "/abort_requests",
        "/reset_prefix_cache",
    ],
)
def test_vllms_operator_endpoints_are_refused_in_any_spelling(rest: str) -> None:
    with pytest.raises(PlatformEndpoint) as info:
        resolve(TABLE, "", "/default/chat" + rest, 0.0)
    assert info.value.status == 403
    with pytest.raises(PlatformEndpoint):
        resolve(TABLE, "chat.default.example.com", rest, 0.0)


def test_client_paths_pass_and_everything_else_is_refused() -> None:
    for rest in ("/v1/completions", "/v1/models/x", "/tokenize", "/v1/responses/resp_1/cancel",
                 "//v1//chat/completions/"):
        assert route("", "/default/chat" + rest).path == rest
    # An allow-list: what is not an inference route is refused, named or not (issue 23).
    for rest in ("/v1/load_lora_adapterx", "/adapters", "/adapters/tiny-sql", "/invocations",
                 "/metrics", "/load", "/version", "/docs", "/openapi.json", "/v1/realtime",
                 "/v1/brand-new-operator-route", "/v1/models/x/y", "/ping", "/health"):
        with pytest.raises(PlatformEndpoint):
            resolve(TABLE, "", "/default/chat" + rest, 0.0)
        with pytest.raises(PlatformEndpoint):
            resolve(TABLE, "chat.default.example.com", rest, 0.0)


def test_encoded_slash_after_the_prefix_stays_encoded_for_the_same_revision() -> None:
    r = route("", "/default/chat/v1/responses/org%3Amodel")
    assert (r.revision.ref.name, r.path) == ("chat-00001", "/v1/responses/org%3Amodel")
    # An encoded slash is a segment to the replica's router: /v1/responses/org/model is no
    # client route, so it is refused rather than forwarded.
    with pytest.raises(PlatformEndpoint):
        resolve(TABLE, "", "/default/chat/v1/responses/org%2Fmodel", 0.0)


def test_activator_endpoints_are_local_unless_the_host_names_a_service() -> None:
    assert resolve(TABLE, "localhost:8080", "/healthz", 0.0) == Local("healthz")
    assert resolve(TABLE, "localhost:8080", "/metrics", 0.0) == Local("metrics")
    with pytest.raises(PlatformEndpoint):  # the replica's /metrics is the platform's
        route("chat.default.example.com", "/metrics")


def test_hosts_outside_the_domain_fall_back_to_the_path_form() -> None:
    assert route("chat.default.other.org", "/team-a/embed/score").revision.ref.name == "embed-00001"


def test_service_name_wins_over_a_tag_url_spelling_it() -> None:
    plain = service("canary-chat")
    table = build_route_table([SPLIT, plain], "example.com")
    r = resolve(table, "", "/default/canary-chat/v1/completions", 0.0)
    assert isinstance(r, Route)
    assert r.revision.ref.name == "canary-chat-00001"


def test_traffic_naming_an_unknown_revision_is_skipped() -> None:
    spec = service(
        revisions=(R1,),
        traffic=(TrafficTarget("chat-00001", 50), TrafficTarget("chat-00009", 50)),
    )
    table = build_route_table([spec], "example.com")
    for roll in (0.0, 0.6, 0.99):
        r = resolve(table, "", "/default/chat/v1/completions", roll)
        assert isinstance(r, Route)
        assert r.revision.ref.name == "chat-00001"


# ---- one URL for every model (issue 14) ---------------------------------------------------------


def _served(name: str, rev: str, service_name: str, namespace: str = "default") -> RevisionSpec:
    base = revision(rev, service_name, namespace)
    return replace(base, runtime=replace(base.runtime, served_model_name=name))


LLAMA = service("llama", revisions=(_served("llama-3", "llama-00001", "llama"),))
QWEN = service("qwen", "team-a", (_served("Qwen/Qwen3-8B", "qwen-00001", "qwen", "team-a"),))
# The same name served by a service in another namespace: ambiguous at the root.
TWIN_A = service("dup", "team-a", (_served("twin", "dup-00001", "dup", "team-a"),))
TWIN_B = service("dup", "team-b", (_served("twin", "dup-00001", "dup", "team-b"),))
# A rollout that renames the model: each name goes only to the revisions that serve it.
RENAME = service(
    "roll",
    revisions=(
        _served("old-name", "roll-00001", "roll"),
        _served("new-name", "roll-00002", "roll"),
        _served("new-name", "roll-00003", "roll"),
        _served("next-name", "roll-00004", "roll"),
    ),
    traffic=(
        TrafficTarget("roll-00001", 50),
        TrafficTarget("roll-00002", 25),
        TrafficTarget("roll-00003", 25),
        TrafficTarget("roll-00004", 0, tag="next"),
    ),
)
MODELS = build_route_table([LLAMA, QWEN, TWIN_A, TWIN_B, RENAME, OTHER], "example.com")


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions", "/v1/embeddings"])
def test_openai_paths_at_the_root_are_routed_by_model(path: str) -> None:
    assert resolve(MODELS, "127.0.0.1:8080", path, 0.0) == ByModel(path)
    r = route_model(MODELS, "Qwen/Qwen3-8B", path, 0.5)
    assert (r.revision.ref.key, r.path, r.tag) == ("team-a/qwen-00001", path, None)


def test_a_revision_without_a_served_name_serves_its_model_argument() -> None:
    # OTHER's runtime has --model=/models/tiny and no --served-model-name, like vLLM's default.
    assert route_model(MODELS, "/models/tiny", "/v1/completions", 0.0).service.name == "embed"


def test_unknown_model_is_a_typed_404_naming_it() -> None:
    with pytest.raises(ModelNotFound, match=r"'gpt-4'.*GET /v1/models") as caught:
        route_model(MODELS, "gpt-4", "/v1/completions", 0.0)
    assert (caught.value.status, caught.value.code) == (404, "model_not_found")


def test_a_name_two_services_serve_is_refused_without_naming_them() -> None:
    with pytest.raises(ModelNotFound, match="more than one service") as caught:
        route_model(MODELS, "twin", "/v1/completions", 0.0)
    assert "team-a" not in caught.value.message and "team-b" not in caught.value.message
    # Each stays reachable at its own service URL.
    twin_b = route("", "/team-b/dup/v1/completions", table=MODELS)
    assert twin_b.revision.ref.key == "team-b/dup-00001"


def test_a_renamed_model_routes_each_name_to_its_own_revisions() -> None:
    rng = random.Random(5)
    new = Counter(
        route_model(MODELS, "new-name", "/v1/completions", rng.random()).revision.ref.name
        for _ in range(2_000)
    )
    assert set(new) == {"roll-00002", "roll-00003"}
    assert abs(new["roll-00002"] / 2_000 - 0.5) < 0.05
    assert route_model(MODELS, "old-name", "/score", 0.99).revision.ref.name == "roll-00001"
    # A revision reached only through a tag URL has no name at the root.
    with pytest.raises(ModelNotFound):
        route_model(MODELS, "next-name", "/v1/completions", 0.0)


def test_models_are_listed_at_the_root_and_per_service_without_a_revision() -> None:
    every = ("/models/tiny", "Qwen/Qwen3-8B", "llama-3", "new-name", "old-name", "twin")
    assert resolve(MODELS, "", "/v1/models", 0.0) == ModelList(every)
    assert resolve(MODELS, "", "/default/roll/v1/models", 0.0) == ModelList(
        ("new-name", "old-name")
    )
    assert resolve(MODELS, "", "/default/next-roll/v1/models", 0.0) == ModelList(("next-name",))
    assert resolve(MODELS, "llama.default.example.com", "/v1/models", 0.0) == ModelList(
        ("llama-3",)
    )
    # Other paths under a service still go to its replicas.
    assert route("", "/default/llama/v1/models/llama-3", table=MODELS).path == "/v1/models/llama-3"


def test_the_host_form_keeps_openai_paths_for_its_own_service() -> None:
    r = route("llama.default.example.com", "/v1/completions", table=MODELS)
    assert (r.revision.ref.key, r.path) == ("default/llama-00001", "/v1/completions")
