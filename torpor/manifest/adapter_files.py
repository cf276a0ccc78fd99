"""Deploy-time checks of LoRA adapter directories: they exist, are PEFT LoRA adapters, and fit.

The one part of manifest validation that reads files (``torpor.manifest.lora`` is pure), so the
control plane calls it with its own mapping from a pod's path (``/models/...``) to this
machine's. Each refusal names the ``torpor.dev/lora-adapters`` annotation and the adapter.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from urllib.parse import unquote, urlparse

from torpor.manifest.errors import ManifestError
from torpor.manifest.lora import ADAPTERS_KEY, annotation_field
from torpor.spec import AdapterSpec, LoraSpec

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
MAX_CONFIG_BYTES = 1 << 20
TEMPLATE_ANNOTATIONS = "spec.template.metadata.annotations"


def source_path(source: str) -> str:
    """A ``file://`` URI's path, or the path as written."""
    if source.startswith("file://"):
        return unquote(urlparse(source).path)
    return source


def check_adapter_files(
    lora: LoraSpec,
    local_path: Callable[[str], str],
    annotations_path: str = TEMPLATE_ANNOTATIONS,
) -> None:
    """Raise ``ManifestError`` for the first adapter whose directory is not a usable adapter."""
    field = annotation_field(annotations_path, ADAPTERS_KEY)
    for adapter in lora.adapters:
        reason = _problem(adapter, Path(local_path(source_path(adapter.source))), lora)
        if reason is not None:
            raise ManifestError(field, f"adapter {adapter.name!r} ({adapter.source}): {reason}")


def adapter_rank(directory: Path) -> int:
    """The rank ``r`` in an adapter's ``adapter_config.json``; ValueError when unreadable."""
    config = directory / ADAPTER_CONFIG
    if config.stat().st_size > MAX_CONFIG_BYTES:
        raise ValueError(f"{ADAPTER_CONFIG} is larger than {MAX_CONFIG_BYTES} bytes")
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except ValueError as e:
        raise ValueError(f"{ADAPTER_CONFIG} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{ADAPTER_CONFIG} is not a JSON object")
    peft_type = data.get("peft_type", "LORA")
    if peft_type != "LORA":
        raise ValueError(f"{ADAPTER_CONFIG} says peft_type {peft_type!r}, not LORA")
    rank = data.get("r")
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        raise ValueError(f"{ADAPTER_CONFIG} has no positive whole rank 'r' (got {rank!r})")
    return rank


def _problem(adapter: AdapterSpec, directory: Path, lora: LoraSpec) -> str | None:
    if not directory.is_dir():
        return "no such directory"
    if not (directory / ADAPTER_CONFIG).is_file():
        return f"not a PEFT adapter directory: no {ADAPTER_CONFIG}"
    if not any((directory / w).is_file() for w in ADAPTER_WEIGHTS):
        return f"not a PEFT adapter directory: no {' or '.join(ADAPTER_WEIGHTS)}"
    try:
        rank = adapter_rank(directory)
    except (OSError, ValueError) as e:
        return str(e)
    if rank > lora.max_lora_rank:
        return f"rank {rank} is above --max-lora-rank {lora.max_lora_rank}"
    return None
