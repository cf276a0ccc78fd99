"""The example manifests tests and benchmarks deploy, and renamed copies of them."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TINY_CHAT = REPO / "manifests" / "examples" / "tiny-chat.yaml"


def renamed_tiny_chat(directory: Path, name: str, *, model: str = "tiny-llama") -> Path:
    """tiny-chat.yaml as service ``name`` (served under that name) on model directory ``model``.

    Written to ``directory/<name>.yaml``. A model that does not exist under the platform home
    makes a service whose replicas fail to start (the fault runs use one).
    """
    text = TINY_CHAT.read_text()
    text = text.replace("name: tiny-chat", f"name: {name}")
    text = text.replace("--served-model-name=tiny-chat", f"--served-model-name={name}")
    text = text.replace("/models/tiny-llama", f"/models/{model}")
    path = directory / f"{name}.yaml"
    path.write_text(text)
    return path
