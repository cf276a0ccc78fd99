"""The activator's root URL over real HTTP: routed by the body's model, /v1/models answered here."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace

import httpx

from tests.activator.conftest import (
    ActivatorFactory,
    Upstream,
    endpoints,
    revision,
    serve,
    service,
)
from torpor.bus.base import Poked
from torpor.spec import RevisionSpec, ServiceSpec


def _served(name: str, service_name: str, namespace: str = "default") -> ServiceSpec:
    base: RevisionSpec = revision(f"{service_name}-00001", service_name, namespace)
    rev = replace(base, runtime=replace(base.runtime, served_model_name=name))
    return service(service_name, namespace, (rev,))


LLAMA = _served("llama-3", "llama")
QWEN = _served("Qwen/Qwen3-8B", "qwen", "team-a")


async def test_root_url_routes_by_model_and_forwards_the_body_unchanged(
    running_activator: ActivatorFactory,
) -> None:
    llama, qwen = Upstream("llama"), Upstream("qwen")
    body = b'{"model": "Qwen/Qwen3-8B",  "prompt": "hi"}'  # odd spacing: bytes, not re-encoded
    async with (
        serve(llama) as u1,
        serve(qwen) as u2,
        running_activator((LLAMA, QWEN)) as running,
        httpx.AsyncClient(base_url=running.url, timeout=10) as c,
    ):
        await running.bus.publish_endpoints(endpoints("default/llama-00001", u1))
        await running.bus.publish_endpoints(endpoints("team-a/qwen-00001", u2))
        to_qwen = await c.post("/v1/completions?x=1", content=body)
        to_llama = await c.post("/v1/chat/completions", json={"model": "llama-3"})
        per_model = await c.post("/team-a/qwen/v1/completions", content=body)
    assert (to_qwen.status_code, to_qwen.json()["replica"]) == (200, "qwen")
    assert (to_qwen.json()["path"], to_qwen.json()["query"]) == ("/v1/completions", "x=1")
    assert qwen.seen[0].body == body
    assert (to_llama.json()["replica"], to_llama.json()["path"]) == (
        "llama",
        "/v1/chat/completions",
    )
    assert per_model.json()["replica"] == "qwen"


async def test_models_are_listed_without_waking_anything(
    running_activator: ActivatorFactory,
) -> None:
    async with (
        running_activator((LLAMA, QWEN)) as running,
        httpx.AsyncClient(base_url=running.url, timeout=10) as c,
    ):
        pokes: list[str] = []

        async def watch() -> None:
            async for event in running.bus.events():
                if isinstance(event, Poked):
                    pokes.append(event.revision)

        watcher = asyncio.create_task(watch())
        await asyncio.sleep(0)
        every = await c.get("/v1/models")
        one = await c.get("/team-a/qwen/v1/models")
        by_host = await c.get("/v1/models", headers={"Host": "llama.default.example.com"})
        await asyncio.sleep(0.05)
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
        stats = running.activator.stats()
    assert every.status_code == 200
    listed = every.json()
    assert listed["object"] == "list"
    assert [m["id"] for m in listed["data"]] == ["Qwen/Qwen3-8B", "llama-3"]
    assert all(m["object"] == "model" and isinstance(m["created"], int) for m in listed["data"])
    assert [m["id"] for m in one.json()["data"]] == ["Qwen/Qwen3-8B"]
    assert [m["id"] for m in by_host.json()["data"]] == ["llama-3"]
    assert pokes == []
    assert all(s.requests_total == 0 and s.queued == 0 for s in stats)


async def test_root_url_refuses_unknown_models_and_bodies_without_one(
    running_activator: ActivatorFactory,
) -> None:
    upstream = Upstream()
    async with (
        serve(upstream) as up,
        running_activator((LLAMA,), max_body_bytes=200) as running,
        httpx.AsyncClient(base_url=running.url, timeout=10) as c,
    ):
        await running.bus.publish_endpoints(endpoints("default/llama-00001", up))
        unknown = await c.post("/v1/completions", json={"model": "gpt-4", "prompt": "x"})
        no_model = await c.post("/v1/completions", json={"prompt": "x"})
        not_json = await c.post("/v1/completions", content=b"model=llama-3")
        too_big = await c.post("/v1/completions", json={"model": "llama-3", "prompt": "x" * 300})
    assert unknown.status_code == 404
    error = unknown.json()["error"]
    assert (error["code"], error["type"]) == ("model_not_found", "invalid_request_error")
    assert "'gpt-4'" in error["message"]
    assert [no_model.status_code, not_json.status_code] == [400, 400]
    assert "model" in json.loads(no_model.content)["error"]["message"]
    assert too_big.status_code == 413
    assert upstream.seen == []
