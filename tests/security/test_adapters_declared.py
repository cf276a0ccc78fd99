"""Adapters only as declared (issue 23): the replica loads only the revision's declared adapters
from their declared sources, and never through SageMaker's ``/adapters``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from runtime.adapter_load import AdapterCacheMiddleware, declared_adapters
from runtime.contract import ContractError

DECLARED = {"tiny-sql": "/home/m/models/tiny-sql"}


def _client(declared: dict[str, str] | None) -> tuple[httpx.AsyncClient, list[Any]]:
    seen: list[Any] = []

    async def vllm(scope: Any, receive: Any, send: Any) -> None:
        seen.append((scope["path"], (await receive()).get("body")))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    app = AdapterCacheMiddleware(vllm, lambda src: Path("/cache") / Path(src).name, declared)
    transport = httpx.ASGITransport(app=app)
    return httpx.AsyncClient(transport=transport, base_url="http://replica"), seen


@pytest.mark.parametrize(
    "body",
    [
        {"lora_name": "evil", "lora_path": "/tmp/evil"},
        {"lora_name": "tiny-sql", "lora_path": "/tmp/evil"},  # a declared name, another source
        {"lora_name": "tiny-sql"},
        {"lora_path": "/home/m/models/tiny-sql"},
    ],
)
async def test_undeclared_loads_are_refused(body: dict[str, str]) -> None:
    client, seen = _client(DECLARED)
    async with client as c:
        r = await c.post("/v1/load_lora_adapter", json=body)
    assert r.status_code == 403
    assert r.json()["error"]["code"] == "adapter_not_declared"
    assert seen == []


async def test_a_declared_load_goes_through_the_cache() -> None:
    client, seen = _client(DECLARED)
    async with client as c:
        r = await c.post("/v1/load_lora_adapter",
                         json={"lora_name": "tiny-sql", "lora_path": "/home/m/models/tiny-sql"})
    assert r.status_code == 200
    assert seen and b'"/cache/tiny-sql"' in seen[0][1]


@pytest.mark.parametrize(("method", "path"), [("POST", "/adapters"), ("DELETE", "/adapters/x"),
                                              ("POST", "/adapters/")])
async def test_sagemaker_adapter_routes_are_refused_even_to_the_platform(
    method: str, path: str
) -> None:
    for declared in (DECLARED, None):
        client, seen = _client(declared)
        async with client as c:
            r = await c.request(method, path, json={"name": "tiny-sql", "src": "/tmp/evil"})
        assert r.status_code == 403 and seen == []


def test_declared_adapters_from_the_environment() -> None:
    assert declared_adapters({}) is None
    assert declared_adapters({"TORPOR_LORA_ADAPTERS": '{"a": "/m/a"}'}) == {"a": "/m/a"}
    with pytest.raises(ContractError):
        declared_adapters({"TORPOR_LORA_ADAPTERS": "[1]"})


def test_a_failed_load_names_no_machine_path() -> None:
    from autoscaler.lora_client import without_paths

    said = "cannot load adapter 'sql': /srv/torpor/cache/objects/ab/adapter_config.json missing"
    assert without_paths(said) == "cannot load adapter 'sql': <path> missing"
    assert without_paths("rank 16 > max 8 (1/2 of it)") == "rank 16 > max 8 (1/2 of it)"


async def test_a_model_name_belongs_to_the_namespace_that_claimed_it_first(
    tmp_path: Path,
) -> None:
    from embedded.controlplane import ControlPlane
    from embedded.state import StateDir
    from tests.embedded.test_controlplane import TINY_CHAT
    from torpor.bus import MemoryBus
    from torpor.manifest import ManifestError

    control = ControlPlane(MemoryBus(), StateDir(tmp_path).ensure(), domain="example.com")
    await control.start()
    await control.apply(TINY_CHAT)
    before = control.services()
    squatter = TINY_CHAT.replace("name: tiny-chat", "name: squat", 1)
    squatter = squatter.replace("namespace: default", "namespace: other", 1)
    assert "namespace: other" in squatter
    with pytest.raises(ManifestError) as info:
        await control.apply(squatter, source="squat.yaml")
    assert "belongs to another namespace" in info.value.reason
    assert info.value.field == "spec.template.spec.containers[0].args"
    assert control.services() == before
    # The same namespace may still run a second service of that name (reached at its own URL).
    await control.apply(TINY_CHAT.replace("name: tiny-chat", "name: tiny-chat-b", 1))


async def test_initial_scale_counts_against_the_total_cap(tmp_path: Path) -> None:
    from embedded.controlplane import ControlPlane
    from embedded.state import StateDir
    from tests.embedded.test_controlplane import TINY_CHAT
    from torpor.bus import MemoryBus
    from torpor.manifest import ManifestError
    from torpor.manifest.limits import INITIAL_SCALE_FIELD, ScaleLimits

    control = ControlPlane(MemoryBus(), StateDir(tmp_path).ensure(), domain="example.com",
                           limits=ScaleLimits(per_revision=16, total=20))
    await control.start()

    def manifest(name: str, *, min_scale: int = 0, initial: int = 0) -> str:
        text = TINY_CHAT.replace("name: tiny-chat", f"name: {name}", 1)
        text = text.replace("--served-model-name=tiny-chat", f"--served-model-name={name}")
        text = text.replace('min-scale: "0"', f'min-scale: "{min_scale}"')
        return text.replace('initial-scale: "0"', f'initial-scale: "{initial}"')

    await control.apply(manifest("a", min_scale=8))
    with pytest.raises(ManifestError) as info:  # 8 held + 16 started at once, above 20
        await control.apply(manifest("b", initial=16))
    assert info.value.field == INITIAL_SCALE_FIELD
    assert [s.name for s in control.services()] == ["a"]
    await control.apply(manifest("b", initial=12))  # 8 + 12: exactly the total
