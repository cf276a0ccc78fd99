"""Loading and unloading LoRA adapters on a replica: vLLM's own runtime LoRA endpoints.

The replica runs with ``VLLM_ALLOW_RUNTIME_LORA_UPDATING`` (the runtime sets it whenever
``--enable-lora`` is among its arguments). ``lora_path`` is the adapter's source as the manifest
names it, mapped by ``source_path`` (the embedded platform's ``/models`` -> ``<home>/models``;
unchanged on Kubernetes, where the pod mounts ``/models``); the runtime copies it through its
weight cache before vLLM reads it (``runtime.adapter_load``). On Kubernetes the autoscaler calls
the pod's IP directly, as it scrapes ``/metrics`` there.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import httpx

LOAD_TIMEOUT_S = 60.0  # copying a large adapter into the cache takes a while


class LoraError(RuntimeError):
    pass


class LoraClient(Protocol):
    async def load(self, url: str, name: str, source: str) -> None: ...

    async def unload(self, url: str, name: str) -> None: ...


class HttpLoraClient:
    def __init__(
        self,
        source_path: Callable[[str], str] = str,
        *,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self._source_path = source_path
        self._client = client or httpx.AsyncClient(timeout=LOAD_TIMEOUT_S)
        self._own = client is None

    async def load(self, url: str, name: str, source: str) -> None:
        body = {"lora_name": name, "lora_path": self._source_path(source)}
        response = await self._client.post(f"{url}/v1/load_lora_adapter", json=body)
        # vLLM answers 400 "already been loaded" for an adapter it holds: that is loaded.
        if response.status_code != 200 and "already been loaded" not in response.text:
            raise LoraError(f"load {name} on {url}: {response.status_code} {response.text[:300]}")

    async def unload(self, url: str, name: str) -> None:
        response = await self._client.post(
            f"{url}/v1/unload_lora_adapter", json={"lora_name": name}
        )
        if response.status_code not in (200, 404) and "not found" not in response.text.lower():
            raise LoraError(
                f"unload {name} on {url}: {response.status_code} {response.text[:300]}"
            )

    async def aclose(self) -> None:
        if self._own:
            await self._client.aclose()
