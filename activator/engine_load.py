"""vLLM's own load signals for the balancer: each replica's ``/metrics``, scraped while it matters.

``activator.balancer`` picks among a revision's replicas on ``vllm:num_requests_waiting`` and
``vllm:kv_cache_usage_perc`` when they are fresh. This activator scrapes them itself, every
``interval_s`` (``--engine-load-interval``, e.g. 1 s; off by default, since
``benchmarks/results/routing.md`` showed no gain on the 2-core machine), but only for
revisions with more than one serving replica and requests in flight or waiting here: with one
replica there is nothing to choose, and an idle revision needs no fresh load. (The autoscaler
scrapes the same endpoint each tick; publishing its numbers with the endpoints would turn every
tick into an endpoints event to every activator, so the activators read for themselves what
they use, at one small GET per replica per second.)

A scrape that fails or times out leaves the last values to age out (``MAX_LOAD_AGE_S``), after
which the balancer falls back to in-flight counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable

from activator.balancer import Backend
from activator.http.upstream import UpstreamPool
from activator.queue import RevisionQueue

log = logging.getLogger("torpor.activator")

WAITING = b"vllm:num_requests_waiting"
KV_CACHE = b"vllm:kv_cache_usage_perc"
KV_CACHE_OLD = b"vllm:gpu_cache_usage_perc"  # before vLLM 0.10
SCRAPE_TIMEOUT_S = 0.5
MAX_METRICS_BYTES = 4 * 1024 * 1024


def parse_load(text: bytes) -> tuple[int, float] | None:
    """(waiting, KV-cache usage) from vLLM's Prometheus text; None if neither is there.

    Summed over label sets for waiting (one per engine), the highest for KV usage.
    """
    waiting = 0.0
    kv = 0.0
    seen = False
    for line in text.splitlines():
        if not line.startswith(b"vllm:"):
            continue
        name = line.split(b"{", 1)[0].split(b" ", 1)[0]  # not ..._waiting_by_reason
        if name not in (WAITING, KV_CACHE, KV_CACHE_OLD):
            continue
        try:
            value = float(line.rsplit(b" ", 1)[1])
        except (IndexError, ValueError):
            continue
        seen = True
        if name == WAITING:
            waiting += value
        else:
            kv = max(kv, value)
    return (int(waiting), kv) if seen else None


def wanted(queues: Iterable[RevisionQueue]) -> list[Backend]:
    """The replicas worth a scrape now: of busy revisions with a choice to make."""
    out: list[Backend] = []
    for queue in queues:
        if not (queue.in_flight or queue.queued):
            continue
        serving = [b for b in queue.backends if not b.draining and not b.out]
        if len(serving) > 1:
            out.extend(serving)
    return out


async def scrape(pool: UpstreamPool, backend: Backend) -> tuple[int, float] | None:
    response = await pool.request(backend.url, "GET", "/metrics", [], b"")
    try:
        if response.status != 200:
            return None
        chunks: list[bytes] = []
        size = 0
        while (chunk := await response.next_chunk()) is not None:
            chunks.append(chunk)
            size += len(chunk)
            if size > MAX_METRICS_BYTES:
                return None
        return parse_load(b"".join(chunks))
    finally:
        response.close()


async def follow(
    pool: Callable[[], UpstreamPool | None],
    queues: Callable[[], Iterable[RevisionQueue]],
    interval_s: float,
) -> None:
    """Scrape the wanted replicas every ``interval_s`` until cancelled."""
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(interval_s)
        upstream = pool()
        targets = wanted(queues())
        if upstream is None or not targets:
            continue

        async def one(backend: Backend, upstream: UpstreamPool = upstream) -> None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(SCRAPE_TIMEOUT_S):
                    found = await scrape(upstream, backend)
                if found is not None:
                    backend.waiting, backend.kv_cache = found
                    backend.load_at = loop.time()

        await asyncio.gather(*(one(b) for b in targets))
