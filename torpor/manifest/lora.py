"""LoRA adapters of a revision: ``torpor.dev/lora-adapters`` -> ``LoraSpec``, and vLLM's flags.

The form (a Knative Service stays a Knative Service: the adapters are an annotation on the base's
revision template, so they cannot name an unknown base)::

    spec:
      template:
        metadata:
          annotations:
            torpor.dev/lora-adapters: |
              tiny-sql=/models/tiny-sql
              tiny-poet=/models/tiny-poet
            torpor.dev/lora-idle-window: 60s      # optional, default 60s

- The value lists ``<name>=<source>`` entries, one per line or separated by commas. ``name`` is
  the model name clients call the adapter by (1-128 characters: letters, digits, ``.``, ``_``,
  ``-``, ``:``, ``/``; starting with a letter or digit); ``source`` is the adapter's directory as
  a pod sees it (an absolute path, ``/models/<name>`` on the models volume, or a ``file://``
  URI), in PEFT's layout (``adapter_config.json`` and ``adapter_model.safetensors``).
- ``torpor.dev/lora-idle-window``: an adapter with no request for this long is unloaded from its
  replica (1s to 24h; only with adapters).
- vLLM's flags: ``--enable-lora`` is added when missing; ``--max-loras`` (adapters one replica
  holds at once) defaults to the number of adapters, at most ``DEFAULT_MAX_LORAS_CAP``;
  ``--max-lora-rank`` defaults to vLLM's 16 and must be one of the ranks vLLM accepts. A value
  the manifest gives is validated, not replaced. On a cluster the pod runs the container's args
  as written, so a manifest meant for both platforms writes these flags itself.

What needs the files (the directory exists, is a PEFT adapter, its rank fits ``--max-lora-rank``)
is checked when the manifest is deployed (``torpor.manifest.adapter_files``), as is an adapter
name that another service already serves (``check_adapter_names``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence

from torpor.manifest.durations import parse_go_duration
from torpor.manifest.errors import ManifestError
from torpor.spec import DEFAULT_LORA_IDLE_WINDOW_S, AdapterSpec, LoraSpec, ServiceSpec

ADAPTERS_KEY = "torpor.dev/lora-adapters"
IDLE_WINDOW_KEY = "torpor.dev/lora-idle-window"
MAX_ADAPTERS = 64
DEFAULT_MAX_LORAS_CAP = 8
IDLE_WINDOW_MIN_S = 1.0
IDLE_WINDOW_MAX_S = 86400.0
# vLLM 0.32's --max-lora-rank choices (vllm/config/lora.py, MaxLoRARanks).
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
VLLM_DEFAULT_LORA_RANK = 16
MAX_LORAS_LIMIT = 256

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}")


def annotation_field(path: str, key: str) -> str:
    return f'{path}["{key}"]'


def parse_lora(
    annotations: Mapping[str, str],
    annotations_path: str,
    engine_args: Sequence[str],
    args_path: str,
) -> tuple[LoraSpec | None, tuple[str, ...]]:
    """The revision's adapters and its vLLM arguments with the LoRA flags in place.

    Pure. Raises ``ManifestError`` naming the annotation or the argument at fault."""
    raw = annotations.get(ADAPTERS_KEY)
    idle_raw = annotations.get(IDLE_WINDOW_KEY)
    if raw is None:
        if idle_raw is not None:
            raise ManifestError(
                annotation_field(annotations_path, IDLE_WINDOW_KEY),
                f"only means something with {ADAPTERS_KEY}",
            )
        return None, tuple(engine_args)
    field = annotation_field(annotations_path, ADAPTERS_KEY)
    adapters = _adapters(raw, field)
    idle = DEFAULT_LORA_IDLE_WINDOW_S
    if idle_raw is not None:
        idle_field = annotation_field(annotations_path, IDLE_WINDOW_KEY)
        try:
            idle = parse_go_duration(idle_raw)
        except ValueError as e:
            raise ManifestError(idle_field, f"must be a duration like '60s': {e}") from None
        if not IDLE_WINDOW_MIN_S <= idle <= IDLE_WINDOW_MAX_S:
            raise ManifestError(idle_field, f"must be between 1s and 24h, got {idle_raw!r}")
    args = list(engine_args)
    max_loras = _int_flag(args, "--max-loras", args_path, VALID_MAX_LORAS)
    rank = _int_flag(args, "--max-lora-rank", args_path, VLLM_LORA_RANKS)
    if not any(_flag_name(a) == "--enable-lora" for a in args):
        args.append("--enable-lora")
    if max_loras is None:
        max_loras = min(len(adapters), DEFAULT_MAX_LORAS_CAP)
        args += ["--max-loras", str(max_loras)]
    if rank is None:
        rank = VLLM_DEFAULT_LORA_RANK
        args += ["--max-lora-rank", str(rank)]
    spec = LoraSpec(adapters=adapters, idle_window_s=idle, max_loras=max_loras, max_lora_rank=rank)
    return spec, tuple(args)


VALID_MAX_LORAS = tuple(range(1, MAX_LORAS_LIMIT + 1))


def _adapters(raw: str, field: str) -> tuple[AdapterSpec, ...]:
    entries = [e.strip() for e in re.split(r"[,\n]", raw)]
    entries = [e for e in entries if e]
    if not entries:
        raise ManifestError(field, "must list at least one adapter as <name>=<directory>")
    if len(entries) > MAX_ADAPTERS:
        raise ManifestError(field, f"at most {MAX_ADAPTERS} adapters, got {len(entries)}")
    out: list[AdapterSpec] = []
    seen: set[str] = set()
    for entry in entries:
        name, eq, source = (part.strip() for part in entry.partition("="))
        shown = entry[:80]
        if not eq or not name or not source:
            raise ManifestError(field, f"{shown!r} must be <name>=<directory>")
        if not _NAME.fullmatch(name):
            raise ManifestError(
                field,
                f"adapter name {name[:80]!r} must be 1-128 letters, digits or . _ - : /, "
                "starting with a letter or digit",
            )
        if name in seen:
            raise ManifestError(field, f"adapter {name!r} is declared twice")
        seen.add(name)
        if any(ch.isspace() for ch in source):
            raise ManifestError(field, f"adapter {name!r}: source {source[:80]!r} has whitespace")
        if not (source.startswith("/") or source.startswith("file:///")):
            raise ManifestError(
                field,
                f"adapter {name!r}: source {source[:80]!r} must be an absolute directory "
                "(/models/<name>) or a file:// URI",
            )
        out.append(AdapterSpec(name, source))
    return tuple(out)


def _flag_name(arg: str) -> str:
    if not arg.startswith("--"):
        return arg
    return "--" + arg[2:].partition("=")[0].replace("_", "-")


def _int_flag(args: list[str], flag: str, path: str, allowed: Sequence[int]) -> int | None:
    for i, arg in enumerate(args):
        if _flag_name(arg) != flag:
            continue
        at = path
        _, eq, inline = arg.partition("=")
        if eq:
            value = inline
        elif i + 1 < len(args):
            value = args[i + 1]
        else:
            raise ManifestError(at, f"{flag} needs a value")
        if not value.isdigit() or int(value) not in allowed:
            choices = (
                ", ".join(map(str, allowed))
                if len(allowed) < 20
                else f"{allowed[0]} to {allowed[-1]}"
            )
            raise ManifestError(at, f"{flag} must be one of {choices}, got {value!r}")
        return int(value)
    return None


def served_names(service: ServiceSpec) -> set[str]:
    """The base model names a service's routed revisions serve (as ``activator.routing``)."""
    return {r.runtime.served_model_name or r.runtime.model for r in service.routed_revisions()}


def adapter_names(service: ServiceSpec) -> set[str]:
    return {
        a.name
        for r in service.routed_revisions()
        if r.lora is not None
        for a in r.lora.adapters
    }


def check_adapter_names(
    service: ServiceSpec, others: Iterable[ServiceSpec], annotations_path: str
) -> None:
    """Refuse an adapter name that is also a model name: the service's own base, another
    service's model, or another service's adapter (either way round)."""
    field = annotation_field(annotations_path, ADAPTERS_KEY)
    mine = adapter_names(service)
    clash = mine & served_names(service)
    if clash:
        raise ManifestError(field, f"adapter {min(clash)!r} has the name of its base model")
    own_models = served_names(service)
    for other in others:
        if other.key == service.key:
            continue
        taken = served_names(other) | adapter_names(other)
        clash = mine & taken
        if clash:
            raise ManifestError(
                field,
                f"adapter {min(clash)!r} is already a model name served by service {other.key}",
            )
        clash = own_models & adapter_names(other)
        if clash:
            raise ManifestError(
                "spec.template.spec.containers[0].args",
                f"model name {min(clash)!r} is already an adapter of service {other.key}",
            )


def check_model_owner(service: ServiceSpec, others: Iterable[ServiceSpec]) -> None:
    """Names with an owner (issue 23): a model name at the root URL belongs to the namespace
    that claimed it first. A service may not serve a name that a service of another namespace
    already serves, so no namespace can make another's name ambiguous (404 for everyone) or take
    it. Within one namespace two services may share a name (the root refuses it as ambiguous;
    each service's own URL still works), as before."""
    mine = served_names(service)
    for other in others:
        if other.key == service.key or other.namespace == service.namespace:
            continue
        clash = mine & served_names(other)
        if clash:
            raise ManifestError(
                "spec.template.spec.containers[0].args",
                f"model name {min(clash)!r} belongs to another namespace, which served it "
                "first; serve it under another --served-model-name",
            )
