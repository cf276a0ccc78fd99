"""Adapter files through the weight cache: a middleware in front of vLLM's LoRA loading route.

The autoscaler places adapters (``autoscaler.adapters``) and loads one on a replica with vLLM's
own ``POST /v1/load_lora_adapter`` (``{"lora_name": ..., "lora_path": <source>}``), naming the
adapter's source as the manifest does (``/models/<name>``, mapped to this machine's path by the
embedded platform). This middleware copies that source into the node-local weight cache
(``runtime.cache``: verified copy, LRU; ``runtime.sources.check_adapter``) and hands vLLM the
cached directory, exactly as ``--model`` is resolved at start-up. A source that is not an adapter
gets 400 in OpenAI's error shape; vLLM never sees it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

LOAD_PATH = "/v1/load_lora_adapter"
MAX_BODY = 64 * 1024

ASGIApp = Callable[[MutableMapping[str, Any], Any, Any], Awaitable[None]]


class AdapterCacheMiddleware:
    def __init__(self, app: ASGIApp, resolve: Callable[[str], Path]) -> None:
        self.app = app
        self._resolve = resolve

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("path") != LOAD_PATH or scope["method"] != "POST":
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


async def _error(send: Any, status: int, message: str) -> None:
    payload = json.dumps(
        {"error": {"message": message, "type": "BadRequestError", "param": "lora_path",
                   "code": status}}
    ).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(payload)).encode())]})
    await send({"type": "http.response.body", "body": payload})
