"""The parsed manifest: what ``parse_service`` returns and ``apply_manifest`` consumes.

It is still the user's intent (traffic may say "latest", revisions have no number yet); applying
it to what is deployed turns it into a ``torpor.spec.ServiceSpec``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torpor.spec import (
    DEFAULT_QUEUE_DEPTH,
    DEFAULT_TIMEOUT_S,
    AutoscalingSpec,
    LoraSpec,
    RuntimeSpec,
)


@dataclass(frozen=True, slots=True)
class RevisionTemplate:
    """``spec.template``: everything that, when changed, makes a new revision."""

    runtime: RuntimeSpec
    autoscaling: AutoscalingSpec
    name: str | None = None  # spec.template.metadata.name: an explicit revision name
    container_concurrency: int = 0
    timeout_s: float = DEFAULT_TIMEOUT_S
    queue_depth: int = DEFAULT_QUEUE_DEPTH
    api_keys_secret: str | None = None
    lora: LoraSpec | None = None  # torpor.dev/lora-adapters (torpor.manifest.lora)
    digest: str = ""  # sha256 of the normalised template; see torpor.manifest.digest


@dataclass(frozen=True, slots=True)
class TrafficEntry:
    """One ``spec.traffic`` entry as written: by revision name, or following the latest."""

    percent: int | None = None
    revision_name: str | None = None
    latest_revision: bool = False
    tag: str | None = None


@dataclass(frozen=True, slots=True)
class ServiceManifest:
    """A validated Knative Service (``serving.knative.dev/v1``, kind ``Service``)."""

    namespace: str
    name: str
    template: RevisionTemplate
    traffic: tuple[TrafficEntry, ...] = ()  # empty: 100% to the latest revision
    # Where it came from (a file name), for errors raised when it is applied; not part of it.
    source: str = field(default="<manifest>", compare=False)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def template_digest(self) -> str:
        return self.template.digest
