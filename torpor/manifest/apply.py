"""Applying a parsed manifest to what is deployed: revision numbering and traffic resolution.

Pure: the previous ``ServiceSpec`` in, the next one out. Knative's rules: each change of
``spec.template`` makes a new revision ``<service>-<generation>`` (five digits) or takes the
template's own ``metadata.name``; an unchanged template makes none; a named revision cannot be
reused for a different template.
"""

from __future__ import annotations

from torpor.manifest.errors import ManifestError
from torpor.manifest.model import RevisionTemplate, ServiceManifest
from torpor.manifest.traffic import resolve_traffic
from torpor.spec import RevisionRef, RevisionSpec, ServiceSpec

NAME_FIELD = "spec.template.metadata.name"


def revision_name(service: str, generation: int) -> str:
    return f"{service}-{generation:05d}"


def apply_manifest(
    manifest: ServiceManifest, previous: ServiceSpec | None, *, domain: str = "example.com"
) -> ServiceSpec:
    """The service after ``manifest`` is applied on top of ``previous`` (None: a new service).

    Raises ``ManifestError`` (and changes nothing, being pure) when the manifest cannot apply:
    a reused revision name, a traffic entry naming a revision that does not exist.
    """
    try:
        return _apply(manifest, previous, domain)
    except ManifestError as e:
        raise e.with_source(manifest.source) from None


def _apply(manifest: ServiceManifest, previous: ServiceSpec | None, domain: str) -> ServiceSpec:
    if previous is not None and (previous.namespace, previous.name) != (
        manifest.namespace,
        manifest.name,
    ):
        raise ValueError(f"cannot apply {manifest.key} on top of {previous.key}")
    revisions = previous.revisions if previous is not None else ()
    generation = previous.generation if previous is not None else 0
    latest = max(revisions, key=lambda r: r.generation) if revisions else None

    template = manifest.template
    if latest is None or latest.template_digest != template.digest:
        generation += 1
        name = template.name or revision_name(manifest.name, generation)
        clash = next((r for r in revisions if r.ref.name == name), None)
        if clash is not None:
            if template.name:
                reason = (
                    f"revision {name!r} already exists with a different template; "
                    "give the changed template a new name"
                )
            else:
                reason = (
                    f"the next revision name {name!r} is taken by an earlier named revision; "
                    "name this template explicitly"
                )
            raise ManifestError(NAME_FIELD, reason)
        latest = _revision(manifest, template, name, generation)
        revisions = (*revisions, latest)

    traffic = resolve_traffic(
        manifest.traffic, latest.ref.name, (r.ref.name for r in revisions), "spec.traffic"
    )
    return ServiceSpec(
        namespace=manifest.namespace,
        name=manifest.name,
        generation=generation,
        revisions=revisions,
        traffic=traffic,
        domain=domain,
    )


def _revision(
    manifest: ServiceManifest, template: RevisionTemplate, name: str, generation: int
) -> RevisionSpec:
    return RevisionSpec(
        ref=RevisionRef(manifest.namespace, name),
        service=manifest.name,
        generation=generation,
        runtime=template.runtime,
        autoscaling=template.autoscaling,
        container_concurrency=template.container_concurrency,
        timeout_s=template.timeout_s,
        queue_depth=template.queue_depth,
        template_digest=template.digest,
        api_keys_secret=template.api_keys_secret,
        lora=template.lora,
    )
