"""vLLM load for the balancer (activator.engine_load) and prompt prefix keys (activator.models)."""

from __future__ import annotations

import asyncio
import json
import random

from starlette.types import Receive, Scope, Send

from activator.balancer import pick
from activator.engine_load import follow, parse_load, wanted
from activator.http.upstream import UpstreamPool
from activator.models import PREFIX_BYTES, prefix_key
from activator.queue import QueueLimits, RevisionQueue
from tests.activator.conftest import endpoints, eventually, read_body, serve
from torpor.bus.base import RevisionEndpoints

# As vLLM 0.32 writes them (one label set per engine; other series around them).
METRICS = b"""# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="tiny-chat"} 3.0
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="tiny-chat"} %d.0
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="tiny-chat"} %.2f
vllm:num_requests_waiting_by_reason{engine="0",reason="capacity"} 99.0
"""


def test_parse_load_reads_waiting_and_kv_usage() -> None:
    assert parse_load(METRICS % (4, 0.5)) == (4, 0.5)
    assert parse_load(b'vllm:gpu_cache_usage_perc{engine="0"} 0.25\n') == (0, 0.25)
    assert parse_load(b"# nothing here\nprocess_cpu_seconds_total 1.0\n") is None
    assert parse_load(b"vllm:num_requests_waiting{} not-a-number\n") is None


def _queue(*urls: str, in_flight: int = 1) -> RevisionQueue:
    async def poke(_: str) -> None:
        return None

    queue = RevisionQueue("default/chat-00001", QueueLimits(), poke, random.Random(0))
    queue.set_endpoints(endpoints("default/chat-00001", *urls))
    queue.in_flight = in_flight
    return queue


def test_only_busy_revisions_with_a_choice_are_scraped() -> None:
    busy_two = _queue("http://a", "http://b")
    idle_two = _queue("http://c", "http://d", in_flight=0)
    busy_one = _queue("http://e")
    assert [b.url for b in wanted([busy_two, idle_two, busy_one])] == ["http://a", "http://b"]
    drained = _queue("http://a", "http://b")
    drained.set_endpoints(RevisionEndpoints("default/chat-00001", ()))
    assert wanted([drained]) == []


def _replica(waiting: int, kv: float) -> object:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await read_body(receive)
        body = METRICS % (waiting, kv) if scope["path"] == "/metrics" else b"{}"
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})

    return app


async def test_scraped_load_steers_the_choice_to_the_replica_with_room() -> None:
    pool = UpstreamPool()
    async with serve(_replica(6, 0.4)) as busy, serve(_replica(0, 0.1)) as idle:  # type: ignore[arg-type]
        queue = _queue(busy, idle)
        task = asyncio.create_task(follow(lambda: pool, lambda: [queue], 0.02))
        try:
            await eventually(lambda: all(b.load_at is not None for b in queue.backends))
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await pool.aclose()
    loads = {b.url: (b.waiting, b.kv_cache) for b in queue.backends}
    assert loads == {busy: (6, 0.4), idle: (0, 0.1)}
    now = asyncio.get_running_loop().time()
    chosen = {pick(queue.backends, 0, random.Random(s), now=now).url for s in range(20)}  # type: ignore[union-attr]
    assert chosen == {idle}


def test_prefix_key_follows_the_prompt_start_not_the_rest() -> None:
    system = "You are a terse assistant. " * 20  # longer than PREFIX_BYTES
    assert len(system) > PREFIX_BYTES

    def chat(question: str) -> bytes:
        messages = [{"role": "system", "content": system}, {"role": "user", "content": question}]
        return json.dumps({"model": "m", "messages": messages, "max_tokens": 8}).encode()

    assert prefix_key(chat("why?")) == prefix_key(chat("how?"))
    assert prefix_key(chat("why?")) != prefix_key(chat("why?").replace(b"terse", b"wordy"))
    completion = json.dumps({"model": "m", "prompt": system + "1"}).encode()
    assert prefix_key(completion) == prefix_key(completion.replace(b'1"', b'2"'))
    assert prefix_key(b'{"model": "m"}') is None
