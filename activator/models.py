"""What the activator reads from, and answers about, OpenAI request bodies: pure functions.

A request at the root URL is routed by its body's ``model`` (``activator.routing``); a streaming
request held through a cold start gets keep-alive comments (``activator.keepalive``). Both look
into the body the activator already read once (bounded by ``max_body_bytes``) and forward it
unchanged. ``GET /v1/models`` is answered from the deployed specs in OpenAI's list shape, so
listing models wakes nothing.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterable, Mapping
from typing import Any

from activator.errors import BadRequest

OWNED_BY = "torpor"
# How much of a prompt decides its replica (activator.balancer's prefix affinity): 256 bytes of
# JSON, some 50-60 tokens of English. Requests that share this much go to the same replica,
# where vLLM's prefix cache (16-token blocks) likely holds it.
PREFIX_BYTES = 256
_PROMPT_FIELDS = (b'"messages"', b'"prompt"', b'"input"')


def _object(body: bytes) -> dict[str, Any] | None:
    try:
        parsed = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    return parsed if isinstance(parsed, dict) else None


def model_of(body: bytes) -> str:
    """The body's ``model``; a clear 400 when the body is not a JSON object naming one."""
    parsed = _object(body)
    if parsed is None:
        raise BadRequest(
            'a request at the root URL is routed by its body\'s "model": the body must be a '
            "JSON object"
        )
    model = parsed.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest(
            'a request at the root URL is routed by its body\'s "model": name one (a string); '
            "GET /v1/models lists them"
        )
    return model


def model_in(body: bytes) -> str | None:
    """The body's ``model`` if it is a JSON object naming one; None otherwise (no error)."""
    parsed = _object(body)
    model = parsed.get("model") if parsed is not None else None
    return model if isinstance(model, str) else None


def wants_stream(body: bytes) -> bool:
    """Whether the body asks for a token stream (``"stream": true``); anything else is not."""
    # A cheap look first: most bodies held long enough to ask are plain or small.
    if b'"stream"' not in body:
        return False
    parsed = _object(body)
    return parsed is not None and parsed.get("stream") is True


def model_list(
    names: Iterable[str], created: int, parents: Mapping[str, str] | None = None
) -> bytes:
    """OpenAI's ``GET /v1/models`` answer (the fields its clients parse, as vLLM sends them).

    A LoRA adapter carries ``parent``, its base model's name, as vLLM lists a loaded adapter."""
    parents = parents or {}
    data: list[dict[str, Any]] = []
    for name in names:
        entry: dict[str, Any] = {
            "id": name, "object": "model", "created": created, "owned_by": OWNED_BY, "root": name
        }
        if name in parents:
            entry["parent"] = parents[name]
        data.append(entry)
    return json.dumps({"object": "list", "data": data}).encode()


def prefix_key(body: bytes) -> int | None:
    """A key for the start of the body's prompt (``messages``, ``prompt`` or ``input``), or None.

    No JSON parse, on the request path: the ``PREFIX_BYTES`` after the field's name, as the
    client serialised them. The same prompt start gives the same key from any activator; a short
    prompt's window also covers the fields after it, which only costs affinity where there is
    little prefix to reuse.
    """
    for field in _PROMPT_FIELDS:
        at = body.find(field)
        if at >= 0:
            return zlib.crc32(body[at : at + len(field) + PREFIX_BYTES])
    return None
