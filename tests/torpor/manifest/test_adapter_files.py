"""Deploy-time checks of adapter directories (``torpor.manifest.adapter_files``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runtime.tinyadapter import make_tiny_adapter
from torpor.manifest import ManifestError
from torpor.manifest.adapter_files import check_adapter_files
from torpor.spec import AdapterSpec, LoraSpec

ADAPTERS = 'spec.template.metadata.annotations["torpor.dev/lora-adapters"]'


def lora(source: str, rank: int = 16) -> LoraSpec:
    return LoraSpec((AdapterSpec("a", source),), max_lora_rank=rank, max_loras=1)


def test_a_tiny_adapter_passes(tmp_path: Path) -> None:
    make_tiny_adapter(tmp_path / "models" / "a", rank=8)
    check_adapter_files(lora("/models/a"), lambda p: str(tmp_path) + p)
    check_adapter_files(lora("file:///models/a"), lambda p: str(tmp_path) + p)


@pytest.mark.parametrize(
    ("setup", "rank", "words"),
    [
        ("missing", 16, "no such directory"),
        ("empty", 16, "no adapter_config.json"),
        ("no-weights", 16, "no adapter_model.safetensors"),
        ("bad-json", 16, "adapter_config"),
        ("not-lora", 16, "not LORA"),
        ("no-rank", 16, "no positive whole rank"),
        ("ok", 8, "rank 16 is above --max-lora-rank 8"),
    ],
)
def test_bad_adapter_directories_are_refused(
    tmp_path: Path, setup: str, rank: int, words: str
) -> None:
    d = tmp_path / "a"
    if setup != "missing":
        d.mkdir()
    config = {"peft_type": "LORA", "r": 16}
    if setup == "not-lora":
        config["peft_type"] = "IA3"
    if setup == "no-rank":
        del config["r"]
    if setup not in ("missing", "empty"):
        (d / "adapter_config.json").write_text(
            "{not json" if setup == "bad-json" else json.dumps(config)
        )
    if setup not in ("missing", "empty", "no-weights"):
        (d / "adapter_model.safetensors").write_bytes(b"x")
    with pytest.raises(ManifestError) as info:
        check_adapter_files(lora(str(d), rank), str)
    assert info.value.field == ADAPTERS
    assert words in info.value.reason and "'a'" in info.value.reason
