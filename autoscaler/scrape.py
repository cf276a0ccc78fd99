"""Reading a replica's load from vLLM's Prometheus ``/metrics``.

A replica that does not answer, or answers something unreadable, is observed as *unknown*
(``None``), never as idle: the decision holds rather than scaling a busy replica away.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import httpx
from prometheus_client.parser import text_string_to_metric_families

from autoscaler.decide import ReplicaLoad
from torpor.credentials import PLATFORM_HEADER

# vLLM's gauge names (colons are legal in Prometheus names and the parser keeps them).
RUNNING = "vllm:num_requests_running"
WAITING = "vllm:num_requests_waiting"
KV_CACHE = "vllm:kv_cache_usage_perc"
# A counter: requests the replica has finished (any reason). One that has finished any has served,
# and its death is not a crash loop's (autoscaler.crashloop).
COMPLETED = "vllm:request_success_total"
# Older vLLM releases named the KV gauge after the GPU even on CPU.
KV_CACHE_OLD = "vllm:gpu_cache_usage_perc"


class Scraper(Protocol):
    async def scrape(self, replica_id: str, url: str) -> ReplicaLoad | None:
        """The replica's load, or ``None`` when it could not be read."""
        ...


def parse_metrics(replica_id: str, text: str) -> ReplicaLoad | None:
    """Sum each gauge over its label sets (one per model/engine); ``None`` if none is present."""
    sums: dict[str, float] = {}
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name in (RUNNING, WAITING, KV_CACHE, KV_CACHE_OLD, COMPLETED):
                    sums[sample.name] = sums.get(sample.name, 0.0) + float(sample.value)
    except (ValueError, TypeError):
        return None
    if RUNNING not in sums or WAITING not in sums:
        return None
    kv = sums.get(KV_CACHE, sums.get(KV_CACHE_OLD))
    return ReplicaLoad(
        replica_id,
        running=sums[RUNNING],
        waiting=sums[WAITING],
        kv_cache_usage=kv,
        completed=sums.get(COMPLETED),
    )


class HttpScraper:
    """Fetches ``<url>/metrics`` with a short timeout over one shared connection pool.

    ``/metrics`` is a platform route of the replica (``runtime.gate``): ``credential`` gives the
    replica's platform credential by its URL, sent in ``X-Torpor-Platform-Token``."""

    def __init__(
        self,
        *,
        timeout_s: float = 1.0,
        client: httpx.AsyncClient | None = None,
        credential: Callable[[str], str | None] | None = None,
    ) -> None:
        self._client = client or httpx.AsyncClient(timeout=timeout_s)
        self._owns_client = client is None
        self._credential = credential

    async def scrape(self, replica_id: str, url: str) -> ReplicaLoad | None:
        token = self._credential(url) if self._credential is not None else None
        headers = {PLATFORM_HEADER: token} if token else {}
        try:
            response = await self._client.get(url.rstrip("/") + "/metrics", headers=headers)
        except httpx.HTTPError:
            return None
        if response.status_code != 200:
            return None
        return parse_metrics(replica_id, response.text)

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()
