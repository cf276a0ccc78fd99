"""A manifest's ``env``: what it may set, and ``$(VAR)`` expansion exactly as Kubernetes does it.

**What a manifest may set: an allow-list (issue 23).** Every variable a replica receives is read
by something (the loader, Python, vLLM and each library under it), and a deny-list of the
dangerous ones always misses one: ``SAGEMAKER_MODEL_PATH=<dir>`` made vLLM's server execute
``<dir>/model.py``, ``VLLM_SERVER_DEV_MODE=1`` opened its dev endpoints, ``VLLM_PLUGINS`` loads
code. So a manifest may set only:

- the documented set ``ALLOWED_ENV``: model and performance settings of vLLM's CPU and GPU paths
  (``VLLM_CPU_KVCACHE_SPACE``, ``VLLM_CPU_OMP_THREADS_BIND``, ``VLLM_LOGGING_LEVEL``...), Hugging
  Face's offline switches, thread counts (``OMP_NUM_THREADS``...), ``CUDA_VISIBLE_DEVICES``,
  ``TZ``/``LANG``/``LC_ALL``;
- the application's own variables, spelled ``APP_*``;
- what the operator adds for this platform: ``$TORPOR_REPLICA_ENV_ALLOW`` in the control
  plane's environment, a comma-separated list of names and ``PREFIX*`` patterns.

Some names no operator extension opens (``FORBIDDEN``, with why): the loader's and C library's
(``LD_*``, ``DYLD_*``, ``MALLOC_*``, ``GCONV_PATH``...), the interpreter's (``PYTHON*``),
``PATH``, ``BASH_ENV``, the platform's own (``TORPOR_*``, ``PORT``, ``K_*``), SageMaker's
(``SAGEMAKER_*``) and vLLM's code-loading and operator switches (``VLLM_SERVER_DEV_MODE``,
``VLLM_PLUGINS``, ``VLLM_ALLOW_RUNTIME_LORA_UPDATING``...). A refused variable names its field
(``...env[i].name``) and nothing of the manifest is applied.

**Expansion.** As the Kubernetes API documents ``EnvVar.value`` and ``Container.args``: a value's
``$(NAME)`` is replaced by an entry defined *before* it in the same container, or by a variable the
platform itself defines for the replica (Kubernetes' "service environment variables"; on the
embedded platform ``TORPOR_HOME``); ``args`` see the container's whole environment so built. A
reference that cannot be resolved stays as written, ``$$`` is one ``$`` (so ``$$(NAME)`` is the
literal ``$(NAME)``), and nothing else is special. The host environment the platform itself runs
in is never a source: a manifest cannot read ``$(TORPOR_CONTROL_TOKEN)`` or ``$(HOME)`` out of it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

# The operator's extension of ``ALLOWED_ENV``, read from the control plane's own environment.
ENV_OPERATOR_ALLOW = "TORPOR_REPLICA_ENV_ALLOW"
APP_PREFIX = "APP_"

ALLOWED_ENV = frozenset(
    {
        "VLLM_CPU_KVCACHE_SPACE",
        "VLLM_CPU_OMP_THREADS_BIND",
        "VLLM_CPU_NUM_OF_RESERVED_CPU",
        "VLLM_CPU_MOE_PREPACK",
        "VLLM_CPU_ATTN_SPLIT_KV",
        "VLLM_LOGGING_LEVEL",
        "VLLM_LOG_STATS_INTERVAL",
        "VLLM_ALLOW_LONG_MAX_MODEL_LEN",
        "VLLM_ENGINE_ITERATION_TIMEOUT_S",
        "VLLM_HTTP_TIMEOUT_KEEP_ALIVE",
        "VLLM_KEEP_ALIVE_ON_ENGINE_DEATH",
        "VLLM_MAX_AUDIO_CLIP_FILESIZE_MB",
        "VLLM_ATTENTION_BACKEND",
        "HF_HUB_OFFLINE",
        "HF_HUB_DISABLE_TELEMETRY",
        "TRANSFORMERS_OFFLINE",
        "HF_DATASETS_OFFLINE",
        "TOKENIZERS_PARALLELISM",
        "OMP_NUM_THREADS",
        "MKL_NUM_THREADS",
        "OPENBLAS_NUM_THREADS",
        "CUDA_VISIBLE_DEVICES",
        "CUDA_DEVICE_ORDER",
        "TZ",
        "LANG",
        "LC_ALL",
    }
)

_LOADER = "steers the dynamic loader or C library of the replica's process"
_PYTHON = "steers the Python interpreter of the runtime (code it loads before its own)"
_VLLM_CODE = "makes vLLM load code or open operator endpoints"
# (prefix, why); a name is forbidden, whatever the operator allows, when it starts with one.
_DENIED_PREFIXES: tuple[tuple[str, str], ...] = (
    ("LD_", _LOADER),
    ("DYLD_", _LOADER),
    ("MALLOC_", _LOADER),
    ("PYTHON", _PYTHON),
    ("TORPOR_", "is one of the platform's own settings"),
    ("K_", "is the replica's identity, set by the platform"),
    ("SAGEMAKER_", "is read by vLLM's SageMaker entry points (SAGEMAKER_MODEL_PATH runs code)"),
)
_DENIED_NAMES: dict[str, str] = {
    "PATH": "chooses which programs the replica runs",
    "BASH_ENV": "is a script every shell in the replica would run first",
    "PORT": "is the port the platform gives each replica",
    "VLLM_SERVER_DEV_MODE": _VLLM_CODE,
    "VLLM_PLUGINS": _VLLM_CODE,
    "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "is the platform's (adapters are loaded by it alone)",
    "VLLM_RPC_BASE_PATH": "moves vLLM's internal sockets",
    "VLLM_CONFIG_ROOT": "points vLLM at configuration files to read",
    "VLLM_USE_MODELSCOPE": "makes vLLM fetch models from elsewhere",
    **{
        name: _LOADER
        for name in (
            "GCONV_PATH",
            "GLIBC_TUNABLES",
            "LOCPATH",
            "NLSPATH",
            "HOSTALIASES",
            "RESOLV_HOST_CONF",
        )
    },
}
DENIED_ENV_PREFIXES = tuple(p for p, _ in _DENIED_PREFIXES)
DENIED_ENV_NAMES = frozenset(_DENIED_NAMES)


def forbidden_env(name: str) -> str | None:
    """Why no manifest may set ``name``, whatever the operator allows (None: not forbidden)."""
    if name in _DENIED_NAMES:
        return _DENIED_NAMES[name]
    return next((why for prefix, why in _DENIED_PREFIXES if name.startswith(prefix)), None)


def operator_allowed(env: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """The operator's extension: names and ``PREFIX*`` from ``$TORPOR_REPLICA_ENV_ALLOW``."""
    text = (os.environ if env is None else env).get(ENV_OPERATOR_ALLOW, "")
    return tuple(p.strip() for p in text.split(",") if p.strip())


def _matches(name: str, pattern: str) -> bool:
    return name.startswith(pattern[:-1]) if pattern.endswith("*") else name == pattern


def denied_env(name: str, extension: Iterable[str] | None = None) -> str | None:
    """Why a manifest may not set ``name`` (None: it may). Names are case-sensitive, as the
    programs that read them are: ``app_x`` is not ``APP_X``."""
    why = forbidden_env(name)
    if why is not None:
        return why
    if name in ALLOWED_ENV or name.startswith(APP_PREFIX):
        return None
    extra = operator_allowed() if extension is None else tuple(extension)
    if any(_matches(name, p) for p in extra):
        return None
    return (
        "is not in the replica environment allow-list (documented set, APP_*, and "
        f"${ENV_OPERATOR_ALLOW} of this platform)"
    )


def denied_list() -> str:
    """The names no manifest may set, as an error message names them."""
    return ", ".join([p + "*" for p in DENIED_ENV_PREFIXES] + sorted(DENIED_ENV_NAMES))


_OPERATOR = "$"
_OPEN = "("
_CLOSE = ")"


def expand(text: str, *lookups: Mapping[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion (``third_party/forked/golang/expansion``), byte for byte.

    The first of ``lookups`` that holds a name gives its value; an unresolved ``$(NAME)`` stays as
    written, ``$$`` reads as ``$``, ``$(`` with no ``)`` and a ``$`` before anything else are kept.
    """
    out: list[str] = []
    checkpoint = 0
    cursor = 0
    while cursor < len(text):
        if text[cursor] == _OPERATOR and cursor + 1 < len(text):
            out.append(text[checkpoint:cursor])
            read, is_var, advance = _read_name(text, cursor + 1)
            if is_var:
                out.append(_lookup(read, lookups))
            else:
                out.append(read)
            cursor += advance
            checkpoint = cursor + 1
        cursor += 1
    out.append(text[checkpoint:])
    return "".join(out)


def _read_name(text: str, start: int) -> tuple[str, bool, int]:
    """What follows a ``$`` at ``start - 1``: (text, is a variable name, characters consumed)."""
    first = text[start]
    if first == _OPERATOR:
        return _OPERATOR, False, 1  # an escaped $
    if first == _OPEN:
        end = text.find(_CLOSE, start + 1)
        if end >= 0:
            return text[start + 1 : end], True, end - start + 1
        return _OPERATOR + _OPEN, False, 1  # incomplete reference: kept
    return _OPERATOR + first, False, 1


def _lookup(name: str, lookups: tuple[Mapping[str, str], ...]) -> str:
    for env in lookups:
        if name in env:
            return env[name]
    return f"{_OPERATOR}{_OPEN}{name}{_CLOSE}"


def container_env(
    declared: Iterable[tuple[str, str]], platform: Mapping[str, str]
) -> dict[str, str]:
    """The replica's own environment, as the kubelet builds a container's.

    Each declared value expands from the entries before it, then from ``platform`` (the variables
    the platform defines for every replica); the platform's names follow, unless declared (the
    deny list keeps a manifest from declaring them). This mapping, not the host's environment, is
    what ``args`` expand from.
    """
    env: dict[str, str] = {}
    for name, value in declared:
        env[name] = expand(value, env, platform)
    for name, value in platform.items():
        env.setdefault(name, value)
    return env
