import json
from pathlib import Path

from safetensors import safe_open
from tokenizers import Tokenizer

from runtime.tinymodel import SHAPES, make_tiny_llama


def test_tiny_model_files_and_config(tmp_path: Path) -> None:
    out = make_tiny_llama(tmp_path / "tiny")
    names = {p.name for p in out.iterdir()}
    assert {
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    } <= names
    config = json.loads((out / "config.json").read_text())
    assert config["hidden_size"] // config["num_attention_heads"] == 64  # CPU kernels need 64
    assert config["head_dim"] == 64
    assert config["num_key_value_heads"] == 1
    assert config["vocab_size"] == 512
    assert json.loads((out / "tokenizer_config.json").read_text())["chat_template"]


def test_weights_are_real_bf16_safetensors(tmp_path: Path) -> None:
    out = make_tiny_llama(tmp_path / "tiny")
    shape = SHAPES["tiny"]
    with safe_open(str(out / "model.safetensors"), "np") as f:
        keys = set(f.keys())
        assert keys == {name for name, _ in shape.tensor_shapes()}
    header_len = int.from_bytes((out / "model.safetensors").read_bytes()[:8], "little")
    header = json.loads((out / "model.safetensors").read_bytes()[8 : 8 + header_len])
    assert header["lm_head.weight"]["dtype"] == "BF16"
    assert header["lm_head.weight"]["shape"] == [512, 128]
    assert (out / "model.safetensors").stat().st_size == 8 + header_len + shape.weight_bytes()


def test_tokenizer_round_trip(tmp_path: Path) -> None:
    out = make_tiny_llama(tmp_path / "tiny")
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    text = "Hello, how are you today? The cat read every book."
    ids = tok.encode(text).ids
    assert max(ids) < 512
    assert tok.decode(ids) == text
    assert tok.token_to_id("<s>") == 1 and tok.token_to_id("</s>") == 2


def test_idempotent_and_deterministic(tmp_path: Path) -> None:
    a = make_tiny_llama(tmp_path / "a", seed=3)
    before = (a / "model.safetensors").stat().st_mtime_ns
    assert make_tiny_llama(a, seed=3) == a
    assert (a / "model.safetensors").stat().st_mtime_ns == before  # left alone
    b = make_tiny_llama(tmp_path / "b", seed=3)
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
