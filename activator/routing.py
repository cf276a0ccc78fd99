"""Request -> revision: a pure function of a route table and the request's host and path.

Two URL forms reach a revision (docs/architecture.md, "The path of one request"):

- host form, Knative's: ``<service>.<namespace>.<domain>`` or
  ``<tag>-<service>.<namespace>.<domain>`` (the path is forwarded unchanged);
- path form, for clients without DNS: ``/<namespace>/<service>/...`` or
  ``/<namespace>/<tag>-<service>/...`` (the two-segment prefix is stripped before forwarding).

The service URL splits by ``percent``; a tag URL always reaches its one revision, which is how a
revision with 0% stays reachable. The caller passes the random ``roll`` so this stays pure and
tests can check proportions.

A third form has one URL for every model (issue 14): the OpenAI paths vLLM serves with a JSON
body naming a ``model`` (``MODEL_PATHS``), sent to the activator's root, resolve to ``ByModel``;
the caller reads the body and ``route_model`` picks the revision that serves that name. The rules:

- a revision serves ``--served-model-name`` (or, without it, its ``--model`` as written), the
  name vLLM itself checks the body against, so the body is forwarded unchanged;
- a name routes through its service's URL split, restricted to the split's revisions that serve
  it (a rollout that renames the model routes each name to its own revisions); revisions reached
  only by a tag URL are not reachable by name;
- a name must be served by exactly one service across all namespaces: a name two services serve
  is refused at the root (404, no other service or namespace named) and stays reachable at each
  service's own URL. A name belongs to the namespace that served it first: a deploy in another
  namespace serving it is refused (``torpor.manifest.lora.check_model_owner``, issue 23), so only
  services of one namespace can share (and so shadow) a name. No ``namespace/name`` spelling:
  served names often contain a slash (``meta-llama/Llama-3.1-8B``), and vLLM would refuse a
  rewritten name anyway;
- the root OpenAI paths win over the path form: a namespace called ``v1`` cannot have a service
  reached at ``/v1/completions`` that way (its host form still works).

``GET /v1/models`` at the root, under a path-form prefix, or on a host-form host resolves to
``ModelList``: the activator answers it from the specs, without waking a replica.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from urllib.parse import unquote

from activator.errors import BadRequest, ModelNotFound, NotFound, PlatformEndpoint
from torpor.routes import INFERENCE_PATHS, MULTIPART_PATHS, is_client_route, normal_path
from torpor.spec import RevisionSpec, ServiceSpec

# Kubernetes names (RFC 1123 labels): anything else in a name position is not a route, which
# also keeps percent-encoded tricks (%2F, %2e%2e) and empty segments out of name matching.
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


@dataclass(frozen=True, slots=True)
class Split:
    """A service URL: revisions with a positive percent, as cumulative upper bounds out of 100."""

    service: ServiceSpec
    bounds: tuple[tuple[float, RevisionSpec], ...]


@dataclass(frozen=True, slots=True)
class Tagged:
    """A tag URL: always the one revision."""

    service: ServiceSpec
    revision: RevisionSpec
    tag: str


Target = Split | Tagged


@dataclass(frozen=True, slots=True)
class RouteTable:
    """``(namespace, name)`` -> target, where name is ``<service>`` or ``<tag>-<service>``."""

    targets: dict[tuple[str, str], Target]
    domain: str
    # served model name -> the services' URL splits restricted to revisions serving it; more
    # than one entry: the name is ambiguous at the root.
    models: dict[str, tuple[Split, ...]] = field(default_factory=dict)
    # LoRA adapter name -> its base's served name (``GET /v1/models`` lists it as ``parent``).
    parents: dict[str, str] = field(default_factory=dict)
    # Names served by a service that requires API keys: left out of the root's model list.
    keyed: frozenset[str] = frozenset()


def served_name(revision: RevisionSpec) -> str:
    """The name vLLM answers to for this revision (``runtime.args``: served name, else --model)."""
    return revision.runtime.served_model_name or revision.runtime.model


def model_names(revision: RevisionSpec) -> tuple[str, ...]:
    """Every model name a revision answers to: its base, then its LoRA adapters (issue 16)."""
    adapters = revision.lora.adapters if revision.lora is not None else ()
    return (served_name(revision), *(a.name for a in adapters))


def adapter_of(revision: RevisionSpec, model: str | None) -> str | None:
    """``model`` when it names one of the revision's LoRA adapters, else None."""
    if model is None or revision.lora is None or revision.lora.adapter(model) is None:
        return None
    return model


@dataclass(frozen=True, slots=True)
class Route:
    service: ServiceSpec
    revision: RevisionSpec
    path: str  # raw (still percent-encoded) path to forward, always starting with "/"
    tag: str | None = None
    adapter: str | None = None  # the body's model is this LoRA adapter of the revision


@dataclass(frozen=True, slots=True)
class Local:
    """One of the activator's own endpoints (``/healthz``, ``/metrics``)."""

    name: str


@dataclass(frozen=True, slots=True)
class ByModel:
    """An OpenAI path at the root: the revision follows from the body's ``model`` field."""

    path: str  # raw path to forward unchanged


@dataclass(frozen=True, slots=True)
class ModelList:
    """``GET /v1/models``, answered by the activator: these served names, sorted."""

    models: tuple[str, ...]
    parents: tuple[tuple[str, str], ...] = ()  # adapter -> base served name
    # A service's own list, when the service requires API keys: answered only with a key
    # (issue 23: a keyed service answers nothing without one).
    guard: RevisionSpec | None = None


LOCAL_PATHS = {"/healthz": "healthz", "/metrics": "metrics"}
MODELS_PATH = "/v1/models"
# The client routes (``torpor.routes``) whose JSON body names the model: all but the model list
# and the multipart ones (audio transcription), whose model is a form field, and reading a
# multipart body to find it is more than a router should parse.
MODEL_PATHS = INFERENCE_PATHS - {MODELS_PATH} - MULTIPART_PATHS


def build_route_table(services: Sequence[ServiceSpec], domain: str) -> RouteTable:
    targets: dict[tuple[str, str], Target] = {}
    tags: dict[tuple[str, str], Target] = {}
    models: dict[str, list[Split]] = {}
    parents: dict[str, str] = {}
    keyed: set[str] = set()
    for service in services:
        bounds: list[tuple[float, RevisionSpec]] = []
        total = 0.0
        for t in service.traffic:
            revision = service.revision(t.revision)
            if revision is None:
                continue
            if t.percent > 0:
                total += t.percent
                bounds.append((total, revision))
            if t.tag:
                tags[(service.namespace, f"{t.tag}-{service.name}")] = Tagged(
                    service, revision, t.tag
                )
        # Percentages are validated to add up to 100 at the edge; normalising here keeps a
        # partial table (e.g. a target naming a revision not yet known) routable.
        if total > 0:
            scaled = tuple((b * 100.0 / total, r) for b, r in bounds)
            targets[(service.namespace, service.name)] = Split(service, scaled)
            for name, split in _by_name(service, bounds).items():
                models.setdefault(name, []).append(split)
            for _, revision in bounds:
                for adapter in model_names(revision)[1:]:
                    parents[adapter] = served_name(revision)
                if revision.api_keys_secret:
                    keyed.update(model_names(revision))
    # A plain service name wins over a tag URL that spells the same name.
    for key, target in tags.items():
        targets.setdefault(key, target)
    return RouteTable(
        targets,
        domain.lower().strip("."),
        {name: tuple(splits) for name, splits in models.items()},
        parents,
        frozenset(keyed),
    )


def _by_name(service: ServiceSpec, bounds: list[tuple[float, RevisionSpec]]) -> dict[str, Split]:
    """The service's split per served name, each over the revisions serving that name only."""
    shares: dict[str, list[tuple[float, RevisionSpec]]] = {}
    below = 0.0
    for bound, revision in bounds:
        for name in model_names(revision):
            shares.setdefault(name, []).append((bound - below, revision))
        below = bound
    splits: dict[str, Split] = {}
    for name, parts in shares.items():
        total = sum(share for share, _ in parts)
        running = 0.0
        scaled: list[tuple[float, RevisionSpec]] = []
        for share, revision in parts:
            running += share
            scaled.append((running * 100.0 / total, revision))
        splits[name] = Split(service, tuple(scaled))
    return splits


def _names(target: Target) -> tuple[str, ...]:
    if isinstance(target, Tagged):
        return model_names(target.revision)
    return tuple(sorted({n for _, r in target.bounds for n in model_names(r)}))


def _guard(target: Target) -> RevisionSpec | None:
    """A revision of the target that requires API keys (its list needs one), else None."""
    revisions = (target.revision,) if isinstance(target, Tagged) else (r for _, r in target.bounds)
    return next((r for r in revisions if r.api_keys_secret), None)


def _listing(table: RouteTable, target: Target) -> ModelList:
    names = _names(target)
    return ModelList(names, _parents(table, names), _guard(target))


def _parents(table: RouteTable, names: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    return tuple((n, table.parents[n]) for n in names if n in table.parents)


def _pick(target: Target, roll: float) -> tuple[RevisionSpec, str | None]:
    if isinstance(target, Tagged):
        return target.revision, target.tag
    point = roll * 100.0
    for bound, revision in target.bounds:
        if point < bound:
            return revision, None
    return target.bounds[-1][1], None


def _host_name(host: str, domain: str) -> tuple[str, str] | None:
    """``name.namespace.domain[:port]`` -> (namespace, name); None if not the host form."""
    host = host.lower()
    if host.startswith("["):  # IPv6 literal: never the host form
        return None
    host = host.rsplit(":", 1)[0].rstrip(".")
    suffix = "." + domain
    if not domain or not host.endswith(suffix):
        return None
    parts = host[: -len(suffix)].split(".")
    if len(parts) != 2:
        return None
    name, namespace = parts
    return namespace, name


# What a client may reach on a replica is an allow-list (issue 23): the inference routes of
# ``torpor.routes``, and nothing else, whatever vLLM mounts. Everything else (adapter loading in
# either spelling, ``/invocations``, the replica's ``/metrics``, ``/load``, ``/version``,
# ``/docs``, ``/openapi.json``, sleep, profiling, weight updates, dev-mode RPC, a route a new
# vLLM adds) is refused with 403 ``platform_endpoint`` before a replica is woken. The replica
# refuses the same routes itself without its platform credential (``runtime.gate``), so a client
# that reaches its port another way (Knative's URL, loopback) meets the same door.


def _check_rest(rest: str) -> None:
    # The rest goes to the chosen revision's replica; dot segments are refused so that no upstream
    # normalises them into a path the client could not have asked for by name. Checked after
    # percent-decoding, twice (a replica's framework may decode once more), with backslashes as
    # separators: ``%2F..%2F`` and ``%252e%252e`` must not smuggle a ``..`` past this check.
    decoded = unquote(unquote(rest)).replace("\\", "/")
    if any(segment in {".", ".."} for segment in decoded.split("/")):
        raise BadRequest("dot segments are not allowed in the request path")
    # Starlette matches the decoded path; a doubled or trailing slash must not slip past.
    if not is_client_route(decoded):
        normal = normal_path(decoded)
        raise PlatformEndpoint(
            f"{normal[:200]} is not a client route of a replica; clients reach only the "
            "inference API (/v1/completions, /v1/chat/completions, /v1/models, ...)"
        )


Resolved = Route | Local | ByModel | ModelList


def resolve(table: RouteTable, host: str, raw_path: str, roll: float) -> Resolved:
    """Match a request to a revision. ``raw_path`` is the path as sent (percent-encoded)."""
    if not raw_path.startswith("/"):
        raise BadRequest("request path must start with '/'")
    named = _host_name(host, table.domain) if host else None
    if named is not None:
        target = table.targets.get(named)
        if target is None:
            raise NotFound(_missing(named[0], named[1], "host", host))
        if raw_path == MODELS_PATH:
            return _listing(table, target)
        _check_rest(raw_path)
        revision, tag = _pick(target, roll)
        return Route(target.service, revision, raw_path, tag)

    local = LOCAL_PATHS.get(raw_path)
    if local is not None:
        return Local(local)
    if raw_path == MODELS_PATH:
        names = tuple(sorted(n for n in table.models if n not in table.keyed))
        return ModelList(names, _parents(table, names))
    if raw_path in MODEL_PATHS:
        return ByModel(raw_path)
    segments = raw_path.split("/", 3)  # "", namespace, name, rest
    if len(segments) < 3 or not _NAME.match(segments[1]) or not _NAME.match(segments[2]):
        raise NotFound(
            f"no route for path {raw_path[:200]!r}: expected /<namespace>/<service>/... "
            f"or Host: <service>.<namespace>.{table.domain}"
        )
    namespace, name = segments[1], segments[2]
    target = table.targets.get((namespace, name))
    if target is None:
        raise NotFound(_missing(namespace, name, "path", raw_path[:200]))
    rest = "/" + segments[3] if len(segments) == 4 else "/"
    if rest == MODELS_PATH:
        return _listing(table, target)
    _check_rest(rest)
    revision, tag = _pick(target, roll)
    return Route(target.service, revision, rest, tag)


def route_model(table: RouteTable, model: str, path: str, roll: float) -> Route:
    """The revision serving ``model`` for a ``ByModel`` request (see the module's rules)."""
    splits = table.models.get(model)
    shown = repr(model[:200])
    if not splits:
        raise ModelNotFound(f"model {shown} is not served here; GET /v1/models lists the models")
    if len(splits) > 1:
        # Which services and namespaces serve it is not the caller's to learn from here.
        raise ModelNotFound(
            f"model {shown} is served by more than one service; call it at its service's "
            f"URL, /<namespace>/<service>/v1"
        )
    revision, tag = _pick(splits[0], roll)
    return Route(splits[0].service, revision, path, tag, adapter_of(revision, model))


def _missing(namespace: str, name: str, form: str, what: str) -> str:
    return f"service or tag {name!r} not found in namespace {namespace!r} (from {form} {what!r})"
