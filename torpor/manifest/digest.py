"""The template digest: equal digests mean the same revision, so re-applying a file is a no-op."""

from __future__ import annotations

import dataclasses
import hashlib

from torpor import codec
from torpor.manifest.model import RevisionTemplate


def template_digest(template: RevisionTemplate) -> str:
    """sha256 over the canonical JSON of the parsed template (its own digest field left out).

    Hashing the parsed form, not the raw YAML, means formatting, key order, quoting and
    Kubernetes fields torpor does not read make no new revision.
    """
    canonical = codec.dumps(dataclasses.replace(template, digest=""))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()
