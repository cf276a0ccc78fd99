"""Plain-JSON encoding of torpor's frozen dataclasses, for the bus and the state directory.

Dataclasses become objects, tuples become lists; decoding walks the dataclass's type hints, so a
field added with a default still reads old data.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import types
import typing
from typing import Any, TypeVar, get_args, get_origin, get_type_hints

T = TypeVar("T")


def to_jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple | list):
        return [to_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    return value


def dumps(value: Any) -> str:
    return json.dumps(to_jsonable(value), separators=(",", ":"), sort_keys=True)


def from_jsonable(cls: type[T], data: Any) -> T:
    return typing.cast(T, _decode(cls, data))


def loads(cls: type[T], text: str | bytes) -> T:
    return from_jsonable(cls, json.loads(text))


@functools.cache
def _type_hints(tp: type) -> dict[str, Any]:
    # Resolving string annotations costs ~100 us a class; the bus decodes on every event.
    return get_type_hints(tp)


def _decode(tp: Any, data: Any) -> Any:
    origin = get_origin(tp)
    if origin is typing.Union or origin is types.UnionType:
        if data is None:
            return None
        options = [a for a in get_args(tp) if a is not type(None)]
        return _decode(options[0], data)
    if origin is tuple:
        args = get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_decode(args[0], v) for v in data)
        return tuple(_decode(a, v) for a, v in zip(args, data, strict=True))
    if origin is dict:
        key_t, val_t = get_args(tp)
        return {_decode(key_t, k): _decode(val_t, v) for k, v in data.items()}
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        hints = _type_hints(tp)
        kwargs = {
            f.name: _decode(hints[f.name], data[f.name])
            for f in dataclasses.fields(tp)
            if f.name in data
        }
        return tp(**kwargs)
    if tp is float and isinstance(data, int):
        return float(data)
    return data
