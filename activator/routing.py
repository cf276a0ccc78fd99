"""Request -> revision: a pure function of a route table and the request's host and path.

Two URL forms reach a revision (ARCHITECTURE.md, "Users and what they do"):

- host form, Knative's: ``<service>.<namespace>.<domain>`` or
  ``<tag>-<service>.<namespace>.<domain>`` (the path is forwarded unchanged);
- path form, for clients without DNS: ``/<namespace>/<service>/...`` or
  ``/<namespace>/<tag>-<service>/...`` (the two-segment prefix is stripped before forwarding).

The service URL splits by ``percent``; a tag URL always reaches its one revision, which is how a
revision with 0% stays reachable. The caller passes the random ``roll`` so this stays pure and
tests can check proportions.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import unquote

from activator.errors import BadRequest, NotFound
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


@dataclass(frozen=True, slots=True)
class Route:
    service: ServiceSpec
    revision: RevisionSpec
    path: str  # raw (still percent-encoded) path to forward, always starting with "/"
    tag: str | None = None


@dataclass(frozen=True, slots=True)
class Local:
    """One of the activator's own endpoints (``/healthz``, ``/metrics``)."""

    name: str


LOCAL_PATHS = {"/healthz": "healthz", "/metrics": "metrics"}


def build_route_table(services: Sequence[ServiceSpec], domain: str) -> RouteTable:
    targets: dict[tuple[str, str], Target] = {}
    tags: dict[tuple[str, str], Target] = {}
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
    # A plain service name wins over a tag URL that spells the same name.
    for key, target in tags.items():
        targets.setdefault(key, target)
    return RouteTable(targets, domain.lower().strip("."))


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


def _check_rest(rest: str) -> None:
    # The rest goes to the chosen revision's replica; dot segments are refused so that no upstream
    # normalises them into a path the client could not have asked for by name. Checked after
    # percent-decoding, twice (a replica's framework may decode once more), with backslashes as
    # separators: ``%2F..%2F`` and ``%252e%252e`` must not smuggle a ``..`` past this check.
    decoded = unquote(unquote(rest)).replace("\\", "/")
    if any(segment in {".", ".."} for segment in decoded.split("/")):
        raise BadRequest("dot segments are not allowed in the request path")


def resolve(table: RouteTable, host: str, raw_path: str, roll: float) -> Route | Local:
    """Match a request to a revision. ``raw_path`` is the path as sent (percent-encoded)."""
    if not raw_path.startswith("/"):
        raise BadRequest("request path must start with '/'")
    named = _host_name(host, table.domain) if host else None
    if named is not None:
        target = table.targets.get(named)
        if target is None:
            raise NotFound(_missing(named[0], named[1], "host", host))
        _check_rest(raw_path)
        revision, tag = _pick(target, roll)
        return Route(target.service, revision, raw_path, tag)

    local = LOCAL_PATHS.get(raw_path)
    if local is not None:
        return Local(local)
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
    _check_rest(rest)
    revision, tag = _pick(target, roll)
    return Route(target.service, revision, rest, tag)


def _missing(namespace: str, name: str, form: str, what: str) -> str:
    return f"service or tag {name!r} not found in namespace {namespace!r} (from {form} {what!r})"
