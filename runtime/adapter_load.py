"""Adapter files through the weight cache: a middleware in front of vLLM's LoRA loading route.

The autoscaler places adapters (``autoscaler.adapters``) and loads one on a replica with vLLM's
own ``POST /v1/load_lora_adapter`` (``{"lora_name": ..., "lora_path": <source>}``), naming the
adapter's source as the manifest does (``/models/<name>``, mapped to this machine's path by the
embedded platform). This middleware copies that source into the node-local weight cache
(``runtime.cache``: verified copy, LRU; ``runtime.sources.check_adapter``) and hands vLLM the
cached directory, exactly as ``--model`` is resolved at start-up. A source that is not an adapter
gets 400 in OpenAI's error shape; vLLM never sees it.

Adapters only as declared (issue 23): with the revision's declared adapters given
(``TORPOR_LORA_ADAPTERS``, set by the platform), a load naming another adapter, or a declared
name with another source, is refused 403 ``adapter_not_declared``. vLLM's SageMaker-style
``POST /adapters`` and ``DELETE /adapters/{name}`` (which would load from any path, past the
cache) are refused to everyone, the platform included: it loads through the route above only.
Only the platform reaches either route at all (``runtime.gate``).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from pathlib import Path
from typing import Any

LOAD_PATH = "/v1/load_lora_adapter"
SAGEMAKER_ADAPTERS = "/adapters"
MAX_BODY = 64 * 1024

ASGIApp = Callable[[MutableMapping[str, Any], Any, Any], Awaitable[None]]


class AdapterCacheMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        resolve: Callable[[str], Path],
        declared: Mapping[str, str] | None = None,
    ) -> None:
        self.app = app
        self._resolve = resolve
        self._declared = declared

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        path = str(scope.get("path", ""))
        if scope["type"] == "http" and (
            path.rstrip("/") == SAGEMAKER_ADAPTERS or path.startswith(SAGEMAKER_ADAPTERS + "/")
        ):
            await _error(send, 403, "adapters are loaded by the platform through "
                         f"{LOAD_PATH} only", code="adapter_not_declared")
            return
        if scope["type"] != "http" or path != LOAD_PATH or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        body = b""
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client left
            body += message.get("body", b"")
            if len(body) > MAX_BODY:
                await _error(send, 413, "request body too large")
                return
            if not message.get("more_body"):
                break
        try:
            doc = json.loads(body)
        except ValueError:
            doc = None
        if self._declared is not None:
            name = doc.get("lora_name") if isinstance(doc, dict) else None
            source = doc.get("lora_path") if isinstance(doc, dict) else None
            if not isinstance(name, str) or self._declared.get(name) != source:
                await _error(send, 403, "only the revision's declared adapters, from their "
                             "declared sources, are loaded", code="adapter_not_declared")
                return
        if isinstance(doc, dict) and isinstance(doc.get("lora_path"), str):
            try:
                cached = await asyncio.to_thread(self._resolve, doc["lora_path"])
            except (OSError, ValueError, RuntimeError) as e:
                await _error(send, 400, f"cannot load adapter {doc.get('lora_name')!r}: {e}")
                return
            doc["lora_path"] = str(cached)
            body = json.dumps(doc).encode()
        sent = False

        async def replay() -> MutableMapping[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return dict(await receive())

        headers = [(k, v) for k, v in scope["headers"] if k.lower() != b"content-length"]
        headers.append((b"content-length", str(len(body)).encode()))
        await self.app({**scope, "headers": headers}, replay, send)


async def _error(send: Any, status: int, message: str, code: str | None = None) -> None:
    kind = "BadRequestError" if status == 400 else "permission_error"
    payload = json.dumps(
        {"error": {"message": message, "type": kind, "param": "lora_path",
                   "code": status if code is None else code}}
    ).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(payload)).encode())]})
    await send({"type": "http.response.body", "body": payload})


def declared_adapters(env: Mapping[str, str]) -> dict[str, str] | None:
    """``$TORPOR_LORA_ADAPTERS`` (name -> source); None when the platform declared none."""
    from runtime.contract import ENV_LORA_ADAPTERS, ContractError

    text = env.get(ENV_LORA_ADAPTERS)
    if not text:
        return None
    try:
        doc = json.loads(text)
    except ValueError:
        doc = None
    if not isinstance(doc, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in doc.items()
    ):
        raise ContractError(f"${ENV_LORA_ADAPTERS} must be a JSON object of name -> source")
    return dict(doc)
