"""Loading and unloading LoRA adapters on a replica: vLLM's own runtime LoRA endpoints.

The replica runs with ``VLLM_ALLOW_RUNTIME_LORA_UPDATING`` (the runtime sets it whenever
``--enable-lora`` is among its arguments). ``lora_path`` is the adapter's source as the manifest
names it, mapped by ``source_path`` (the embedded platform's ``/models`` -> ``<home>/models``;
unchanged on Kubernetes, where the pod mounts ``/models``); the runtime copies it through its
weight cache before vLLM reads it (``runtime.adapter_load``). On Kubernetes the autoscaler calls
the pod's IP directly, as it scrapes ``/metrics`` there.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import httpx

from torpor.credentials import PLATFORM_HEADER

LOAD_TIMEOUT_S = 60.0  # copying a large adapter into the cache takes a while


class LoraError(RuntimeError):
    pass


class LoraClient(Protocol):
    async def load(self, url: str, name: str, source: str) -> None: ...

    async def unload(self, url: str, name: str) -> None: ...

    async def loaded(self, url: str) -> frozenset[str]:
        """The adapters the replica holds now (raises when it cannot tell)."""
        ...


def adapters_listed(models: Any) -> frozenset[str]:
    """The LoRA adapters in vLLM's ``GET /v1/models`` answer: the cards with a ``parent`` (the
    base model's name); the base's own card has none."""
    data = models.get("data") if isinstance(models, dict) else None
    if not isinstance(data, list):
        raise LoraError(f"not a model list: {str(models)[:200]}")
    return frozenset(
        str(card["id"])
        for card in data
        if isinstance(card, dict) and card.get("parent") and card.get("id")
    )


class HttpLoraClient:
    def __init__(
        self,
        source_path: Callable[[str], str] = str,
        *,
        client: httpx.AsyncClient | None = None,
        credential: Callable[[str], str | None] | None = None,
    ) -> None:
        """``credential``: the replica's platform credential by its URL (``runtime.gate``:
        adapter loads and unloads are platform routes)."""
        self._source_path = source_path
        self._client = client or httpx.AsyncClient(timeout=LOAD_TIMEOUT_S)
        self._own = client is None
        self._credential = credential

    def _headers(self, url: str) -> dict[str, str]:
        token = self._credential(url) if self._credential is not None else None
        return {PLATFORM_HEADER: token} if token else {}

    async def load(self, url: str, name: str, source: str) -> None:
        body = {"lora_name": name, "lora_path": self._source_path(source)}
        response = await self._client.post(
            f"{url}/v1/load_lora_adapter", json=body, headers=self._headers(url)
        )
        # vLLM answers 400 "already been loaded" for an adapter it holds: that is loaded.
        if response.status_code != 200 and "already been loaded" not in response.text:
            # Only the replica's own words: the loop publishes this to the requests held for the
            # adapter (``RevisionEndpoints.adapter_failures``) and logs it with the replica.
            raise LoraError(f"{response.status_code} {_detail(response)}")

    async def unload(self, url: str, name: str) -> None:
        response = await self._client.post(
            f"{url}/v1/unload_lora_adapter", json={"lora_name": name}, headers=self._headers(url)
        )
        if response.status_code not in (200, 404) and "not found" not in response.text.lower():
            raise LoraError(
                f"unload {name} on {url}: {response.status_code} {response.text[:300]}"
            )

    async def loaded(self, url: str) -> frozenset[str]:
        response = await self._client.get(
            f"{url}/v1/models", timeout=10.0, headers=self._headers(url)
        )
        if response.status_code != 200:
            raise LoraError(f"models on {url}: {response.status_code} {response.text[:300]}")
        return adapters_listed(response.json())

    async def aclose(self) -> None:
        if self._own:
            await self._client.aclose()


# An absolute path in a replica's words (the weight cache's or the models volume's): what a
# caller of the adapter gets must not map the machine (issue 23).
_PATH = re.compile(r"(?<![\w.])/(?:[^\s'\"/]+/)*[^\s'\",;:)]*")


def without_paths(text: str) -> str:
    return _PATH.sub("<path>", text)


def _detail(response: httpx.Response) -> str:
    """vLLM's error message (OpenAI's shape) when the body is one, else the body's start; any
    absolute path in it replaced by ``<path>``."""
    try:
        error = response.json().get("error")
    except (ValueError, AttributeError):
        error = None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return without_paths(str(error["message"]))[:300]
    return without_paths(response.text)[:300]


# One credential for every replica of a cluster (Knative: a Secret mounted into the runtime pods
# at ``runtime.contract.DEFAULT_PLATFORM_TOKEN_PATH`` and into the autoscaler), by value or file.
ENV_REPLICA_TOKEN = "TORPOR_REPLICA_TOKEN"
ENV_REPLICA_TOKEN_FILE = "TORPOR_REPLICA_TOKEN_FILE"


def replica_token(env: Mapping[str, str]) -> str | None:
    value = env.get(ENV_REPLICA_TOKEN, "").strip()
    path = env.get(ENV_REPLICA_TOKEN_FILE, "").strip()
    if not value and path:
        with open(path, encoding="utf-8") as f:
            value = f.read(4096).strip()
    return value or None
