"""``torpor.dev/lora-adapters``: parsing, vLLM's flags, and every bad declaration refused with its
field named (``torpor.manifest.lora``; the file checks in ``test_adapter_files.py``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from torpor.manifest import ManifestError, apply_manifest, parse_service
from torpor.manifest.lora import check_adapter_names

REPO = Path(__file__).resolve().parents[3]
EXAMPLE = (REPO / "manifests/examples/tiny-lora.yaml").read_text()
ADAPTERS = 'spec.template.metadata.annotations["torpor.dev/lora-adapters"]'
IDLE = 'spec.template.metadata.annotations["torpor.dev/lora-idle-window"]'
ARGS = "spec.template.spec.containers[0].args"


def manifest(adapters: str | None, *, args: str = "", idle: str | None = None, name: str = "base",
             model: str = "base-model") -> str:
    notes = ""
    if adapters is not None:
        notes += f"        torpor.dev/lora-adapters: {adapters!r}\n".replace("'", '"')
    if idle is not None:
        notes += f'        torpor.dev/lora-idle-window: "{idle}"\n'
    return f"""apiVersion: serving.knative.dev/v1
kind: Service
metadata:
  name: {name}
spec:
  template:
    metadata:
      annotations:
        autoscaling.knative.dev/min-scale: "0"
{notes}    spec:
      containers:
        - image: runtime
          args: ["--model=/models/tiny-llama", "--served-model-name={model}"{args}]
"""


def test_the_example_declares_two_adapters_with_its_own_flags() -> None:
    m = parse_service(EXAMPLE)
    lora = m.template.lora
    assert lora is not None
    assert [(a.name, a.source) for a in lora.adapters] == [
        ("tiny-sql", "/models/tiny-sql"),
        ("tiny-poet", "/models/tiny-poet"),
    ]
    assert (lora.idle_window_s, lora.max_loras, lora.max_lora_rank) == (30.0, 2, 8)
    args = m.template.runtime.engine_args
    assert args.count("--enable-lora") == 1
    assert "--max-loras=2" in args and "--max-lora-rank=8" in args


def test_the_platform_adds_vllms_flags_and_commas_separate_too() -> None:
    m = parse_service(manifest("a=/models/a, b=file:///models/b"))
    lora = m.template.lora
    assert lora is not None and [a.name for a in lora.adapters] == ["a", "b"]
    assert lora.idle_window_s == 60.0 and lora.max_loras == 2 and lora.max_lora_rank == 16
    assert m.template.runtime.engine_args[-5:] == (
        "--enable-lora", "--max-loras", "2", "--max-lora-rank", "16"
    )


def test_without_adapters_nothing_changes() -> None:
    m = parse_service(manifest(None))
    assert m.template.lora is None
    assert "--enable-lora" not in m.template.runtime.engine_args


@pytest.mark.parametrize(
    ("adapters", "args", "idle", "field", "words"),
    [
        ("", "", None, ADAPTERS, "at least one adapter"),
        ("a", "", None, ADAPTERS, "<name>=<directory>"),
        ("a=", "", None, ADAPTERS, "<name>=<directory>"),
        ("=/models/a", "", None, ADAPTERS, "<name>=<directory>"),
        ("a=/models/a,a=/models/b", "", None, ADAPTERS, "declared twice"),
        ("-a=/models/a", "", None, ADAPTERS, "adapter name"),
        ("a b=/models/a", "", None, ADAPTERS, "adapter name"),
        ("a=models/a", "", None, ADAPTERS, "absolute directory"),
        ("a=http://x/a", "", None, ADAPTERS, "absolute directory"),
        ("a=/models/a", "", "0s", IDLE, "between 1s and 24h"),
        ("a=/models/a", "", "soon", IDLE, "duration"),
        (None, "", "30s", IDLE, "only means something"),
        ("a=/models/a", ', "--max-lora-rank=12"', None, ARGS, "--max-lora-rank must be one of"),
        ("a=/models/a", ', "--max-loras=0"', None, ARGS, "--max-loras must be one of"),
        ("a=/models/a", ', "--max_loras"', None, ARGS, "needs a value"),
    ],
)
def test_bad_declarations_are_refused_naming_the_field(
    adapters: str | None, args: str, idle: str | None, field: str, words: str
) -> None:
    with pytest.raises(ManifestError) as info:
        parse_service(manifest(adapters, args=args, idle=idle))
    assert info.value.field == field
    assert words in info.value.reason


def test_too_many_adapters_are_refused() -> None:
    many = ",".join(f"a{i}=/models/a{i}" for i in range(65))
    with pytest.raises(ManifestError, match="at most 64") as info:
        parse_service(manifest(many))
    assert info.value.field == ADAPTERS


def _service(text: str):  # type: ignore[no-untyped-def]
    return apply_manifest(parse_service(text), None)


def test_an_adapter_named_like_any_model_is_refused() -> None:
    other = _service(manifest(None, name="other", model="chat"))
    own = _service(manifest("base-model=/models/a"))
    with pytest.raises(ManifestError, match="name of its base model") as info:
        check_adapter_names(own, [other], "spec.template.metadata.annotations")
    assert info.value.field == ADAPTERS
    clash = _service(manifest("chat=/models/a"))
    with pytest.raises(ManifestError, match="served by service default/other"):
        check_adapter_names(clash, [other], "spec.template.metadata.annotations")
    # ... either way round: a new service's model named like another service's adapter.
    with_adapter = _service(manifest("chat2=/models/a", name="lora"))
    newcomer = _service(manifest(None, name="late", model="chat2"))
    with pytest.raises(ManifestError, match="already an adapter of service default/lora") as info:
        check_adapter_names(newcomer, [with_adapter], "spec.template.metadata.annotations")
    assert info.value.field == ARGS
    # An adapter name no one else uses passes.
    check_adapter_names(_service(manifest("fresh=/models/a")), [other, with_adapter],
                        "spec.template.metadata.annotations")


def test_a_template_without_adapters_keeps_its_digest() -> None:
    # Adding the lora field must not turn every deployed template into a new revision.
    from torpor.manifest.digest import template_digest

    t = parse_service(manifest(None)).template
    assert t.digest == template_digest(t)
    assert "lora" not in t.digest
