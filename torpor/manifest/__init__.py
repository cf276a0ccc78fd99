"""Knative Service manifests -> torpor's frozen specs, validated once at the edge.

``parse_service`` reads and checks one manifest (pure, bounded against hostile input);
``apply_manifest`` turns it into the next ``ServiceSpec`` given what is deployed (pure).
Every rejection is a ``ManifestError`` naming the field and why.
"""

from torpor.manifest.apply import apply_manifest, revision_name
from torpor.manifest.errors import DOCUMENT, ManifestError
from torpor.manifest.model import RevisionTemplate, ServiceManifest, TrafficEntry
from torpor.manifest.parse import (
    API_VERSION,
    KIND,
    MAX_REVISION_TIMEOUT_S,
    parse_service,
)
from torpor.manifest.yaml_load import MAX_MANIFEST_BYTES

__all__ = [
    "API_VERSION",
    "DOCUMENT",
    "KIND",
    "MAX_MANIFEST_BYTES",
    "MAX_REVISION_TIMEOUT_S",
    "ManifestError",
    "RevisionTemplate",
    "ServiceManifest",
    "TrafficEntry",
    "apply_manifest",
    "parse_service",
    "revision_name",
]
