"""A manifest's ``env``: what it may set, and ``$(VAR)`` expansion exactly as Kubernetes does it.

**What a manifest may not set.** On the embedded platform a replica is a process on the
platform's own host, started with the platform's environment: a variable that steers the dynamic
loader, the Python interpreter, the search path or the platform itself is a way to run other code
in (or redirect) that process, not a setting of the model. So these are refused, wherever torpor
parses a manifest (the embedded control plane is its one caller; a Knative cluster isolates the
container and does its own validation):

- ``LD_*``, ``DYLD_*`` and glibc's other loader variables (``GCONV_PATH``, ``GLIBC_TUNABLES``,
  ``LOCPATH``, ``NLSPATH``, ``HOSTALIASES``, ``RESOLV_HOST_CONF``, ``MALLOC_*``): preloaded
  libraries, tunables and data files read at start (glibc drops the same set for setuid programs);
- ``PYTHON*``: ``PYTHONPATH``, ``PYTHONHOME``, ``PYTHONSTARTUP``, ``PYTHONINSPECT``... load code
  into the runtime before its own;
- ``PATH`` and ``BASH_ENV``: which programs run, and what a shell sources first;
- ``TORPOR_*``: the platform's own settings (``TORPOR_HOME``, the cache directory and budget, the
  model-size limit, drain timeout);
- ``PORT`` and ``K_*``: the address and identity the platform gives each replica (Knative itself
  refuses ``PORT``, ``K_SERVICE``, ``K_CONFIGURATION`` and ``K_REVISION``).

vLLM's own settings (``VLLM_*``), ``HF_*``, ``CUDA_*`` and any application variable pass.

**Expansion.** As the Kubernetes API documents ``EnvVar.value`` and ``Container.args``: a value's
``$(NAME)`` is replaced by an entry defined *before* it in the same container, or by a variable the
platform itself defines for the replica (Kubernetes' "service environment variables"; on the
embedded platform ``TORPOR_HOME``); ``args`` see the container's whole environment so built. A
reference that cannot be resolved stays as written, ``$$`` is one ``$`` (so ``$$(NAME)`` is the
literal ``$(NAME)``), and nothing else is special. The host environment the platform itself runs
in is never a source: a manifest cannot read ``$(TORPOR_CONTROL_TOKEN)`` or ``$(HOME)`` out of it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

_LOADER = "steers the dynamic loader or C library of the replica's process"
_PYTHON = "steers the Python interpreter of the runtime (code it loads before its own)"
# (prefix, why); a name is denied when it starts with one of these.
_DENIED_PREFIXES: tuple[tuple[str, str], ...] = (
    ("LD_", _LOADER),
    ("DYLD_", _LOADER),
    ("MALLOC_", _LOADER),
    ("PYTHON", _PYTHON),
    ("TORPOR_", "is one of the platform's own settings"),
    ("K_", "is the replica's identity, set by the platform"),
)
_DENIED_NAMES: dict[str, str] = {
    "PATH": "chooses which programs the replica runs",
    "BASH_ENV": "is a script every shell in the replica would run first",
    "PORT": "is the port the platform gives each replica",
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


def denied_env(name: str) -> str | None:
    """Why a manifest may not set ``name`` (None: it may). Names are case-sensitive, as the
    loader and the interpreter read them: ``ld_preload`` steers nothing."""
    if name in _DENIED_NAMES:
        return _DENIED_NAMES[name]
    return next((why for prefix, why in _DENIED_PREFIXES if name.startswith(prefix)), None)


def denied_list() -> str:
    """The deny list as an error message names it."""
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
