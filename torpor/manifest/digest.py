"""The template digest: equal digests mean the same revision, so re-applying a file is a no-op."""

from __future__ import annotations

import dataclasses
import hashlib
import json

from torpor import codec
from torpor.manifest.model import RevisionTemplate


def template_digest(template: RevisionTemplate) -> str:
    """sha256 over the canonical JSON of the parsed template (its own digest field left out).

    Hashing the parsed form, not the raw YAML, means formatting, key order, quoting and
    Kubernetes fields torpor does not read make no new revision.
    """
    data = codec.to_jsonable(dataclasses.replace(template, digest=""))
    if data.get("lora") is None:
        # Templates without adapters hash as they did before adapters existed: no new revision.
        data.pop("lora", None)
    canonical = json.dumps(data, separators=(",", ":"), sort_keys=True)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()
