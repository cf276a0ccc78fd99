"""The revision's container -> ``RuntimeSpec``.

torpor runs one model per revision in one container. ``--model`` and ``--served-model-name`` in
``args`` belong to the runtime (it resolves the model through the weight cache); the flags the
platform sets per replica are refused; everything else is passed to vLLM unchanged.

A flag is recognised the way vLLM's parser would read it, not by its exact text: vLLM's
``FlexibleArgumentParser`` turns ``_`` into ``-`` in flag names and, being an argparse parser,
takes any unique prefix (``--ho``, ``--por=8``). So an underscore spelling of a flag is that
flag, and a prefix of a platform or runtime flag is refused (spell it in full); neither can
reach vLLM as a second ``--host``. The runtime also puts its own flags after the engine's, where
argparse lets the last one win (runtime/args.py).

``env`` takes literal values only, and not the loader, interpreter and platform variables of
``torpor.manifest.env``'s deny list; ``$(VAR)`` references are kept as written here and expanded
when a replica starts (``torpor.manifest.env.container_env``), as the kubelet does.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from torpor.manifest.env import denied_env, denied_list, forbidden_env
from torpor.manifest.errors import ManifestError
from torpor.manifest.fields import (
    child,
    expect_mapping,
    expect_str,
    get_int,
    get_list,
    get_str,
    item,
    kind_of,
)
from torpor.manifest.probes import parse_liveness
from torpor.spec import RuntimeSpec

DEFAULT_CONTAINER_PORT = 8080
# Ports Knative keeps for its queue-proxy and metrics (it rejects them as the user's port).
RESERVED_PORTS = frozenset({8012, 8013, 8022, 9090, 9091})
# Environment variables Knative sets in every revision container and refuses from users.
RESERVED_ENV = frozenset({"PORT", "K_SERVICE", "K_CONFIGURATION", "K_REVISION"})
# Flags the platform gives each replica itself (--uds would move vLLM off the replica's port).
PLATFORM_FLAGS = frozenset(
    {"--host", "--port", "--uds", "--replica-id", "--launched-at", "--cache-dir"}
)
# Flags that read a file of further settings: vLLM's ``--config FILE`` (YAML) can set any flag,
# the platform's included (``uds:`` moved the listener past the flag check). Refused.
CONFIG_FLAGS = frozenset({"--config"})
# Flags the runtime takes from the manifest (the model it resolves, the name it serves).
OWNED_FLAGS = ("--model", "--served-model-name")
MAX_ARGS = 256
MAX_ENV = 256

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")


def parse_container(containers: list[Any], path: str) -> RuntimeSpec:
    """``spec.template.spec.containers`` (at ``path``): exactly one container."""
    if not containers:
        raise ManifestError(path, "must list one container")
    if len(containers) > 1:
        raise ManifestError(path, f"torpor runs one container per revision, got {len(containers)}")
    at = item(path, 0)
    c = expect_mapping(containers[0], at)

    image = get_str(c, "image", at, required=True)
    assert image is not None
    if any(ch.isspace() for ch in image):
        raise ManifestError(child(at, "image"), f"{image!r} contains whitespace")
    if c.get("command") is not None:
        raise ManifestError(
            child(at, "command"),
            "the runtime image's entrypoint serves the model; put its flags in args",
        )

    model, served, engine_args = _split_args(get_list(c, "args", at), child(at, "args"))
    env = _env(get_list(c, "env", at), child(at, "env"))
    port = _port(get_list(c, "ports", at), child(at, "ports"))
    return RuntimeSpec(
        image=image,
        model=model,
        served_model_name=served,
        engine_args=engine_args,
        env=env,
        container_port=port,
        liveness=parse_liveness(c, at, port),
    )


def _split_args(raw: list[Any], path: str) -> tuple[str, str | None, tuple[str, ...]]:
    if len(raw) > MAX_ARGS:
        raise ManifestError(path, f"at most {MAX_ARGS} arguments, got {len(raw)}")
    args = [expect_str(a, item(path, i)) for i, a in enumerate(raw)]
    owned: dict[str, str] = {}
    engine: list[str] = []
    i = 0
    while i < len(args):
        arg, field = args[i], item(path, i)
        written, eq, inline = arg.partition("=")
        flag = as_vllm_reads(written)
        # vLLM reads --name.key=value as a JSON field of --name: the same flag.
        base = flag.partition(".")[0]
        if flag == "--":
            raise ManifestError(field, "a bare -- would turn the platform's flags into values")
        if base in PLATFORM_FLAGS:
            raise ManifestError(field, f"{written} is set by the platform for each replica")
        if base in CONFIG_FLAGS:
            raise ManifestError(
                field, f"{written} reads flags from a file, past this check; give them in args"
            )
        full = abbreviated(base)
        if full is not None:
            whose = (
                "set by the platform" if full in PLATFORM_FLAGS
                else "refused" if full in CONFIG_FLAGS
                else "the runtime's"
            )
            raise ManifestError(
                field, f"{written} abbreviates {full} ({whose}); spell flags in full"
            )
        if base in OWNED_FLAGS and base != flag:
            raise ManifestError(field, f"{base} takes a plain value, not {written}")
        if flag not in OWNED_FLAGS:
            engine.append(arg)
            i += 1
            continue
        if flag in owned:
            raise ManifestError(field, f"{flag} is given twice")
        if eq:
            value, i = inline, i + 1
        elif i + 1 < len(args) and not args[i + 1].startswith("-"):
            value, i = args[i + 1], i + 2
        else:
            raise ManifestError(field, f"{flag} needs a value")
        if not value.strip():
            raise ManifestError(field, f"{flag} must not be empty")
        # vLLM takes several served names; torpor routes by one, so a stray bare token here
        # would silently become a second name.
        if i < len(args) and not args[i].startswith("-") and flag == "--served-model-name":
            raise ManifestError(item(path, i), f"{flag} takes exactly one name in torpor")
        owned[flag] = value
    if "--model" not in owned:
        raise ManifestError(
            path, "must include --model=<directory or file:// URI> (the model the runtime serves)"
        )
    return owned["--model"], owned.get("--served-model-name"), tuple(engine)


def as_vllm_reads(written: str) -> str:
    """A flag's name as vLLM's parser reads it: ``_`` -> ``-`` up to the first ``.``."""
    if not written.startswith("--"):
        return written
    name, dot, rest = written[2:].partition(".")
    return "--" + name.replace("_", "-") + dot + rest


def abbreviated(flag: str) -> str | None:
    """The platform or runtime flag that ``flag`` is a proper prefix of (argparse would take it
    for that flag, or refuse it as ambiguous); None for anything else."""
    if not flag.startswith("--") or len(flag) <= 2:
        return None
    for full in (*sorted(PLATFORM_FLAGS), *sorted(CONFIG_FLAGS), *OWNED_FLAGS):
        if full != flag and full.startswith(flag):
            return full
    return None


def _env(raw: list[Any], path: str) -> tuple[tuple[str, str], ...]:
    if len(raw) > MAX_ENV:
        raise ManifestError(path, f"at most {MAX_ENV} variables, got {len(raw)}")
    out: list[tuple[str, str]] = []
    seen: set[str] = set()
    for i, entry in enumerate(raw):
        at = item(path, i)
        e: Mapping[Any, Any] = expect_mapping(entry, at)
        name = get_str(e, "name", at, required=True)
        assert name is not None
        if not _ENV_NAME.fullmatch(name):
            raise ManifestError(child(at, "name"), f"{name!r} is not a valid variable name")
        if name in RESERVED_ENV:
            raise ManifestError(child(at, "name"), f"{name} is set by the platform")
        why = denied_env(name)
        if why is not None:
            never = forbidden_env(name) is not None
            raise ManifestError(
                child(at, "name"),
                f"{name} {why}; a manifest may not set it"
                + (f" (never allowed: {denied_list()})" if never else ""),
            )
        if name in seen:
            raise ManifestError(child(at, "name"), f"{name} is set twice")
        seen.add(name)
        if e.get("valueFrom") is not None:
            raise ManifestError(
                child(at, "valueFrom"),
                "torpor replicas take literal values only; use value",
            )
        value = e.get("value", "")
        if value is None:
            value = ""
        if not isinstance(value, str):
            raise ManifestError(
                child(at, "value"), f"must be a string, got {kind_of(value)} (quote it)"
            )
        out.append((name, value))
    return tuple(out)


def _port(raw: list[Any], path: str) -> int:
    if not raw:
        return DEFAULT_CONTAINER_PORT
    if len(raw) > 1:
        raise ManifestError(path, f"Knative allows one port per container, got {len(raw)}")
    at = item(path, 0)
    p = expect_mapping(raw[0], at)
    port = get_int(p, "containerPort", at, low=1, high=65535)
    if port is None:
        return DEFAULT_CONTAINER_PORT
    if port in RESERVED_PORTS:
        raise ManifestError(
            child(at, "containerPort"),
            f"{port} is reserved by Knative ({', '.join(map(str, sorted(RESERVED_PORTS)))})",
        )
    name = get_str(p, "name", at)
    if name not in (None, "", "http1", "h2c"):
        raise ManifestError(child(at, "name"), f"must be http1 or h2c, got {name!r}")
    return port
