"""``spec.traffic``: parsed as written, then resolved against the service's revisions."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torpor.manifest.errors import ManifestError
from torpor.manifest.fields import child, expect_mapping, get_bool, get_int, get_str, item
from torpor.manifest.model import TrafficEntry
from torpor.manifest.names import LABEL_MAX, check_dns1035_label
from torpor.spec import TrafficTarget

MAX_TRAFFIC_ENTRIES = 100


def parse_traffic(raw: list[Any], path: str, service: str) -> tuple[TrafficEntry, ...]:
    """Validate the entries on their own (the revisions they name are checked on apply)."""
    if len(raw) > MAX_TRAFFIC_ENTRIES:
        raise ManifestError(path, f"at most {MAX_TRAFFIC_ENTRIES} entries, got {len(raw)}")
    entries: list[TrafficEntry] = []
    tags: set[str] = set()
    for i, value in enumerate(raw):
        at = item(path, i)
        t = expect_mapping(value, at)
        if t.get("configurationName") is not None:
            raise ManifestError(
                child(at, "configurationName"),
                "not allowed in a Service; use revisionName or latestRevision",
            )
        revision = get_str(t, "revisionName", at)
        latest = get_bool(t, "latestRevision", at)
        tag = get_str(t, "tag", at)
        percent = get_int(t, "percent", at, low=0, high=100)
        if revision is not None:
            check_dns1035_label(revision, child(at, "revisionName"))
            if latest:
                raise ManifestError(
                    child(at, "latestRevision"), "may not be true when revisionName is set"
                )
        elif latest is False:
            raise ManifestError(
                child(at, "revisionName"), "is required when latestRevision is false"
            )
        if tag is not None:
            # The tag becomes the host label <tag>-<service>, which must itself be a label.
            check_dns1035_label(tag, child(at, "tag"), max_len=LABEL_MAX - len(service) - 1)
            if tag in tags:
                raise ManifestError(child(at, "tag"), f"tag {tag!r} is used twice")
            tags.add(tag)
        entries.append(
            TrafficEntry(
                percent=percent,
                revision_name=revision,
                latest_revision=revision is None,
                tag=tag,
            )
        )
    if entries:
        total = sum(e.percent or 0 for e in entries)
        if total != 100:
            raise ManifestError(path, f"percents add up to {total}, want 100")
    return tuple(entries)


def resolve_traffic(
    entries: tuple[TrafficEntry, ...], latest: str, existing: Iterable[str], path: str
) -> tuple[TrafficTarget, ...]:
    """Concrete targets: "latest" becomes the latest revision's name; names must exist."""
    if not entries:
        return (TrafficTarget(revision=latest, percent=100, latest_revision=True),)
    names = set(existing)
    targets: list[TrafficTarget] = []
    for i, e in enumerate(entries):
        if e.latest_revision:
            revision = latest
        else:
            assert e.revision_name is not None
            if e.revision_name not in names:
                raise ManifestError(
                    child(item(path, i), "revisionName"),
                    f"revision {e.revision_name!r} does not exist",
                )
            revision = e.revision_name
        targets.append(
            TrafficTarget(
                revision=revision,
                percent=e.percent or 0,
                tag=e.tag,
                latest_revision=e.latest_revision,
            )
        )
    return tuple(targets)
