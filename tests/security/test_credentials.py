"""Credentials are never forwarded (issue 23, finding 5): query parameters and headers that carry
one are dropped by rule, not by spelling; the activator's /metrics wants the control token."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from activator.routing import resolve
from tests.activator.conftest import ActivatorFactory, Upstream, endpoints, serve, service
from tests.activator.test_routing import TABLE
from torpor.credentials import is_credential_name, strip_credential_params

KEY = "default/chat-00001"
HOST = {"Host": "chat.default.example.com"}

# 29 spellings of a credential parameter (the tester tried 29; 17 passed the old list).
SPELLINGS = [
    "api_key", "apiKey", "API-KEY", "x-api-key", "key", "apikey", "api.key", "access_token",
    "accessToken", "token", "auth", "auth_token", "authorization", "bearer_auth", "password",
    "passwd", "pwd", "secret", "client_secret", "clientSecret", "credential", "credentials",
    "signature", "X-Amz-Signature", "X-Amz-Security-Token", "session", "sessionid",
    "openai_api_key", "hf_token",
]


@pytest.mark.parametrize("name", SPELLINGS)
def test_every_spelling_of_a_credential_parameter_is_dropped(name: str) -> None:
    assert is_credential_name(name)
    encoded = name.replace("_", "%5F").encode()
    for spelled in (name.encode(), encoded, name.upper().encode()):
        assert strip_credential_params(b"model=m&" + spelled + b"=sk-1&n=2") == b"model=m&n=2"


def test_ordinary_parameters_pass() -> None:
    query = b"model=m&stream=true&n=2&temperature=0&user=u&api-version=2024"
    assert strip_credential_params(query) == query


async def test_credential_headers_and_params_never_reach_the_replica(
    running_activator: ActivatorFactory,
) -> None:
    upstream = Upstream()
    async with serve(upstream) as url, running_activator((service(),)) as running:
        await running.bus.publish_endpoints(endpoints(KEY, url))
        async with httpx.AsyncClient(base_url=running.url, headers=HOST) as c:
            query = "&".join(f"{n}=s3cret" for n in SPELLINGS) + "&model=m"
            answer = await c.get(f"/v1/responses/x?{query}", headers={
                "X-Api-Key": "s3cret", "Api-Key": "s3cret", "Cookie": "session=s3cret",
                "Proxy-Authorization": "Basic s3cret", "X-Auth-Token": "s3cret",
                "X-Torpor-Platform-Token": "s3cret", "X-Request-Id": "r1",
            })
    assert answer.status_code == 200
    seen = upstream.seen[0]
    assert seen.query == "model=m"
    assert "s3cret" not in repr(seen.headers)
    assert seen.headers.get("x-request-id") == "r1"


async def test_activator_metrics_want_the_control_token(
    running_activator: ActivatorFactory,
) -> None:
    async with running_activator((service(),), metrics_token="ctl") as running, \
            httpx.AsyncClient(base_url=running.url) as c:
        assert (await c.get("/metrics")).status_code == 401
        nope = await c.get("/metrics", headers={"Authorization": "Bearer nope"})
        assert nope.status_code == 401
        ok = await c.get("/metrics", headers={"Authorization": "Bearer ctl"})
        assert ok.status_code == 200 and "torpor_activator" in ok.text
        assert (await c.get("/healthz")).status_code == 200


def test_a_replicas_metrics_are_never_forwarded() -> None:
    from activator.errors import PlatformEndpoint

    for host, path in (("chat.default.example.com", "/metrics"), ("", "/default/chat/metrics")):
        with pytest.raises(PlatformEndpoint):
            resolve(TABLE, host, path, 0.0)


async def test_an_http2_request_line_is_refused(running_activator: ActivatorFactory) -> None:
    import asyncio

    async with running_activator((service(),)) as running:
        host, port = running.url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"GET /healthz HTTP/2.0\r\nHost: a\r\n\r\n")
        await writer.drain()
        head = await asyncio.wait_for(reader.read(200), 5)
        writer.close()
    assert head.startswith(b"HTTP/1.1 400"), head


async def test_a_keyed_services_model_list_wants_a_key_and_the_root_hides_it(
    running_activator: ActivatorFactory, tmp_path: Path
) -> None:
    from dataclasses import replace

    from activator.auth import FileKeyStore
    from tests.activator.conftest import revision

    def named(spec: Any, model: str) -> Any:
        return replace(spec, runtime=replace(spec.runtime, served_model_name=model))

    (tmp_path / "default").mkdir()
    (tmp_path / "default" / "locked-keys").write_text("sk-1\n")
    locked = named(revision("locked-00001", "locked", api_keys_secret="locked-keys"), "secret-m")
    opened = named(revision("open-00001", "open"), "open-m")
    services = (service("locked", revisions=(locked,)), service("open", revisions=(opened,)))
    async with running_activator(services, key_store=FileKeyStore(tmp_path)) as running, \
            httpx.AsyncClient(base_url=running.url) as c:
        without = await c.get("/default/locked/v1/models")
        by_host = await c.get("/v1/models", headers={"Host": "locked.default.example.com"})
        keyed = await c.get("/default/locked/v1/models", headers={"Authorization": "Bearer sk-1"})
        root = await c.get("/v1/models")
        open_list = await c.get("/default/open/v1/models")
    assert without.status_code == 401 and by_host.status_code == 401
    assert keyed.status_code == 200 and keyed.json()["data"]
    assert open_list.status_code == 200
    assert {m["id"] for m in root.json()["data"]} == {"open-m"}
    assert {m["id"] for m in keyed.json()["data"]} == {"secret-m"}
