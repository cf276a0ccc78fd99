"""Make a LoRA adapter for the tiny Llama with random weights, in PEFT's on-disk format.

No download and no ``peft``: ``adapter_config.json`` (what PEFT's ``LoraConfig.save_pretrained``
writes, the fields vLLM reads) and ``adapter_model.safetensors`` holding, for each target module
of each layer, ``base_model.model.model.layers.<n>.<module>.lora_A.weight`` (rank x in) and
``...lora_B.weight`` (out x rank), as float32. Both matrices are random and B is not zero (PEFT
starts B at zero, which would make every adapter answer like its base), so two adapters made
with different seeds give different answers.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from runtime.tinymodel import SHAPES, LlamaShape, built_whole

_COMPLETE_MARKER = ".torpor-adapter-complete"
DEFAULT_RANK = 8
# The projections an adapter changes; (module, its input width, its output width) per shape.
TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj")


def _module_dims(s: LlamaShape, module: str) -> tuple[int, int]:
    kv = s.num_kv_heads * s.head_dim
    return {
        "q_proj": (s.hidden_size, s.hidden_size),
        "k_proj": (s.hidden_size, kv),
        "v_proj": (s.hidden_size, kv),
        "o_proj": (s.hidden_size, s.hidden_size),
    }[module]


def make_tiny_adapter(
    out_dir: Path,
    *,
    seed: int = 1,
    rank: int = DEFAULT_RANK,
    size: str = "tiny",
    base_model: str = "tiny-llama",
) -> Path:
    """Write a random LoRA adapter of ``rank`` for the Llama of ``size``; keep a complete one."""
    from safetensors.numpy import save_file

    out_dir = Path(out_dir)
    if (out_dir / _COMPLETE_MARKER).exists():
        return out_dir
    if rank < 1:
        raise ValueError(f"rank must be at least 1, got {rank}")
    shape = SHAPES[size]
    with built_whole(out_dir, _COMPLETE_MARKER, f"{size} r={rank} seed={seed}") as tmp:
        config = {
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "base_model_name_or_path": base_model,
            "r": rank,
            "lora_alpha": 2 * rank,
            "lora_dropout": 0.0,
            "target_modules": list(TARGET_MODULES),
            "bias": "none",
            "fan_in_fan_out": False,
            "modules_to_save": None,
            "use_rslora": False,
            "use_dora": False,
            "inference_mode": True,
        }
        (tmp / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")
        rng = np.random.default_rng(seed)
        tensors: dict[str, np.ndarray] = {}
        for n in range(shape.num_layers):
            for module in TARGET_MODULES:
                fan_in, fan_out = _module_dims(shape, module)
                part = "mlp" if module.endswith(("gate_proj", "up_proj", "down_proj")) else (
                    "self_attn")
                prefix = f"base_model.model.model.layers.{n}.{part}.{module}"
                a = rng.normal(0.0, 1.0 / np.sqrt(fan_in), size=(rank, fan_in))
                b = rng.normal(0.0, 0.5, size=(fan_out, rank))
                tensors[prefix + ".lora_A.weight"] = a.astype(np.float32)
                tensors[prefix + ".lora_B.weight"] = b.astype(np.float32)
        weights = tmp / "adapter_model.safetensors"
        save_file(tensors, str(weights), metadata={"format": "pt"})
        weights.chmod(0o644)
    return out_dir
