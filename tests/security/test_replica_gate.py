"""The replica's own door (issue 23): vLLM's real app, as the runtime builds it for a LoRA
revision with dev mode on, behind ``runtime.gate``. No engine is started: every refusal below
happens before vLLM's handlers; the open routes are checked to reach vLLM (not 403)."""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from runtime.gate import PLATFORM_HEADER, client_routes, mounted_paths, take_platform_token
from runtime.gate import wrap as gate

TOKEN = "s3cret-platform-token"
HEADER = PLATFORM_HEADER.decode()


@pytest.fixture(scope="module")
def vllm_app() -> Iterator[Any]:
    saved = dict(os.environ)
    os.environ["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"
    os.environ["VLLM_SERVER_DEV_MODE"] = "1"
    with warnings.catch_warnings():
        # torch's and vLLM's import-time notices are not this test's business.
        warnings.simplefilter("ignore")
        pytest.importorskip("vllm")
        from vllm.entrypoints.launchers.app import build_app
        from vllm.entrypoints.launchers.cli_args import make_arg_parser
        from vllm.utils.argparse_utils import FlexibleArgumentParser

        parser = make_arg_parser(FlexibleArgumentParser())  # type: ignore[no-untyped-call]
        args = parser.parse_args(["--model", "x", "--enable-lora"])
        app = build_app(args, ("generate",), None)
    os.environ.clear()
    os.environ.update(saved)
    yield app


def _client(app: Any, token: str | None) -> httpx.AsyncClient:
    if app.middleware_stack is None:
        app.middleware_stack = app.build_middleware_stack()
    gated = gate(app, app.middleware_stack, token)

    async def asgi(scope: Any, receive: Any, send: Any) -> None:
        await gated(scope, receive, send)

    return httpx.AsyncClient(transport=httpx.ASGITransport(app=asgi), base_url="http://replica")


# Every operator door the hostile tester found, and more of vLLM's own.
ATTACKS = [
    ("POST", "/adapters", {"name": "tiny-sql", "src": "/tmp/evil"}),
    ("DELETE", "/adapters/tiny-sql", None),
    ("POST", "/v1/load_lora_adapter", {"lora_name": "x", "lora_path": "/tmp/evil"}),
    ("POST", "/v1/unload_lora_adapter", {"lora_name": "tiny-sql"}),
    ("POST", "/invocations", {"prompt": "x"}),
    ("GET", "/metrics", None),
    ("GET", "/metrics/", None),
    ("GET", "/load", None),
    ("GET", "/version", None),
    ("GET", "/docs", None),
    ("GET", "/openapi.json", None),
    ("GET", "/redoc", None),
    ("POST", "/sleep", None),
    ("POST", "/collective_rpc", {"method": "x"}),
    ("POST", "/reset_prefix_cache", None),
    ("GET", "/server_info", None),
    ("POST", "/inference/v1/generate", {}),
    ("POST", "/v1/chat/completions/render", {}),
    ("GET", "/not-a-route-yet", None),
    ("GET", "//metrics", None),
    ("GET", "/v1/models/../../metrics", None),
]


@pytest.mark.parametrize(("method", "path", "body"), ATTACKS)
async def test_operator_routes_refused_without_the_credential(
    vllm_app: Any, method: str, path: str, body: Any
) -> None:
    async with _client(vllm_app, TOKEN) as c:
        for headers in ({}, {HEADER: "wrong"}, {"Authorization": f"Bearer {TOKEN}"}):
            r = await c.request(method, path, json=body, headers=headers)
            assert r.status_code == 403, (path, headers, r.text)
            assert r.json()["error"]["code"] == "platform_endpoint"


async def test_no_credential_configured_closes_them_to_everyone(vllm_app: Any) -> None:
    async with _client(vllm_app, None) as c:
        r = await c.get("/metrics", headers={HEADER: ""})
        assert r.status_code == 403


async def test_platform_reaches_its_routes_with_the_credential(vllm_app: Any) -> None:
    async with _client(vllm_app, TOKEN) as c:
        r = await c.get("/version", headers={HEADER: TOKEN})
        assert r.status_code == 200 and "version" in r.json()
        r = await c.get("/openapi.json", headers={HEADER: TOKEN})
        assert r.status_code == 200


async def test_client_routes_pass_the_gate(vllm_app: Any) -> None:
    routes = client_routes(mounted_paths(vllm_app))
    assert "/v1/completions" in routes and "/health" in routes
    assert not {"/adapters", "/invocations", "/metrics", "/load", "/v1/load_lora_adapter"} & set(
        routes
    )
    async with _client(vllm_app, TOKEN) as c:
        # No engine here: vLLM's handlers fail, but past the gate (anything but our 403).
        for method, path in (("POST", "/v1/completions"), ("GET", "/v1/responses/abc")):
            try:
                r = await c.request(method, path, json={"model": "x", "prompt": "hi"})
            except Exception:  # vLLM's handler, not the gate, raised without an engine
                continue
            assert r.status_code != 403 or "platform_endpoint" not in r.text, path


def test_token_taken_out_of_the_environment(tmp_path: Any) -> None:
    env = {"TORPOR_PLATFORM_TOKEN": " abc ", "OTHER": "1"}
    assert take_platform_token(env) == "abc"
    assert env == {"OTHER": "1"}
    f = tmp_path / "token"
    f.write_text("fromfile\n")
    env = {"TORPOR_PLATFORM_TOKEN_FILE": str(f)}
    assert take_platform_token(env) == "fromfile"
    assert env == {}
    assert take_platform_token({}) is None


async def test_credential_query_params_and_header_never_reach_vllm() -> None:
    from runtime.gate import PlatformGate

    seen: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append((scope["query_string"], scope["headers"]))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    gated = PlatformGate(app, ["/v1/completions"], TOKEN)
    transport = httpx.ASGITransport(app=gated)
    async with httpx.AsyncClient(transport=transport, base_url="http://r") as c:
        q = "a=1&X-Api-Key=k1&apiKey=k2&access%5Ftoken=k3&sig=ok&Password=p&b=2"
        r = await c.post(f"/v1/completions?{q}", headers={HEADER: TOKEN})
        assert r.status_code == 200
    query, headers = seen[0]
    assert query == b"a=1&sig=ok&b=2"
    assert all(k != PLATFORM_HEADER for k, _ in headers)


def test_a_pod_finds_its_credential_in_the_mounted_secret(tmp_path: Any) -> None:
    from autoscaler.lora_client import replica_token

    mounted = tmp_path / "token"
    mounted.write_text("cluster-token\n")
    assert take_platform_token({}, default_path=str(mounted)) == "cluster-token"
    assert take_platform_token({}, default_path=str(tmp_path / "absent")) is None
    # The environment wins over the mounted file.
    assert take_platform_token({"TORPOR_PLATFORM_TOKEN": "env"}, str(mounted)) == "env"
    assert replica_token({"TORPOR_REPLICA_TOKEN_FILE": str(mounted)}) == "cluster-token"
    assert replica_token({}) is None
