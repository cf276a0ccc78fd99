"""Typed reads from the raw YAML tree, each naming its field path when the type is wrong."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from torpor.manifest.errors import ManifestError

_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def child(path: str, key: str) -> str:
    """``path.key``, or ``path["key"]`` when the key is not a plain identifier."""
    if _PLAIN_KEY.fullmatch(key):
        return f"{path}.{key}" if path else key
    return f'{path}["{key}"]'


def item(path: str, index: int) -> str:
    return f"{path}[{index}]"


def kind_of(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return f"a YAML {type(value).__name__}"


def expect_mapping(value: Any, field: str) -> Mapping[Any, Any]:
    if not isinstance(value, Mapping):
        raise ManifestError(field, f"must be a mapping, got {kind_of(value)}")
    return value


def expect_list(value: Any, field: str) -> list[Any]:
    if not isinstance(value, list):
        raise ManifestError(field, f"must be a list, got {kind_of(value)}")
    return value


def expect_str(value: Any, field: str) -> str:
    if not isinstance(value, str):
        hint = " (quote it)" if isinstance(value, bool | int | float) else ""
        raise ManifestError(field, f"must be a string, got {kind_of(value)}{hint}")
    return value


def get_mapping(
    m: Mapping[Any, Any], key: str, path: str, *, required: bool = False
) -> Mapping[Any, Any]:
    field = child(path, key)
    value = m.get(key)
    if value is None:
        if required:
            raise ManifestError(field, "is required")
        return {}
    return expect_mapping(value, field)


def get_list(m: Mapping[Any, Any], key: str, path: str, *, required: bool = False) -> list[Any]:
    field = child(path, key)
    value = m.get(key)
    if value is None:
        if required:
            raise ManifestError(field, "is required")
        return []
    return expect_list(value, field)


def get_str(m: Mapping[Any, Any], key: str, path: str, *, required: bool = False) -> str | None:
    field = child(path, key)
    value = m.get(key)
    if value is None:
        if required:
            raise ManifestError(field, "is required")
        return None
    text = expect_str(value, field)
    if required and not text:
        raise ManifestError(field, "must not be empty")
    return text


def get_int(m: Mapping[Any, Any], key: str, path: str, *, low: int, high: int) -> int | None:
    field = child(path, key)
    value = m.get(key)
    if value is None:
        return None
    # bool is an int in Python; YAML's `true` is not a number in Kubernetes.
    if isinstance(value, bool) or not isinstance(value, int):
        shown = f" {value!r}" if isinstance(value, float | str) and len(str(value)) < 40 else ""
        raise ManifestError(field, f"must be a whole number, got {kind_of(value)}{shown}")
    if value < low or value > high:
        raise ManifestError(field, f"must be between {low} and {high}, got {value}")
    return value


def get_bool(m: Mapping[Any, Any], key: str, path: str) -> bool | None:
    field = child(path, key)
    value = m.get(key)
    if value is None:
        return None
    if not isinstance(value, bool):
        raise ManifestError(field, f"must be true or false, got {kind_of(value)}")
    return value


def string_map(value: Any, field: str) -> dict[str, str]:
    """Kubernetes labels/annotations: string keys to string values."""
    if value is None:
        return {}
    m = expect_mapping(value, field)
    out: dict[str, str] = {}
    for k, v in m.items():
        if not isinstance(k, str):
            raise ManifestError(field, f"keys must be strings, got {kind_of(k)}: {k!r}")
        out[k] = expect_str(v, f'{field}["{k}"]')
    return out
