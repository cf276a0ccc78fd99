"""The control API over real HTTP semantics (ASGI transport): token, apply, delete, status."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from embedded.control_api import build_control_app
from embedded.controlplane import ControlPlane
from embedded.state import StateDir
from torpor.bus import MemoryBus
from torpor.status import RevisionStatus

REPO = Path(__file__).resolve().parents[2]
TINY_CHAT = (REPO / "manifests/examples/tiny-chat.yaml").read_bytes()


def _client(
    tmp_path: Path, statuses: list[RevisionStatus] | None = None
) -> tuple[httpx.AsyncClient, ControlPlane, MemoryBus]:
    bus = MemoryBus()
    control = ControlPlane(bus, StateDir(tmp_path).ensure(), domain="example.com")
    app = build_control_app(
        control, lambda: statuses or [], token="s3cret", activator_url="http://127.0.0.1:8080"
    )
    client = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://control",
        headers={"Authorization": "Bearer s3cret"},
    )
    return client, control, bus


async def test_requests_without_the_token_are_refused(tmp_path: Path) -> None:
    client, control, _ = _client(tmp_path)
    async with client:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            r = await client.post(
                "/v1/services",
                content=TINY_CHAT,
                headers=headers | {"Authorization": headers.get("Authorization", "")},
            )
            assert r.status_code == 401
            assert r.json()["error"]["type"] == "authentication_error"
        assert control.services() == ()
        assert (await client.get("/healthz", headers={"Authorization": ""})).status_code == 200


async def test_apply_makes_a_revision_and_status_shows_it_at_zero(tmp_path: Path) -> None:
    client, _, bus = _client(tmp_path)
    async with client:
        r = await client.post("/v1/services", content=TINY_CHAT)
        assert r.status_code == 201
        assert r.json()["latest_revision"] == "tiny-chat-00001"
        assert r.json()["url"] == "http://127.0.0.1:8080/default/tiny-chat"
        again = await client.post("/v1/services", content=TINY_CHAT)
        assert again.status_code == 200 and again.json()["created_revision"] is False

        status = (await client.get("/v1/status")).json()
        [row] = status["revisions"]
        assert row["name"] == "tiny-chat-00001"
        assert (row["desired_replicas"], row["ready_replicas"], row["queued_requests"]) == (0, 0, 0)
    snapshot = await bus.snapshot()
    assert [s.name for s in snapshot.services] == ["tiny-chat"]


async def test_bad_manifest_names_the_field_and_changes_nothing(tmp_path: Path) -> None:
    client, control, _ = _client(tmp_path)
    async with client:
        await client.post("/v1/services", content=TINY_CHAT)
        before = control.services()
        bad = TINY_CHAT.replace(b'min-scale: "0"', b'min-scale: "-3"')
        r = await client.post("/v1/services", content=bad)
        assert r.status_code == 400
        assert "min-scale" in r.json()["error"]["message"]
        assert control.services() == before
        assert StateDir(tmp_path).load_services() == before


async def test_oversized_manifest_is_refused(tmp_path: Path) -> None:
    client, control, _ = _client(tmp_path)
    async with client:
        r = await client.post("/v1/services", content=b"#" * (1024 * 1024 + 10))
        assert r.status_code == 413
    assert control.services() == ()


async def test_delete(tmp_path: Path) -> None:
    client, control, _ = _client(tmp_path)
    async with client:
        await client.post("/v1/services", content=TINY_CHAT)
        assert (await client.delete("/v1/services/default/tiny-chat")).status_code == 200
        assert control.services() == ()
        missing = await client.delete("/v1/services/default/tiny-chat")
        assert missing.status_code == 404
        assert "default/tiny-chat" in missing.json()["error"]["message"]


async def test_services_come_back_after_a_restart(tmp_path: Path) -> None:
    client, control, _ = _client(tmp_path)
    async with client:
        await client.post("/v1/services", content=TINY_CHAT)
    bus = MemoryBus()
    restarted = ControlPlane(bus, StateDir(tmp_path), domain="example.com")
    await restarted.start()
    assert restarted.services() == control.services()
    assert (await bus.snapshot()).services == control.services()


@pytest.mark.parametrize("method,path", [("GET", "/v1/status"), ("GET", "/v1/services")])
async def test_reads_need_the_token_too(tmp_path: Path, method: str, path: str) -> None:
    client, _, _ = _client(tmp_path)
    async with client:
        r = await client.request(method, path, headers={"Authorization": ""})
        assert r.status_code == 401


async def test_metrics_are_the_autoscalers_registry_behind_the_token(tmp_path: Path) -> None:
    bus = MemoryBus()
    control = ControlPlane(bus, StateDir(tmp_path).ensure(), domain="example.com")
    app = build_control_app(
        control,
        list,
        token="s3cret",
        activator_url="http://a",
        metrics=lambda: b"torpor_autoscaler_ready_replicas 1.0\n",
    )
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://control"
    ) as client:
        assert (await client.get("/metrics")).status_code == 401
        r = await client.get("/metrics", headers={"Authorization": "Bearer s3cret"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    assert r.text == "torpor_autoscaler_ready_replicas 1.0\n"


async def test_the_bearer_scheme_is_case_insensitive_and_the_token_exact(tmp_path: Path) -> None:
    control = ControlPlane(MemoryBus(), StateDir(tmp_path).ensure(), domain="example.com")
    app = build_control_app(control, list, token="s3cret", activator_url="http://a",
                            metrics=lambda: b"")
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://control"
    ) as client:
        for header, status in (("bearer s3cret", 200), ("BEARER s3cret", 200),
                               ("Bearer S3CRET", 401), ("Basic s3cret", 401), ("s3cret", 401)):
            r = await client.get("/metrics", headers={"Authorization": header})
            assert r.status_code == status, header
