"""Reading untrusted manifest text into plain Python values, with bounds.

A manifest arrives over the control API from anyone holding the token, so the reader bounds
everything a hostile file can blow up: size, encoding, document count, nesting, node count, and
aliases (the "billion laughs" expansion). Duplicate keys are an error rather than last-one-wins,
as ``kubectl`` treats them.
"""

from __future__ import annotations

from typing import Any

import yaml

from torpor.manifest.errors import DOCUMENT, ManifestError

MAX_MANIFEST_BYTES = 1 << 20
MAX_DEPTH = 64
MAX_NODES = 10_000  # a real Service is a few hundred nodes; this bounds parse time

try:  # libyaml's parser when built with it; the pure-Python one otherwise
    from yaml import CSafeLoader as _BaseLoader
except ImportError:  # pragma: no cover - depends on how PyYAML was built
    from yaml import SafeLoader as _BaseLoader  # type: ignore[assignment]


class _StrictLoader(_BaseLoader):
    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:
                continue  # unhashable: the base class raises its own error below
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    f"found duplicate key {key!r}",
                    key_node.start_mark,
                )
        return super().construct_mapping(node, deep=deep)


def decode(text: str | bytes) -> str:
    """The manifest as text: at most 1 MiB of UTF-8 (a leading byte-order mark is dropped)."""
    if isinstance(text, bytes | bytearray | memoryview):
        raw = bytes(text)
        if len(raw) > MAX_MANIFEST_BYTES:
            raise ManifestError(DOCUMENT, f"larger than {MAX_MANIFEST_BYTES} bytes ({len(raw)})")
        try:
            decoded = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ManifestError(
                DOCUMENT, f"not valid UTF-8: byte 0x{raw[e.start]:02x} at offset {e.start}"
            ) from None
    else:
        # Checked before encoding so a huge string is not copied just to be refused.
        if len(text) > MAX_MANIFEST_BYTES:
            raise ManifestError(DOCUMENT, f"larger than {MAX_MANIFEST_BYTES} bytes")
        try:
            size = len(text.encode("utf-8"))
        except UnicodeEncodeError as e:
            raise ManifestError(
                DOCUMENT, f"not valid UTF-8: unpaired surrogate at character {e.start}"
            ) from None
        if size > MAX_MANIFEST_BYTES:
            raise ManifestError(DOCUMENT, f"larger than {MAX_MANIFEST_BYTES} bytes ({size})")
        decoded = text
    return decoded.removeprefix("\ufeff")


def _where(mark: Any) -> str:
    if mark is None:
        return ""
    return f" at line {mark.line + 1}, column {mark.column + 1}"


def _check_events(text: str) -> None:
    """One pass over the parse events, refusing what construction would make dangerous."""
    documents = depth = nodes = 0
    for event in yaml.parse(text, Loader=_BaseLoader):
        if isinstance(event, yaml.AliasEvent):
            where = _where(event.start_mark)
            raise ManifestError(DOCUMENT, f"YAML aliases (*{event.anchor}) are not allowed{where}")
        if isinstance(event, yaml.DocumentStartEvent):
            documents += 1
            if documents > 1:
                raise ManifestError(
                    DOCUMENT,
                    f"expected exactly one YAML document, found a second{_where(event.start_mark)}",
                )
        elif isinstance(event, yaml.MappingStartEvent | yaml.SequenceStartEvent):
            depth += 1
            if depth > MAX_DEPTH:
                raise ManifestError(
                    DOCUMENT, f"nested deeper than {MAX_DEPTH} levels{_where(event.start_mark)}"
                )
        elif isinstance(event, yaml.MappingEndEvent | yaml.SequenceEndEvent):
            depth -= 1
        if isinstance(event, yaml.NodeEvent):
            nodes += 1
            if nodes > MAX_NODES:
                raise ManifestError(DOCUMENT, f"more than {MAX_NODES} YAML nodes")
    if documents == 0:
        raise ManifestError(DOCUMENT, "empty: expected one YAML document")


def load_document(text: str | bytes) -> Any:
    """The single YAML document in ``text`` as plain Python values (dicts, lists, scalars)."""
    decoded = decode(text)
    try:
        _check_events(decoded)
        loader = _StrictLoader(decoded)
        try:
            return loader.get_single_data()
        finally:
            loader.dispose()
    except yaml.reader.ReaderError as e:
        char = f"#x{e.character:04x}" if isinstance(e.character, int) else repr(e.character)
        raise ManifestError(
            DOCUMENT, f"invalid YAML: {e.reason} {char} at offset {e.position}"
        ) from None
    except yaml.MarkedYAMLError as e:
        problem = e.problem or e.context or "invalid YAML"
        raise ManifestError(DOCUMENT, f"invalid YAML: {problem}{_where(e.problem_mark)}") from None
    except yaml.YAMLError as e:
        raise ManifestError(DOCUMENT, f"invalid YAML: {e}") from None
    except (ValueError, OverflowError, RecursionError) as e:
        if isinstance(e, ManifestError):
            raise
        # PyYAML's constructors raise these for values like an impossible date or an integer
        # longer than Python converts.
        raise ManifestError(DOCUMENT, f"invalid YAML value: {e}") from None
